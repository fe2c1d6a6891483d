"""The lesion a segmenting model found: its outline, its size, and the BI-RADS descriptors an outline can measure.

:func:`find_lesion` turns a lesion probability map (at the image's size)
into a :class:`Lesion`, or ``None`` when nothing passes the threshold. The
lesion is the connected region above the threshold that holds the map's
peak (a second, weaker region is counted in ``other_regions``, not merged).
Everything is measured on that region's outline:

* **size**: area, the longest diameter (the two farthest points of the
  outline) and the longest extent perpendicular to it, in pixels, and in mm
  when a pixel spacing (mm per pixel, rows and columns) is known (areas take
  both spacings; lengths their geometric mean, exact for the square pixels
  of ultrasound and mammography);
* **shape** (oval, round or irregular): an ellipse is fitted to the outline
  (``cv2.fitEllipse``); ``ellipse_fit`` is the overlap (IoU) of the region
  with it and ``solidity`` the region's area over its convex hull's. Below
  ``IRREGULAR_FIT`` or ``IRREGULAR_SOLIDITY`` the shape is irregular;
  otherwise round when the axis ratio (minor / major) is at least
  ``ROUND_RATIO``, else oval;
* **orientation** (parallel or not parallel): the region's depth (rows) over
  its width (columns); "taller than wide" (over ``TALLER_THAN_WIDE``) is not
  parallel to the skin, which is the top of an ultrasound image;
* **margin** (circumscribed or not circumscribed): ``roughness`` is the
  outline's length (within a pixel) over its convex hull's; a circumscribed margin is smooth
  (roughness at most ``SMOOTH_ROUGHNESS``) and has no deep notches (solidity at
  least ``IRREGULAR_SOLIDITY``).

These are measurements of a predicted outline at the model's resolution, not
a radiologist's reading: each comes with the number behind it, and the
thresholds are module constants.

``confidence`` is the mean lesion probability inside the outline; below
``LOW_CONFIDENCE`` the finding is marked low-confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["Lesion", "find_lesion", "LOW_CONFIDENCE", "describe_absent"]

IRREGULAR_FIT = 0.85
IRREGULAR_SOLIDITY = 0.90
ROUND_RATIO = 0.85
TALLER_THAN_WIDE = 1.0
SMOOTH_ROUGHNESS = 1.05
LOW_CONFIDENCE = 0.7
MIN_AREA_PX = 9  # smaller regions are noise at any image size the models see


@dataclass
class Lesion:
    """One outlined lesion. Points and lengths are in the pixels of the map given to :func:`find_lesion`."""

    outline: list[tuple[int, int]]  # (x, y) points of the outer contour, in order
    area_px: float
    long_axis_px: float
    short_axis_px: float  # the longest extent perpendicular to the long axis
    long_axis: tuple[tuple[float, float], tuple[float, float]]  # its two end points (x, y)
    box: tuple[int, int, int, int]  # (left, top, right, bottom), right and bottom exclusive
    confidence: float
    peak: float
    ellipse_fit: float
    axis_ratio: float
    solidity: float
    roughness: float
    depth_width_ratio: float
    other_regions: int
    spacing_mm: tuple[float, float] | None = None  # (row, column) mm per pixel

    @property
    def shape(self) -> str:
        if self.ellipse_fit < IRREGULAR_FIT or self.solidity < IRREGULAR_SOLIDITY:
            return "irregular"
        return "round" if self.axis_ratio >= ROUND_RATIO else "oval"

    @property
    def orientation(self) -> str:
        return "not parallel" if self.depth_width_ratio > TALLER_THAN_WIDE else "parallel"

    @property
    def margin(self) -> str:
        smooth = self.roughness <= SMOOTH_ROUGHNESS and self.solidity >= IRREGULAR_SOLIDITY
        return "circumscribed" if smooth else "not circumscribed"

    @property
    def low_confidence(self) -> bool:
        return self.confidence < LOW_CONFIDENCE

    def _mm(self, px: float, squared: bool = False) -> float | None:
        if self.spacing_mm is None:
            return None
        row, col = self.spacing_mm
        return round(px * row * col, 2) if squared else round(px * math.sqrt(row * col), 2)

    def polygon(self, tolerance: float = 0.5) -> list[list[int]]:
        """The outline as few points as keep it within ``tolerance`` pixels: ``[[x, y], ...]``."""
        if len(self.outline) < 4:
            return [[int(x), int(y)] for x, y in self.outline]
        contour = np.asarray(self.outline, dtype=np.int32)[:, None, :]
        return [[int(x), int(y)] for x, y in cv2.approxPolyDP(contour, tolerance, True)[:, 0, :]]

    def statement(self) -> str:
        """One plain sentence: what was found, how large, how sure."""
        size = (f"{self._mm(self.long_axis_px):.1f} x {self._mm(self.short_axis_px):.1f} mm"
                if self.spacing_mm else f"{self.long_axis_px:.0f} x {self.short_axis_px:.0f} px")
        sure = (f"low confidence ({100 * self.confidence:.0f}% mean lesion probability inside the outline): check "
                "the outline against the image" if self.low_confidence
                else f"{100 * self.confidence:.0f}% mean lesion probability inside the outline")
        return f"lesion outlined, {size}; {self.shape}, {self.orientation}, {self.margin}; {sure}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the outline, the measurements (px and mm), each descriptor with the number behind it."""
        return {
            "found": True, "statement": self.statement(), "confidence": round(self.confidence, 4),
            "low_confidence": self.low_confidence, "peak": round(self.peak, 4),
            "outline": self.polygon(),
            "box": list(self.box), "other_regions": self.other_regions,
            "measurements": {
                "area_px": round(self.area_px, 1), "long_axis_px": round(self.long_axis_px, 1),
                "short_axis_px": round(self.short_axis_px, 1),
                "long_axis_points": [[round(v, 1) for v in p] for p in self.long_axis],
                "area_mm2": self._mm(self.area_px, squared=True), "long_axis_mm": self._mm(self.long_axis_px),
                "short_axis_mm": self._mm(self.short_axis_px),
                "pixel_spacing_mm": None if self.spacing_mm is None else [round(v, 5) for v in self.spacing_mm]},
            "descriptors": {
                "shape": {"value": self.shape, "ellipse_fit": round(self.ellipse_fit, 3),
                          "axis_ratio": round(self.axis_ratio, 3), "solidity": round(self.solidity, 3),
                          "rule": f"irregular when ellipse_fit < {IRREGULAR_FIT} or solidity < "
                                  f"{IRREGULAR_SOLIDITY}; else round when axis_ratio >= {ROUND_RATIO}; else oval"},
                "orientation": {"value": self.orientation, "depth_width_ratio": round(self.depth_width_ratio, 3),
                                "rule": f"not parallel (taller than wide) when depth / width > {TALLER_THAN_WIDE}"},
                "margin": {"value": self.margin, "roughness": round(self.roughness, 3),
                           "solidity": round(self.solidity, 3),
                           "rule": f"circumscribed when roughness (outline / hull length) <= {SMOOTH_ROUGHNESS} "
                                   f"and solidity >= {IRREGULAR_SOLIDITY}"}},
        }


