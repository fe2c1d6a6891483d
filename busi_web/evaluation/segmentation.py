"""How well a segmenting model outlines lesions: Dice and IoU, the pointing game of its map, and false lesions.

On an image whose lesion mask is not empty the lesion map is thresholded at
the model's ``lesion_threshold`` and compared with the mask (Dice, IoU),
and its peak is checked against the mask (the pointing game, as for the
heatmaps: :func:`busi_web.evaluation.heatmap_quality.pointing_game`). On an
image whose mask is empty (a normal image) a lesion found at all is a false
lesion; a confident one (not marked low-confidence, see
:data:`busi_web.explain.lesion.LOW_CONFIDENCE`) is counted apart, as what a
clinician would be shown without a caution. Images without a mask file count
for neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from busi_web.evaluation.heatmap_quality import iou_at, pointing_game

__all__ = ["OutlineTally", "dice_at"]


def dice_at(prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of ``prob > threshold`` with a non-empty ``mask`` of the same size."""
    region, m = np.asarray(prob) > float(threshold), np.asarray(mask) != 0
    if region.shape != m.shape:
        raise ValueError(f"the lesion map {region.shape} and the mask {m.shape} must have the same size")
    total = int(region.sum() + m.sum())
    return 2.0 * int(np.count_nonzero(region & m)) / total if total else 1.0


@dataclass
class OutlineTally:
    """Per-image scores of a lesion map, and their summary (:meth:`summary`)."""

    threshold: float
    lesions: list[dict[str, Any]] = field(default_factory=list)
    normals: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, prob: np.ndarray, found: bool, mask: np.ndarray | None, confident: bool = True) -> None:
        """Score one image: ``prob`` is its lesion map at the mask's size, ``found`` whether a lesion was outlined,
        ``confident`` whether that outline is without the low-confidence mark."""
        if mask is None or np.asarray(prob).shape != np.asarray(mask).shape:
            return
        if np.any(mask):
            self.lesions.append({"key": key, "dice": dice_at(prob, mask, self.threshold),
                                 "iou": iou_at(prob, mask, np.nextafter(self.threshold, 1.0)),
                                 "pointing_hit": pointing_game(prob, mask), "found": bool(found)})
        else:
            self.normals.append({"key": key, "false_lesion": bool(found),
                                 "false_confident": bool(found and confident)})

    def summary(self) -> dict[str, Any]:
        """Means over the lesion images (Dice, IoU, pointing, share found) and the false-lesion rates on normals
        (any outline, and confident outlines)."""
        def mean(rows: list[dict[str, Any]], key: str) -> float | None:
            return float(np.mean([float(r[key]) for r in rows])) if rows else None

        return {"threshold": self.threshold, "n_lesion": len(self.lesions), "dice": mean(self.lesions, "dice"),
                "iou": mean(self.lesions, "iou"), "pointing": mean(self.lesions, "pointing_hit"),
                "found": mean(self.lesions, "found"), "n_normal": len(self.normals),
                "false_lesion_rate": mean(self.normals, "false_lesion"),
                "false_confident_rate": mean(self.normals, "false_confident")}
