"""The acceptance set's metrics: the direct computation agrees with scikit-learn, and the intervals are honest."""

from __future__ import annotations

import numpy as np
import pytest

from busi_web.evaluation.acceptance import gate_metrics
from busi_web.evaluation.metrics import classification_metrics

CLASSES = ["benign", "malignant", "normal"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90)
    probs[np.arange(45), y[:45]] += 1.0  # half the images leaning to their class
    probs /= probs.sum(axis=1, keepdims=True)
    if seed == 2:
        probs = np.round(probs, 1) + 1e-9  # many ties: they must share their mean rank, as scikit-learn's AUC does
    ours, theirs = gate_metrics(y, probs, CLASSES), classification_metrics(y, probs, CLASSES)
    for key in ("accuracy", "macro_f1", "auc"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
    for c in CLASSES:
        assert ours[f"sensitivity_{c}"] == pytest.approx(theirs["per_class"][c]["recall"], abs=1e-9)
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "auc", "sensitivity_malignant"):
        lo, hi = ours["ci"][key]
        assert lo <= ours[key] <= hi and hi - lo > 0.02, key


def test_an_absent_class_has_no_sensitivity_and_a_tiny_set_still_answers():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = gate_metrics(y, probs, CLASSES)
    assert m["sensitivity_normal"] is None and m["ci"]["sensitivity_normal"] is None
    assert m["sensitivity_benign"] == 0.5 and m["n"] == 4
    # More images, narrower interval: the same rate on 10x the images.
    small = gate_metrics(np.tile(y, 3), np.tile(probs, (3, 1)), CLASSES)["ci"]["accuracy"]
    large = gate_metrics(np.tile(y, 30), np.tile(probs, (30, 1)), CLASSES)["ci"]["accuracy"]
    assert large[1] - large[0] < small[1] - small[0]