def describe_absent(peak: float, threshold: float) -> dict[str, Any]:
    """What the API says when the map has no lesion above the threshold."""
    return {"found": False, "peak": round(float(peak), 4),
            "statement": f"no lesion found: the lesion map stays below {threshold:g} everywhere (its highest value "
                         f"is {float(peak):.2f})"}


def _farthest_pair(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The two points of ``points`` ``(n, 2)`` farthest apart (on a convex hull, few enough for all pairs)."""
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return points[i], points[j], float(dist[i, j])


def find_lesion(prob: np.ndarray, threshold: float = 0.5, spacing_mm: tuple[float, float] | None = None
                ) -> Lesion | None:
    """The lesion in a probability map ``(H, W)`` in [0, 1] (see the module docstring), or ``None``.

    ``spacing_mm`` is (row, column) mm per pixel of the map, when known.
    """
    m = np.asarray(prob, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"the lesion map must be 2-D (H, W), got shape {m.shape}")
    above = (m > threshold).astype(np.uint8)
    if int(above.sum()) < MIN_AREA_PX:
        return None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    peak_at = np.unravel_index(int(np.argmax(np.where(above > 0, m, -1.0))), m.shape)
    label = int(labels[peak_at])
    region = (labels == label).astype(np.uint8)
    if int(region.sum()) < MIN_AREA_PX:
        return None
    others = sum(1 for k in range(1, count) if k != label and stats[k, cv2.CC_STAT_AREA] >= MIN_AREA_PX)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    pts = contour[:, 0, :].astype(np.float64)
    area = float(region.sum())
    hull = cv2.convexHull(contour)
    hull_pts = hull[:, 0, :].astype(np.float64)
    hull_area = max(float(cv2.contourArea(hull)), 1.0)
    a, b, long_px = _farthest_pair(hull_pts)
    axis = (b - a) / max(long_px, 1e-9)
    normal = np.array([-axis[1], axis[0]])
    across = hull_pts @ normal
    short_px = float(across.max() - across.min())
    # Pixel-count lengths: a region one pixel wide is one pixel across, not zero.
    long_px, short_px = long_px + 1.0, short_px + 1.0
    fit, ratio = _ellipse_fit(region, contour)
    # The pixel staircase adds about 5% to any outline's length: measure a polygon within one pixel of it.
    perimeter = float(cv2.arcLength(cv2.approxPolyDP(contour, 1.0, True), True))
    hull_perimeter = max(float(cv2.arcLength(hull, True)), 1e-9)
    x, y, w, h = cv2.boundingRect(contour)
    return Lesion(
        outline=[(int(px), int(py)) for px, py in pts], area_px=area, long_axis_px=long_px, short_axis_px=short_px,
        long_axis=((float(a[0]), float(a[1])), (float(b[0]), float(b[1]))), box=(x, y, x + w, y + h),
        confidence=float(m[region > 0].mean()), peak=float(m[peak_at]), ellipse_fit=fit, axis_ratio=ratio,
        solidity=min(1.0, area / hull_area) if len(hull_pts) >= 3 else 1.0,
        roughness=perimeter / hull_perimeter if perimeter > 0 else 1.0, depth_width_ratio=h / max(w, 1),
        other_regions=others, spacing_mm=None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1])))


def _ellipse_fit(region: np.ndarray, contour: np.ndarray) -> tuple[float, float]:
    """``(IoU of the region with its fitted ellipse, minor / major axis)``; ``(1, 1)`` for outlines too small to fit."""
    if len(contour) < 5:
        return 1.0, 1.0
    (cx, cy), (d1, d2), angle = cv2.fitEllipse(contour)
    if min(d1, d2) <= 0:
        return 0.0, 0.0
    drawn = np.zeros_like(region)
    cv2.ellipse(drawn, ((cx, cy), (d1, d2), angle), 1, thickness=-1)
    union = int(np.count_nonzero(drawn | region))
    return (int(np.count_nonzero(drawn & region)) / union if union else 0.0), min(d1, d2) / max(d1, d2)
