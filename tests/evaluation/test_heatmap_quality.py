"""Heatmap quality metrics: known values on hand-made maps, masks and a hand-made model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from busi_web.evaluation.heatmap_quality import (
    deletion_auc,
    deletion_curve,
    energy_pointing_game,
    insertion_auc,
    insertion_curve,
    iou_at,
    localisation,
    mask_share,
    pointing_game,
)


def _mask(hw=(10, 10), box=(2, 2, 6, 6)) -> np.ndarray:
    m = np.zeros(hw, bool)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_game_hits_and_misses():
    m = _mask()  # 16 of 100 pixels
    hm = np.zeros((10, 10))
    hm[3, 3] = 1.0
    assert pointing_game(hm, m) is True
    hm[3, 3], hm[8, 8] = 0.5, 1.0
    assert pointing_game(hm, m) is False
    # A plateau of maxima: a hit needs at least half of it inside.
    hm = np.zeros((10, 10))
    hm[5, 4:8] = 1.0  # (5,4) and (5,5) inside, (5,6) and (5,7) outside
    assert pointing_game(hm, m) is True
    hm[5, 8] = 1.0
    assert pointing_game(hm, m) is False
    # A map without variation points nowhere.
    assert pointing_game(np.zeros((10, 10)), m) is False
    assert pointing_game(np.full((10, 10), 0.3), m) is False


def test_energy_iou_and_chance_known_values():
    m = _mask()
    hm = np.zeros((10, 10))
    hm[2:6, 2:6] = 1.0  # 16 pixels of mass 1 inside
    hm[0, 0:4] = 1.0  # 4 outside
    assert energy_pointing_game(hm, m) == pytest.approx(16 / 20)
    assert iou_at(hm, m) == pytest.approx(16 / 20)
    hm[0, 0:4] = 0.25  # below the 0.5 threshold: mass counts, region does not
    assert energy_pointing_game(hm, m) == pytest.approx(16 / 17)
    assert iou_at(hm, m) == 1.0
    assert iou_at(hm, m, threshold=0.2) == pytest.approx(16 / 20)
    half = np.zeros((10, 10))
    half[2:4, 2:6] = 0.9  # covers half the lesion
    assert iou_at(half, m) == pytest.approx(0.5)
    assert energy_pointing_game(np.zeros((10, 10)), m) == 0.0 and iou_at(np.zeros((10, 10)), m) == 0.0
    assert mask_share(m) == pytest.approx(0.16)
    # The chance baselines are what a uniform / whole-image map scores.
    uniform = np.ones((10, 10))
    assert energy_pointing_game(uniform, m) == pytest.approx(mask_share(m))
    assert iou_at(uniform, m) == pytest.approx(mask_share(m))


def test_localisation_bundle_and_input_types():
    m = _mask().astype(np.uint8) * 255  # a mask PNG's 0/255 values
    hm = torch.zeros(10, 10)
    hm[4, 4] = 1.0
    scores = localisation(hm, m)
    assert scores.pointing_hit and scores.energy == pytest.approx(1.0) and scores.iou == pytest.approx(1 / 16)
    assert scores.chance == pytest.approx(0.16)
    d = scores.to_dict()
    assert d["pointing_chance"] == d["energy_chance"] == d["iou_chance"] == pytest.approx(0.16)
    rgb_mask = np.repeat(m[:, :, None], 3, axis=2)
    assert localisation(hm, rgb_mask) == scores


def test_bad_maps_and_masks_are_refused():
    with pytest.raises(ValueError, match="mask is empty.*'normal' class"):
        pointing_game(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"mask shape \(5, 5\) does not match heatmap shape \(4, 4\)"):
        energy_pointing_game(np.ones((4, 4)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="2-D array"):
        iou_at(np.ones((1, 4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        iou_at(np.full((4, 4), np.nan), np.ones((4, 4)))


class RegionModel(nn.Module):
    """Two classes; P(class 1) = mean of channel 0 over a fixed region (inputs in [0, 1])."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.log(torch.stack([1 - f, f], dim=1))  # softmax gives back (1 - f, f) exactly


def test_deletion_and_insertion_known_areas():
    region = _mask((8, 8), (0, 0, 4, 4))  # 16 of 64 pixels: r = 1/4
    model = RegionModel(region).eval()
    image = torch.ones(1, 8, 8)
    good = region.astype(float) + 0.01 * np.arange(64).reshape(8, 8) / 64  # the region first
    bad = 1.0 - good  # the region last
    # 16 steps of 4 pixels: the curve is piecewise linear with kinks on the steps, so the areas are exact.
    curve = deletion_curve(model, image, good, target=1, steps=16, baseline="zero", batch_size=5)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1 and len(curve.scores) == 17
    assert curve.scores[0] == pytest.approx(1.0) and curve.scores[4] == pytest.approx(0.0, abs=1e-6)
    assert curve.auc == pytest.approx(1 / 8, abs=1e-6)  # r / 2
    assert deletion_auc(model, image, bad, 1, steps=16) == pytest.approx(1 - 1 / 8, abs=1e-6)  # 1 - r / 2
    assert insertion_auc(model, image, good, 1, steps=16, baseline="zero") == pytest.approx(1 - 1 / 8, abs=1e-6)
    assert insertion_auc(model, image[None], bad, 1, steps=16, baseline=0.0) == pytest.approx(1 / 8, abs=1e-6)
    # A lower-resolution map is resized (bilinear) to the image: a 2x2 map with the top-left cell hottest
    # blurs across the quadrant borders, so it is nearly, not exactly, as good as the exact map.
    coarse = np.array([[1.0, 0.2], [0.3, 0.1]])
    assert 1 / 8 < deletion_auc(model, image, coarse, 1, steps=16, baseline="zero") < 0.15
    # Class 0 is the complement: its deletion curve rises.
    assert deletion_auc(model, image, good, 0, steps=16) == pytest.approx(1 - 1 / 8, abs=1e-6)


def test_blur_baseline_and_errors():
    model = RegionModel(_mask((8, 8), (0, 0, 4, 4))).eval()
    flat = torch.full((1, 8, 8), 0.6)
    # Blurring a constant image changes nothing: inserting pixels keeps the probability at 0.6.
    curve = insertion_curve(model, flat, np.random.default_rng(0).random((8, 8)), 1, steps=8)
    assert np.allclose(curve.scores, 0.6, atol=1e-6) and curve.auc == pytest.approx(0.6, abs=1e-6)
    with pytest.raises(ValueError, match="baseline must be"):
        deletion_curve(model, flat, np.ones((8, 8)), 1, baseline="noise")
    with pytest.raises(ValueError, match="one image"):
        deletion_curve(model, torch.ones(2, 1, 8, 8), np.ones((8, 8)), 1)
    with pytest.raises(ValueError, match="target must be in 0..K-1"):
        deletion_curve(model, flat, np.ones((8, 8)), 2)
