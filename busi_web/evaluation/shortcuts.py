"""Shortcut check: does a heatmap sit on burned-in caliper marks and text instead of the lesion?

Many BUSI images carry measurement calipers (small ``+`` crosses, dashed
lines) and scanner text burned into the pixels. They often sit next to the
lesion and correlate with the diagnosis, so a model can learn them as a
shortcut; its heatmaps then light up the marks.

:func:`~busi_web.data.marks.detect_marks` finds such marks without any
training (see :mod:`busi_web.data.marks`); the mask is dilated a little
because heatmaps are coarse.

:func:`shortcut_score` then compares, for one map, the share of its mass on
the marks with the marks' share of the image (the chance level of a map
that ignores them), and the same for the lesion. A map is **flagged** when
it puts clearly more than chance on the marks (``lift``), a sizeable share
of its mass (``min_share``), and, when the lesion is known, looks at the
marks more keenly than at the lesion. Mark pixels inside the lesion mask
do not count as marks: attention there is attention to the lesion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from busi_web.data.marks import MarkDetector, detect_marks

__all__ = ["MarkDetector", "ShortcutScore", "detect_marks", "shortcut_score", "summarise_shortcuts"]


@dataclass(frozen=True)
class ShortcutScore:
    """How much of one map's mass lies on the marks and on the lesion, each against its chance level."""

    mark_energy: float
    mark_chance: float
    lesion_energy: float | None
    lesion_chance: float | None
    flagged: bool

    @property
    def mark_lift(self) -> float:
        return self.mark_energy / self.mark_chance if self.mark_chance > 0 else 0.0

    @property
    def lesion_lift(self) -> float | None:
        if self.lesion_energy is None or not self.lesion_chance:
            return None
        return self.lesion_energy / self.lesion_chance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mark_lift": self.mark_lift, "lesion_lift": self.lesion_lift}


def shortcut_score(heatmap: np.ndarray, marks: np.ndarray, lesion: np.ndarray | None = None, *,
                   lift: float = 3.0, min_share: float = 0.1) -> ShortcutScore:
    """Score one map (``(H, W)``, the image's size) against its marks and, if known, its lesion mask.

    Returns ``mark_energy = 0`` and not flagged for an image without marks.
    """
    hm = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    marks = np.asarray(marks, dtype=bool)
    if hm.shape != marks.shape or (lesion is not None and np.shape(lesion) != hm.shape):
        raise ValueError(f"heatmap {hm.shape}, marks {marks.shape} and lesion mask "
                         f"{None if lesion is None else np.shape(lesion)} must have the same size")
    les = None if lesion is None or not np.any(lesion) else np.asarray(lesion, dtype=bool)
    if les is not None:
        marks = marks & ~les
    total = hm.sum()
    mark_chance = float(marks.mean())
    mark_energy = float(hm[marks].sum() / total) if total > 0 and mark_chance > 0 else 0.0
    lesion_energy = lesion_chance = None
    if les is not None:
        lesion_chance = float(les.mean())
        lesion_energy = float(hm[les].sum() / total) if total > 0 else 0.0
    flagged = mark_chance > 0 and mark_energy >= min_share and mark_energy >= lift * mark_chance
    if flagged and les is not None and lesion_chance:
        # Looking at the lesion more keenly than at the marks is not a shortcut.
        flagged = mark_energy / mark_chance > lesion_energy / lesion_chance  # type: ignore[operator]
    return ShortcutScore(mark_energy, mark_chance, lesion_energy, lesion_chance, bool(flagged))


def summarise_shortcuts(scores: Sequence[ShortcutScore], flag_rate: float = 0.2) -> dict[str, Any]:
    """Means over the images that have marks, the share of flagged maps, and the verdict for the model.

    The model is flagged when at least ``flag_rate`` of its maps on images with marks are flagged.
    """
    with_marks = [s for s in scores if s.mark_chance > 0]
    with_lesion = [s for s in with_marks if s.lesion_energy is not None]
    out: dict[str, Any] = {"n_maps": len(scores), "n_with_marks": len(with_marks)}
    if not with_marks:
        return {**out, "mark_energy": None, "mark_chance": None, "mark_lift": None, "lesion_energy": None,
                "lesion_chance": None, "flagged_share": 0.0, "flagged": False}
    flagged_share = float(np.mean([s.flagged for s in with_marks]))
    return {
        **out,
        "mark_energy": float(np.mean([s.mark_energy for s in with_marks])),
        "mark_chance": float(np.mean([s.mark_chance for s in with_marks])),
        "mark_lift": float(np.mean([s.mark_lift for s in with_marks])),
        "lesion_energy": float(np.mean([s.lesion_energy for s in with_lesion])) if with_lesion else None,
        "lesion_chance": float(np.mean([s.lesion_chance for s in with_lesion])) if with_lesion else None,
        "flagged_share": flagged_share,
        "flagged": flagged_share >= flag_rate,
    }
