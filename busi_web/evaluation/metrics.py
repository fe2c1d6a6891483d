"""Classification metrics of a model on labelled images, and their plain-text report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision / recall / F1 / AUC, macro AUC and the confusion matrix.

    ``probs`` is ``(N, K)`` class probabilities. Macro-F1 averages the classes
    present in ``y_true`` (a model scored on benign and malignant images only
    is not charged an F1 of 0 for the normal class it was never shown). AUC is one-vs-rest per class
    and is ``None`` for a class that is absent (or is everything) in
    ``y_true``; the macro AUC averages the defined ones (``None`` if none is).
    """
    # scikit-learn takes about a second to import: only when metrics are computed, not at every start.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(y), len(classes))
    labels = list(range(len(classes)))
    pred = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs: list[float | None] = []
    for c in labels:
        positives = int((y == c).sum())
        aucs.append(float(roc_auc_score(y == c, probs[:, c])) if 0 < positives < len(y) else None)
    defined = [a for a in aucs if a is not None]
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(np.mean(f1[support > 0])) if (support > 0).any() else 0.0,
        "auc": float(np.mean(defined)) if defined else None,
        "per_class": {
            name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                   "auc": aucs[c], "support": int(support[c])}
            for c, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def classification_report_text(metrics: Mapping[str, Any], title: str = "") -> str:
    """A plain-text report of :func:`classification_metrics`' result: one row per class, then the averages."""
    classes = list(metrics["classes"])
    width = max([len(c) for c in classes] + [12])
    head = f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'auc':>9}  {'support':>7}"
    lines = [title, ""] if title else []
    lines += [head, ""]

    def fmt(v: float | None) -> str:
        return f"{v:9.4f}" if v is not None else f"{'n/a':>9}"

    per = metrics["per_class"]
    for c in classes:
        m = per[c]
        lines.append(f"{c:<{width}}  {fmt(m['precision'])}  {fmt(m['recall'])}  {fmt(m['f1'])}  {fmt(m['auc'])}  "
                     f"{m['support']:>7}")
    n = metrics["n"]
    present = [c for c in classes if per[c]["support"]] or classes
    macro = {k: float(np.mean([per[c][k] for c in present])) for k in ("precision", "recall", "f1")}
    weighted = {k: (sum(per[c][k] * per[c]["support"] for c in classes) / n if n else 0.0)
                for k in ("precision", "recall", "f1")}
    lines += [
        "",
        f"{'accuracy':<{width}}  {'':>9}  {'':>9}  {fmt(metrics['accuracy'])}  {'':>9}  {n:>7}",
        f"{'macro avg':<{width}}  {fmt(macro['precision'])}  {fmt(macro['recall'])}  {fmt(macro['f1'])}  "
        f"{fmt(metrics['auc'])}  {n:>7}",
        f"{'weighted avg':<{width}}  {fmt(weighted['precision'])}  {fmt(weighted['recall'])}  "
        f"{fmt(weighted['f1'])}  {'':>9}  {n:>7}",
        "",
        "AUC: one-vs-rest per class; the macro AUC averages the classes where it is defined. The macro "
        "averages take the classes with images.",
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        " " * (width + 2) + "  ".join(f"{c[:9]:>9}" for c in classes),
    ]
    for c, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"{c:<{width}}  " + "  ".join(f"{v:>9}" for v in row))
    return "\n".join(lines) + "\n"
