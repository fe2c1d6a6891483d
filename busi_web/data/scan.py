"""The scan, not the scanner: steps that remove what differs between sites and says nothing about the breast.

Images from two hospitals differ in ways that carry no diagnosis: the frame
and annotations around the scan, burned-in text and calipers, the gain and
the dynamic range. A model can learn those as a sign of the site, and
through the site, of the class (every normal image in BUSI + BUS-BRA comes
from BUSI). These steps run on the decoded image before the model's own
preprocessing (:mod:`busi_web.data.preprocess`), identically in training,
evaluation and diagnosis; a checkpoint records which were on
(:class:`ScanSteps`), so a served model applies what it was trained with.

* ``crop``: cut the image to the ultrasound region. A DICOM with a
  ``SequenceOfUltrasoundRegions`` names it; otherwise :func:`scan_region`
  finds the rows and columns where the image is mostly lit (the frame
  around a scan is black but for sparse text).
* ``marks``: paint over burned-in marks (:func:`busi_web.data.marks.detect_marks`)
  from their surroundings, so that text and calipers never reach the model.
* ``normalise``: ``stretch`` maps the region's 1st and 99th intensity
  percentiles to 0 and 255; ``equalize`` applies contrast-limited adaptive
  histogram equalisation (CLAHE). ``none`` leaves the gray levels as they are.

The region is returned with the image so that a heatmap of the prepared
image can be put back onto the original (:func:`busi_web.data.preprocess.paste_map`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from busi_web.data.marks import detect_marks

NORMALISATIONS = ("none", "stretch", "equalize")
Box = tuple[int, int, int, int]  # (left, top, right, bottom), right and bottom exclusive: Pillow's order

_LIT = 12  # gray level above which a pixel is lit (a scanner's frame is black, about 0 to 5)
_LIT_SHARE = 0.3  # a row or column of the scan is lit over at least this share
_MIN_KEEP = 0.4  # a detected region smaller than this share of either side is not trusted: keep the image


@dataclass(frozen=True)
class ScanSteps:
    """Which scan steps run (see the module docstring); all off by default."""

    crop: bool = False
    marks: bool = False
    normalise: str = "none"

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")

    @property
    def active(self) -> bool:
        return self.crop or self.marks or self.normalise != "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScanSteps:
        data = data or {}
        return cls(crop=bool(data.get("crop", False)), marks=bool(data.get("marks", False)),
                   normalise=str(data.get("normalise", "none")))

    def describe(self) -> str:
        """The steps in words, for logs and the model card."""
        on = [w for w, flag in (("crop to the scan", self.crop), ("marks painted over", self.marks)) if flag]
        if self.normalise != "none":
            on.append(f"intensity {'stretched (1st-99th percentile)' if self.normalise == 'stretch' else 'equalised'}")
        return ", ".join(on) or "none"


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    return image


def _span(profile: np.ndarray, share: float) -> tuple[int, int] | None:
    """First and last index (exclusive end) where a smoothed profile reaches ``share``."""
    k = max(1, len(profile) // 50)
    smooth = np.convolve(profile, np.ones(k) / k, mode="same") if k > 1 else profile
    idx = np.flatnonzero(smooth >= share)
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


def scan_region(image: np.ndarray) -> Box:
    """The ultrasound region of ``image`` (``uint8``, ``(H, W)`` or ``(H, W, 3)``): the span of rows and columns
    that are mostly lit. The whole image when nothing convincing is found."""
    gray = _gray(image)
    h, w = gray.shape
    lit = gray > _LIT
    rows = _span(lit.mean(axis=1), _LIT_SHARE)
    if rows is None:
        return 0, 0, w, h
    cols = _span(lit[rows[0]:rows[1]].mean(axis=0), _LIT_SHARE)
    if cols is None:
        return 0, 0, w, h
    top, bottom = rows
    left, right = cols
    if bottom - top < _MIN_KEEP * h or right - left < _MIN_KEEP * w:
        return 0, 0, w, h
    return left, top, right, bottom


def clip_box(box: Box | None, hw: tuple[int, int]) -> Box:
    """``box`` limited to an image of ``hw`` (the whole image for ``None`` or an empty box)."""
    h, w = int(hw[0]), int(hw[1])
    if box is None:
        return 0, 0, w, h
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    right, bottom = min(max(right, left + 1), w), min(max(bottom, top + 1), h)
    return left, top, right, bottom


def paint_over_marks(image: np.ndarray) -> np.ndarray:
    """``image`` with its burned-in marks inpainted from their surroundings (unchanged when none are found)."""
    marks = detect_marks(image)
    if not marks.any():
        return image
    return cv2.inpaint(np.ascontiguousarray(image), marks.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def normalise_intensity(image: np.ndarray, how: str) -> np.ndarray:
    """The gray levels of ``image`` stretched or equalised (see the module docstring); colour channels alike."""
    if how == "none":
        return image
    if how == "stretch":
        low, high = np.percentile(_gray(image), (1, 99))
        if high - low < 1:
            return image
        scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if how == "equalize":
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        if image.ndim == 2:
            return clahe.apply(image)
        # Equalise the luminance and keep the colour of overlays (ultrasound is gray: the channels stay equal).
        ycc = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2YCrCb)
        ycc[..., 0] = clahe.apply(ycc[..., 0])
        return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {how!r}")


def prepare_scan(image: np.ndarray, steps: ScanSteps, region: Box | None = None,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Run ``steps`` on one decoded image: ``(prepared image, its mask cut alike, the region kept)``.

    ``region``: the ultrasound region when the file says where it is (DICOM); with ``crop`` and no region it is
    found with :func:`scan_region`. Without ``crop`` the region is the whole image.
    """
    hw = image.shape[:2]
    box = clip_box(region if region is not None else scan_region(image), hw) if steps.crop else clip_box(None, hw)
    left, top, right, bottom = box
    out = image[top:bottom, left:right] if steps.crop else image
    if mask is not None and steps.crop:
        mask = mask[top:bottom, left:right]
    if steps.marks:
        out = paint_over_marks(out)
    out = normalise_intensity(out, steps.normalise)
    return np.ascontiguousarray(out), mask, box
