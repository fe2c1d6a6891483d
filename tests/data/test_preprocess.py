"""Preprocessing shared by trainer and predictor, and mapping maps back onto the original image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from busi_web.data.preprocess import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    crop_box,
    eval_transform,
    paste_map,
    to_channels,
    train_transform,
)


def test_config_defaults_and_validation():
    rgb, gray = PreprocessConfig(), PreprocessConfig(channels=1, input_size=64, resize=72)
    assert (rgb.input_size, rgb.resize, rgb.mean, rgb.std) == (224, 256, IMAGENET_MEAN, IMAGENET_STD)
    assert gray.mean == GRAY_MEAN and gray.std == GRAY_STD
    assert gray.mean[0] == pytest.approx(0.449) and gray.std[0] == pytest.approx(0.226)
    with pytest.raises(ValueError, match="resize .* must be at least input_size"):
        PreprocessConfig(input_size=64, resize=32)
    with pytest.raises(ValueError, match="mean and std need 1 value"):
        PreprocessConfig(channels=1, mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="channels must be 1"):
        PreprocessConfig(channels=2)


def test_eval_transform_normalises_and_crops():
    cfg = PreprocessConfig(input_size=32, resize=40)
    img = np.full((50, 80, 3), (255, 0, 100), dtype=np.uint8)
    x = eval_transform(cfg)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    for c, v in enumerate((255, 0, 100)):
        assert torch.allclose(x[c], torch.full((32, 32), (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5)
    gray = eval_transform(PreprocessConfig(input_size=32, resize=40, channels=1))(np.full((40, 40), 51, np.uint8))
    assert gray.shape == (1, 32, 32)
    assert torch.allclose(gray, torch.full_like(gray, (0.2 - GRAY_MEAN[0]) / GRAY_STD[0]), atol=1e-5)


def test_channel_conversion_and_bad_input():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pil_gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int16)
    assert np.abs(to_channels(rgb, 1).astype(np.int16) - pil_gray).max() <= 1
    gray = rgb[:, :, 0]
    assert np.array_equal(to_channels(gray, 3), np.stack([gray] * 3, axis=2))
    assert np.array_equal(to_channels(np.dstack([rgb, np.zeros_like(gray)]), 3), rgb)  # RGBA: alpha dropped
    assert np.array_equal(to_channels(gray[:, :, None], 1), gray)
    with pytest.raises(ValueError, match="expected a uint8 image .*got dtype float32"):
        to_channels(rgb.astype(np.float32), 3)
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, 3\), got shape \(20, 30, 2\)"):
        to_channels(rgb[:, :, :2], 3)
    with pytest.raises(ValueError, match="numpy array, got list"):
        to_channels([[1, 2]], 3)


@pytest.mark.parametrize("hw", [(60, 100), (100, 60), (48, 48), (300, 41)])
def test_paste_map_puts_the_crop_back_where_it_came_from(hw):
    cfg = PreprocessConfig(input_size=32, resize=40, channels=1)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    # Smooth waves, two periods per side: any misplacement of the crop shows as a large difference.
    img = np.rint(127.5 * (1 + np.sin(4 * np.pi * xx / w) * np.cos(4 * np.pi * yy / h))).astype(np.uint8)
    x = eval_transform(cfg)(img)[0] * cfg.std[0] + cfg.mean[0]  # undo the normalisation: the crop in [0, 1]
    back = paste_map(x, (h, w), cfg)
    assert back.shape == (h, w) and back.dtype == np.float32
    top, left, bottom, right = crop_box((h, w), cfg)
    y0, x0, y1, x1 = int(np.ceil(top)) + 1, int(np.ceil(left)) + 1, int(bottom) - 1, int(right) - 1
    # Inside the crop the pasted map reproduces the original pixels (up to resampling).
    assert np.abs(back[y0:y1, x0:x1] - img[y0:y1, x0:x1] / 255).max() < 0.05
    outside = np.ones((h, w), bool)
    outside[int(top):int(np.ceil(bottom)), int(left):int(np.ceil(right))] = False
    assert np.all(back[outside] == 0)


def test_crop_box_geometry():
    cfg = PreprocessConfig(input_size=32, resize=32)
    assert crop_box((64, 64), cfg) == (0, 0, 64, 64)
    top, left, bottom, right = crop_box((64, 128), cfg)  # resized to 32x64, centre 32x32 -> columns 32..96
    assert (top, bottom) == (0, 64) and (left, right) == (32, 96)


def test_train_transform_is_random_but_seedable():
    cfg = PreprocessConfig(input_size=32, resize=40)
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = train_transform(cfg)
    torch.manual_seed(3)
    a = t(img)
    b = t(img)
    torch.manual_seed(3)
    assert torch.equal(a, t(img))
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    # Without augmentation and with nothing to crop, training sees exactly what prediction sees.
    square = PreprocessConfig(input_size=32, resize=32)
    plain = train_transform(square, hflip=False, rotation=0)(img[:32, :32])
    assert torch.equal(plain, eval_transform(square)(img[:32, :32]))
    flipped = train_transform(square, hflip=True, rotation=0)
    outs = {flipped(img[:32, :32]).flip(-1).equal(plain) for _ in range(20)}
    assert outs == {True, False}  # sometimes flipped, sometimes not
    with pytest.raises(ValueError, match="rotation"):
        train_transform(cfg, rotation=-5)


def _bright_square(size: int = 64, side: int = 16) -> np.ndarray:
    img = np.zeros((size, size), dtype=np.uint8)
    lo = (size - side) // 2
    img[lo:lo + side, lo:lo + side] = 255
    return img


def test_random_resized_crops_zoom_in_and_keep_the_output_size():
    cfg = PreprocessConfig(input_size=64, resize=64, channels=1)
    img = _bright_square()
    bright = float(eval_transform(cfg)(img).max())

    def lit_area(t) -> int:
        return int((t > bright - 0.5).sum())

    torch.manual_seed(0)
    shifted = [train_transform(cfg, hflip=False, rotation=0, crop_scale=1.0)(img) for _ in range(10)]
    assert {lit_area(t) for t in shifted} == {16 * 16}  # crop_scale 1 and nothing to crop: the image as is
    zoomed = [train_transform(cfg, hflip=False, rotation=0, crop_scale=0.3)(img) for _ in range(40)]
    assert all(t.shape == (1, 64, 64) for t in zoomed)
    areas = [lit_area(t) for t in zoomed]
    # A crop covering a share a of the image magnifies the square by 1/a in area (when the square is inside it).
    assert max(areas) > 1.8 * 16 * 16 and min(areas) < 1.2 * 16 * 16
    assert max(areas) <= 16 * 16 / 0.3 * 1.25
    torch.manual_seed(5)
    a = train_transform(cfg, crop_scale=0.3)(img)
    torch.manual_seed(5)
    assert torch.equal(a, train_transform(cfg, crop_scale=0.3)(img))
    with pytest.raises(ValueError, match="crop_scale must be between 0.05 and 1"):
        train_transform(cfg, crop_scale=0.0)


def test_intensity_jitter_changes_brightness_contrast_and_gamma_within_range():
    cfg = PreprocessConfig(input_size=32, resize=32, channels=1, mean=(0.0,), std=(1.0,))
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    plain = train_transform(cfg, hflip=False, rotation=0)(ramp)
    torch.manual_seed(1)
    jittered = [train_transform(cfg, hflip=False, rotation=0, intensity=0.4)(ramp) for _ in range(30)]
    means = [float(t.mean()) for t in jittered]
    spreads = [float(t.std()) for t in jittered]
    assert all(float(t.min()) >= 0.0 and float(t.max()) <= 1.0 for t in jittered)  # stays a valid image
    assert max(means) - min(means) > 0.1 and max(spreads) - min(spreads) > 0.05
    assert not any(torch.equal(t, plain) for t in jittered)
    # Monotone: the order of the gray levels survives (a jitter never inverts the image).
    assert all(bool((t[0, 0, 1:] >= t[0, 0, :-1] - 1e-6).all()) for t in jittered)
    assert torch.equal(train_transform(cfg, hflip=False, rotation=0, intensity=0.0)(ramp), plain)
    with pytest.raises(ValueError, match="intensity must be at least 0 and below 1"):
        train_transform(cfg, intensity=1.5)
