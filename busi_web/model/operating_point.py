"""The operating point: a threshold on p(malignant) chosen for sensitivity, not the class with the top probability.

A referral for biopsy is decided by how many cancers may be missed, not by
which class is most likely. Per modality an administrator sets the
sensitivity for malignancy the model must keep (0.90 unless set). At the end
of a run the trainer finds, on the validation part's calibrated
probabilities, the highest threshold that keeps that sensitivity, and keeps
it in the checkpoint. A result at or above it is *suspicious* ("consider
biopsy") whatever class is on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

POSITIVE = "malignant"
DEFAULT_SENSITIVITY = 0.90
SUSPICIOUS = "suspicious: consider biopsy"
NOT_SUSPICIOUS = "below the biopsy threshold"


def fit_operating_point(p_positive: np.ndarray, is_positive: np.ndarray, sensitivity: float) -> dict[str, Any] | None:
    """The highest threshold on ``p_positive`` whose sensitivity on these images is at least ``sensitivity``,
    with the sensitivity and specificity it gives there; ``None`` without a positive image."""
    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be above 0 and at most 1, got {sensitivity}")
    p = np.asarray(p_positive, dtype=np.float64)
    pos = np.asarray(is_positive, dtype=bool)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return None
    ranked = np.sort(p[pos])[::-1]
    keep = math.ceil(sensitivity * n_pos - 1e-9)  # how many positives must be at or above the threshold
    threshold = float(ranked[keep - 1])
    above = p >= threshold
    neg = ~pos
    return {"threshold": threshold, "target_sensitivity": float(sensitivity),
            "sensitivity": float(above[pos].mean()),
            "specificity": float((~above[neg]).mean()) if neg.any() else None,
            "n_positive": n_pos, "n": int(len(p)), "fitted_on": "validation part, calibrated probabilities"}


def positive_index(classes: Sequence[str]) -> int | None:
    """The index of the malignant class, ``None`` for a model without one (no operating point then)."""
    return list(classes).index(POSITIVE) if POSITIVE in classes else None


def verdict(probabilities: Mapping[str, float], point: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Whether one result is at or above the operating point: ``{"suspicious", "text", "threshold",
    "p_malignant", "target_sensitivity"}``; ``None`` for a model without an operating point."""
    if not point or POSITIVE not in probabilities:
        return None
    p = float(probabilities[POSITIVE])
    threshold = float(point["threshold"])
    suspicious = p >= threshold
    return {"suspicious": suspicious, "text": SUSPICIOUS if suspicious else NOT_SUSPICIOUS,
            "threshold": threshold, "p_malignant": p, "target_sensitivity": point.get("target_sensitivity")}
