"""Crop geometry for mammograms, shared by the ``mias`` dataset and the Diagnose page.

Everything that decides which pixels a mammography model sees lives here, so
that a training crop and the crop the server cuts around a user's click are
made by the same code:

* :func:`mias_to_pixel` turns MIAS coordinates (origin at the bottom-left
  corner) into a column and row of the image (origin at the top-left);
* :func:`window_side` gives the side of the square cut from the scan (the
  crop size, or enough to hold the whole lesion when scaling by radius);
* :func:`crop_window` cuts that square, padding with black past the edges;
* :func:`breast_mask` and :func:`normal_centre` place crops of normal scans
  inside the breast, never on the black background;
* :func:`dihedral` is one of the 8 rotations/mirrors of a square;
* :func:`standardise` rescales a crop to its own mean and spread.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# A lesion crop scaled by radius shows the lesion's diameter times this, so its margin is in view too.
RADIUS_MARGIN = 1.25
DIHEDRAL = 8  # 4 rotations by 90 degrees, each with and without a mirror
# How a crop's grey levels reach the model: 'scan' as on the film, 'crop' standardised per crop.
INTENSITY = ("scan", "crop")
# A standardised crop has this mean and standard deviation in grey levels: +-3 sd fit in 0-255.
CROP_MEAN, CROP_SD = 128.0, 40.0


def mias_to_pixel(x: float, y: float, height: int) -> tuple[int, int]:
    """``(column, row)`` of a MIAS point: Info.txt measures Y from the bottom edge, images count rows from the top."""
    return int(round(x)), int(round(height - y))


def window_side(crop_size: int, radius: float | None = None, scale_by_radius: bool = False) -> int:
    """Side in scan pixels of the square cut around a point (resized to ``crop_size`` afterwards)."""
    if scale_by_radius and radius:
        return max(int(crop_size), int(math.ceil(2 * float(radius) * RADIUS_MARGIN)))
    return int(crop_size)


def crop_window(image: np.ndarray, col: int, row: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` square of ``image`` centred on ``(col, row)``; parts past the edges are black.

    The top-left corner is ``(row - side // 2, col - side // 2)``, so a larger
    square cut around the same point holds this one exactly at its centre.
    """
    if side < 1:
        raise ValueError(f"crop side must be at least 1 pixel, got {side}")
    h, w = image.shape[:2]
    top, left = int(row) - side // 2, int(col) - side // 2
    out = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, h), min(left + side, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return out


def resize_square(patch: np.ndarray, size: int) -> np.ndarray:
    """Resize a square patch to ``size`` x ``size`` (area averaging when shrinking, so fine detail is not aliased)."""
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    interp = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def standardise(patch: np.ndarray) -> np.ndarray:
    """``patch`` (uint8) shifted and scaled to mean :data:`CROP_MEAN` and spread :data:`CROP_SD`, as uint8.

    A crop's mean grey level mostly says how the film was exposed and how dense
    the breast is, not what the lesion is; on mini-MIAS it carries no severity
    signal over the whole set, yet a small CNN learns it first, and with ~90
    lesions the direction it finds on the training part is usually reversed on
    the held-out parts (test AUC below 0.5). Standardising every crop leaves
    only contrast and shape. A flat patch (e.g. black background) becomes flat
    mid-grey; the small constant keeps its noise from being amplified.
    """
    f = patch.astype(np.float32)
    f = (f - f.mean()) / (f.std() + 2.0) * CROP_SD + CROP_MEAN
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def roi_crop(image: np.ndarray, col: int, row: int, crop_size: int, radius: float | None = None,
             scale_by_radius: bool = False, intensity: str = "scan") -> tuple[np.ndarray, tuple[int, int, int]]:
    """The model's input crop around ``(col, row)`` and its window ``(top, left, side)`` in image pixels.

    ``intensity`` is one of :data:`INTENSITY`: ``'crop'`` applies :func:`standardise`.
    """
    if intensity not in INTENSITY:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY)}, got {intensity!r}")
    side = window_side(crop_size, radius, scale_by_radius)
    patch = resize_square(crop_window(image, col, row, side), int(crop_size))
    if intensity == "crop":
        patch = standardise(patch)
    return patch, (int(row) - side // 2, int(col) - side // 2, side)


def breast_mask(scan: np.ndarray) -> np.ndarray:
    """The breast as a boolean mask: the largest bright connected region of a (blurred) grayscale scan.

    Film labels and tape marks are bright too, but small and apart from the breast, so
    only the largest component is kept.
    """
    gray = scan if scan.ndim == 2 else cv2.cvtColor(scan, cv2.COLOR_RGB2GRAY)
    small = cv2.GaussianBlur(gray, (0, 0), max(gray.shape) / 256)
    level, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu on a mostly dark film can settle inside the tissue; the background is near black, so cap it low.
    fg = (small > min(level, 40)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(gray.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def normal_centre(scan: np.ndarray, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random ``(column, row)`` whose ``side`` square lies inside the breast (the deepest point if none does)."""
    mask = breast_mask(scan)
    if not mask.any():
        h, w = scan.shape[:2]
        return w // 2, h // 2
    # Distance to the nearest background pixel: a square of half-side s fits where it is at least s * sqrt(2).
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    rows, cols = np.nonzero(dist >= (side / 2) * math.sqrt(2))
    if len(rows) == 0:
        row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return int(col), int(row)
    k = int(rng.integers(len(rows)))
    return int(cols[k]), int(rows[k])


def dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` (0-7) of the square's symmetry group: ``k % 4`` quarter turns, mirrored when ``k >= 4``."""
    out = np.rot90(patch, k % 4)
    if k % DIHEDRAL >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
