"""One image's answer: the class, calibrated probabilities, the heatmap and lesion outline, and how it is shown.

:class:`Prediction` is what :class:`busi_web.model.predictor.Predictor`
returns for each image; it renders its pictures and its JSON summary itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from busi_web.explain.lesion import Lesion, describe_absent
from busi_web.explain.render import annotate, fast_png, to_png
from busi_web.model.shown import LESION_FREE, WITHHELD, is_withheld

# Below this probability a heatmap of the explained class comes with a caution (see Prediction.caution).
LOW_PROBABILITY = 0.2


@dataclass
class Prediction:
    """One image's result. ``heatmap`` is ``float32 (H, W)`` in [0, 1] at the uploaded image's size.

    ``region`` is the part of the image the model saw, ``(left, top, right, bottom)`` in pixels: the centre crop
    of its preprocessing. The heatmap is 0 outside it, and pictures leave that part unpainted.
    ``probabilities`` are calibrated when the model carries a temperature. ``ood`` is the out-of-distribution
    verdict (``score``, ``threshold``, ``out_of_distribution``), ``None`` for a model saved without a reference.
    ``lesion_map`` (``float32 (H, W)`` in [0, 1], the image's size) and ``lesion`` (the outlined region, ``None``
    when nothing passed ``lesion_threshold``) come from models that segment; ``lesion_map`` is ``None`` otherwise.
    """

    label: str
    index: int
    probabilities: dict[str, float]
    target: int | None = None
    target_label: str | None = None
    explainer: str | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    seconds: float = 0.0
    region: tuple[int, int, int, int] | None = None
    ood: dict[str, Any] | None = None
    lesion_map: np.ndarray | None = field(default=None, repr=False)
    lesion: Lesion | None = None
    lesion_threshold: float = 0.5
    operating: dict[str, Any] | None = None  # the operating point's verdict (model.operating_point.verdict)
    map_note: str | None = None  # why no heatmap is shown although one was asked for (an unusable map)

    @property
    def withheld(self) -> bool:
        """Whether the class is withheld: the image is out of distribution, so no class may headline it."""
        return is_withheld(self.ood)

    @property
    def shown_label(self) -> str | None:
        """The class a clinician is shown: :attr:`label`, or ``None`` when it is withheld."""
        return None if self.withheld else self.label

    def lesion_info(self, spacing_mm: tuple[float, float] | None = None) -> dict[str, Any] | None:
        """The lesion finding as JSON (outline, measurements, descriptors, a plain statement), with mm when
        ``spacing_mm`` (row, column mm per pixel of :attr:`image`) is given; ``None`` for a model that does not
        segment.

        Sizes and descriptors are shown only when the answer is a lesion and the outline is confident: an outline
        on an image called normal, of low confidence, or on an image whose class is withheld, is described as
        "no lesion outlined", with the reason (``found`` False, ``suppressed`` the reason)."""
        if self.lesion_map is None:
            return None
        if self.lesion is None:
            return describe_absent(float(self.lesion_map.max()), self.lesion_threshold)
        why = ("the image is unlike the training images" if self.withheld else
               f"the answer is {self.label}" if self.label == LESION_FREE else
               "the outline is of low confidence" if self.lesion.low_confidence else None)
        if why is not None:
            return {"found": False, "suppressed": why, "peak": round(float(self.lesion.peak), 4),
                    "statement": f"no lesion outlined: {why}"}
        if spacing_mm is None:
            return self.lesion.to_dict()
        return replace(self.lesion, spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1]))).to_dict()

    @property
    def caution(self) -> str | None:
        """A warning when the explained class is unlikely: the map then shows what would speak for that class,
        scaled to full colour like any map, not where a finding is. ``None`` otherwise."""
        if self.heatmap is None or self.target_label is None:
            return None
        p = self.probabilities.get(self.target_label, 0.0)
        if p >= LOW_PROBABILITY:
            return None
        return (f"this heatmap explains {self.target_label}, which the model gives only {100 * p:.1f}%: it shows "
                f"what would speak for {self.target_label}, stretched to full colour, not where a finding is")

    def picture(self, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The heatmap blended over the image (the image alone without a heatmap), with the lesion's outline when
        one was found: an RGB Pillow image."""
        if self.image is None:
            raise ValueError("this prediction keeps no image")
        info = self.lesion_info()
        outline = self.lesion.polygon() if self.lesion is not None and info and info["found"] else None
        return annotate(self.image, self.heatmap, alpha, colormap, self.region, outline)[0]

    def overlay_png(self, alpha: float = 0.5, colormap: str = "jet") -> bytes:
        """The heatmap blended over the original image, with the lesion's outline when one was found, as PNG."""
        if self.heatmap is None or self.image is None:
            raise ValueError("this prediction has no heatmap; predict with an explainer (e.g. 'gradcam')")
        return fast_png(self.picture(alpha, colormap))

    def heatmap_png(self) -> bytes:
        """The heatmap alone as an 8-bit grayscale PNG."""
        if self.heatmap is None:
            raise ValueError("this prediction has no heatmap; predict with an explainer (e.g. 'gradcam')")
        return to_png(np.clip(np.rint(self.heatmap * 255), 0, 255).astype(np.uint8))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        return {"label": self.shown_label, "withheld": WITHHELD if self.withheld else None, "index": self.index,
                "probabilities": dict(self.probabilities),
                "target": self.target, "target_label": self.target_label, "explainer": self.explainer,
                "region": None if self.region is None else list(self.region), "caution": self.caution,
                "ood": self.ood, "lesion": self.lesion_info(),
                "operating_point": None if self.withheld else self.operating, "map_note": self.map_note,
                "seconds": round(self.seconds, 4)}


def map_problem(map_: torch.Tensor, explainer: str | None, target: str | None) -> str | None:
    """Why a map cannot be shown (a sentence), or ``None``: NaN or infinite values (the explainer broke), or no
    value above zero (it found no evidence): a flat picture would look like a finding of nothing."""
    if not bool(torch.isfinite(map_).all()):
        return (f"explainer {explainer} gave an unusable map (NaN or infinite values); no heatmap is shown. An "
                "administrator should check the plugin")
    if float(map_.max()) <= 0.0:
        return (f"explainer {explainer} found no evidence for {target or 'the class'} in this image (its map is "
                "zero everywhere); no heatmap is shown")
    return None
