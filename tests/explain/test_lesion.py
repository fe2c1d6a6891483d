"""The lesion outline and its measurements: shapes drawn with known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from busi_web.explain.lesion import LOW_CONFIDENCE, Lesion, describe_absent, find_lesion

SIDE = 200


def ellipse(axes: tuple[int, int], angle: float = 0.0, centre: tuple[int, int] = (100, 100), value: float = 0.95
            ) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), np.float32)
    cv2.ellipse(m, centre, axes, angle, 0, 360, value, -1)
    return m


def star(points: int = 9, depth: float = 0.35, radius: float = 50.0) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    r = radius * (1 + depth * np.sin(points * ang))
    pts = np.stack([100 + r * np.cos(ang), 100 + r * np.sin(ang)], 1).round().astype(np.int32)
    m = np.zeros((SIDE, SIDE), np.float32)
    cv2.fillPoly(m, [pts], 0.9)
    return m


def test_an_oval_wider_than_tall_is_oval_parallel_and_circumscribed_with_its_diameters():
    lesion = find_lesion(ellipse((60, 30)))
    assert lesion is not None
    assert (lesion.shape, lesion.orientation, lesion.margin) == ("oval", "parallel", "circumscribed")
    # Axes of 60 and 30 px (half-lengths): diameters of 121 and 61 pixels counted end to end.
    assert lesion.long_axis_px == pytest.approx(121, abs=2)
    assert lesion.short_axis_px == pytest.approx(61, abs=2)
    assert lesion.area_px == pytest.approx(math.pi * 60 * 30, rel=0.03)
    assert lesion.axis_ratio == pytest.approx(0.5, abs=0.03)
    assert lesion.box == (40, 70, 161, 131)
    (ax, ay), (bx, by) = lesion.long_axis
    assert abs(ax - bx) > 115 > 10 > abs(ay - by)  # the long axis runs left to right


def test_a_circle_is_round_and_a_tall_oval_is_not_parallel():
    assert find_lesion(ellipse((40, 40))).shape == "round"
    tall = find_lesion(ellipse((25, 60)))
    assert tall.orientation == "not parallel" and tall.depth_width_ratio > 2
    assert tall.shape == "oval"
    # Tilted 30 degrees from the horizontal it is still wider than tall: parallel.
    assert find_lesion(ellipse((60, 25), angle=30)).orientation == "parallel"


def test_a_spiculated_outline_is_irregular_and_not_circumscribed():
    lesion = find_lesion(star())
    assert lesion.shape == "irregular" and lesion.margin == "not circumscribed"
    assert lesion.solidity < 0.9 and lesion.roughness > 1.2
    # A gently lobulated oval keeps its shape but loses the smooth margin.
    lobed = find_lesion(star(points=14, depth=0.06))
    assert lobed.margin == "not circumscribed" and lobed.roughness > 1.05


def test_sizes_in_mm_follow_the_pixel_spacing():
    lesion = find_lesion(ellipse((60, 30)), spacing_mm=(0.1, 0.1))
    m = lesion.to_dict()["measurements"]
    assert m["long_axis_mm"] == pytest.approx(lesion.long_axis_px * 0.1, abs=0.01)
    assert m["short_axis_mm"] == pytest.approx(lesion.short_axis_px * 0.1, abs=0.01)
    assert m["area_mm2"] == pytest.approx(lesion.area_px * 0.01, abs=0.01)
    assert "mm" in lesion.statement()
    # Another spacing per axis: the area takes both, the lengths their geometric mean.
    skew = find_lesion(ellipse((60, 30)), spacing_mm=(0.2, 0.05)).to_dict()["measurements"]
    assert skew["area_mm2"] == pytest.approx(lesion.area_px * 0.01, abs=0.01)
    assert find_lesion(ellipse((60, 30))).to_dict()["measurements"]["long_axis_mm"] is None


def test_no_lesion_small_specks_and_the_peak_region():
    assert find_lesion(np.zeros((SIDE, SIDE), np.float32)) is None
    speck = np.zeros((SIDE, SIDE), np.float32)
    speck[10:12, 10:12] = 0.9  # 4 pixels: noise
    assert find_lesion(speck) is None
    absent = describe_absent(0.31, 0.5)
    assert absent["found"] is False and "no lesion found" in absent["statement"] and "0.31" in absent["statement"]
    # Two regions: the one holding the map's peak is the lesion; the other is counted, not merged.
    two = ellipse((20, 20), centre=(50, 50), value=0.7) + ellipse((30, 15), centre=(140, 140), value=0.99)
    lesion = find_lesion(two)
    assert lesion.other_regions == 1 and lesion.box[0] > 100
    with pytest.raises(ValueError, match="2-D"):
        find_lesion(np.zeros((2, 3, 4)))


def test_a_faint_lesion_is_marked_low_confidence():
    faint = find_lesion(ellipse((40, 30), value=0.6))
    assert faint.confidence == pytest.approx(0.6, abs=1e-3) and faint.confidence < LOW_CONFIDENCE
    assert faint.low_confidence and "low confidence" in faint.statement()
    sure = find_lesion(ellipse((40, 30), value=0.95))
    assert not sure.low_confidence and "low confidence" not in sure.statement()


def test_the_json_carries_each_descriptor_with_its_number_and_a_short_outline():
    d = find_lesion(star(), spacing_mm=(0.2, 0.1)).to_dict()
    assert d["found"] is True
    assert set(d["descriptors"]) == {"shape", "orientation", "margin"}
    assert d["descriptors"]["shape"]["value"] == "irregular" and "ellipse_fit" in d["descriptors"]["shape"]
    assert "depth_width_ratio" in d["descriptors"]["orientation"] and "roughness" in d["descriptors"]["margin"]
    assert all("rule" in v for v in d["descriptors"].values())
    lesion = find_lesion(star())
    assert 8 <= len(d["outline"]) < len(lesion.outline)  # simplified within half a pixel
    assert d["measurements"]["pixel_spacing_mm"] == [0.2, 0.1]
    assert isinstance(Lesion, type)
