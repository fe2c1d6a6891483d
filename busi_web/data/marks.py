"""Burned-in marks: caliper crosses, dashed lines, scanner text and coloured overlays in an ultrasound image.

Many scans carry measurement calipers and text burned into the pixels. They
often sit next to the lesion and correlate with the diagnosis, so a model can
learn them as a shortcut. :func:`detect_marks` finds them without any
training: they are **thin and much brighter than their surroundings** (a
white top-hat with a small kernel keeps structures narrower than the kernel
and removes the smooth tissue), or **coloured** where ultrasound tissue is
gray. Speckle is bright too but rarely saturated *and* high-contrast over a
connected stretch, so isolated pixels are dropped. The mask is dilated a
little. The shortcut check (:mod:`busi_web.evaluation.shortcuts`) scores
heatmaps against it; the scan step ``marks`` (:mod:`busi_web.data.scan`)
paints the marks over before the model sees the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["MarkDetector", "detect_marks"]


@dataclass(frozen=True)
class MarkDetector:
    """Thresholds of :func:`detect_marks`, in 8-bit gray levels; sizes scale with the image side (per 256 px)."""

    contrast: float = 90.0  # white top-hat: how much brighter than the local background
    brightness: float = 240.0  # marks are drawn near white; bright tissue echoes rarely reach it
    saturation: float = 20.0  # max - min over RGB: coloured overlays (ultrasound itself is gray)
    kernel: int = 5  # top-hat kernel side at 256 px: wider than a mark's 1-2 px stroke, narrower than tissue
    min_pixels: int = 4  # smaller connected specks are speckle (or compression noise in colour)
    min_extent: int = 5  # a mark spans at least this many pixels (at 256 px) in height or width
    max_thick: float = 0.35  # at most this share of a mark survives a 3x3 erosion: strokes are thin
    min_straight: float = 0.3  # at least this share lies on horizontal or vertical runs of min_extent pixels
    max_line_frac: float = 0.25  # a flat white line longer than this share of the side is anatomy (skin line)
    max_component_frac: float = 0.02  # larger bright regions are tissue (e.g. a bright fat lobule), not marks
    dilate: int = 2  # grow the marks by this many pixels at 256 px

    def scaled(self, value: int, side: int) -> int:
        return max(1, int(round(value * side / 256)))


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    return image


def _keep_components(candidates: np.ndarray, d: MarkDetector, side: int, thin: bool) -> np.ndarray:
    """The connected stretches of ``candidates`` that look like marks (size, extent and, if ``thin``, thinness)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    keep = (area >= d.min_pixels) & (area <= d.max_component_frac * candidates.size)
    if thin:
        extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
        # Pixels of each component that survive an erosion: a thick blob keeps most, a 1-2 px stroke none.
        core = cv2.erode(candidates.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        thick = np.bincount(labels[core], minlength=n) / np.maximum(area, 1)
        # Pixels on a straight horizontal or vertical run: the strokes of crosses and glyphs, rarely speckle.
        length = max(3, d.scaled(d.min_extent, side))
        c8 = candidates.astype(np.uint8)
        runs = (cv2.morphologyEx(c8, cv2.MORPH_OPEN, np.ones((1, length), np.uint8))
                | cv2.morphologyEx(c8, cv2.MORPH_OPEN, np.ones((length, 1), np.uint8))) > 0
        straight = np.bincount(labels[runs], minlength=n) / np.maximum(area, 1)
        keep &= ((extent >= length) & (thick <= d.max_thick) & (straight >= d.min_straight))
    keep[0] = False  # the background label
    kept = keep[labels]
    if thin and kept.any():
        kept &= ~_long_lines(kept, d, side)
    return kept


def _long_lines(kept: np.ndarray, d: MarkDetector, side: int) -> np.ndarray:
    """Pieces that chain into one long, flat line: the skin line or a fascia, not a caliper or a word."""
    # Tissue interfaces run across the image (ultrasound looks down): chain pieces mostly sideways.
    r, gap = d.scaled(1, side), max(3, int(0.06 * side))
    chained = cv2.dilate(kept.astype(np.uint8), np.ones((2 * r + 1, 2 * gap + 1), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(chained, connectivity=8)
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    # A line across a quarter of the image and flat along it; words and crosses are compact.
    long_flat = (w >= d.max_line_frac * side) & (w >= 6 * h)
    long_flat[0] = False
    return long_flat[labels]


def detect_marks(image: np.ndarray, detector: MarkDetector | None = None) -> np.ndarray:
    """A ``bool (H, W)`` mask of likely burned-in marks (calipers, text, coloured overlays) in ``image``.

    ``image`` is ``uint8`` ``(H, W)`` or ``(H, W, 3)``.
    """
    d = detector or MarkDetector()
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    gray = _gray(image)
    side = min(gray.shape)
    k = max(3, d.scaled(d.kernel, side) | 1)  # odd, and wider than a 1 px stroke
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    white = _keep_components((tophat >= d.contrast) & (gray >= d.brightness), d, side, thin=True)
    marks = white
    if image.ndim == 3 and image.shape[2] >= 3:
        # Gray ultrasound has no colour: any coloured stretch is an overlay, whatever its shape.
        rgb = image[..., :3].astype(np.int16)
        marks = marks | _keep_components((rgb.max(axis=2) - rgb.min(axis=2)) >= d.saturation, d, side, thin=False)
    r = d.scaled(d.dilate, side)
    if r and marks.any():
        marks = cv2.dilate(marks.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                             (2 * r + 1, 2 * r + 1))) > 0
    return marks
