"""What a run leaves in its folder: metrics, plots, the classification report, all written atomically.

Every file is written to a temporary file in the same folder and renamed
over its name (``os.replace``), so a reader (the web page, a user copying the
folder) never sees half a file, even when the trainer is killed mid-write.
Plots use matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_PNG = "training_history.png"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_TXT = "classification_report.txt"
METRICS_JSON = "metrics.json"
PARAMS_JSON = "params.json"
SPLIT_JSON = "split.json"
LOG_TXT = "training_log.txt"
BEST_PT = "best_model.pt"
LAST_PT = "last.pt"


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision / recall / F1 / AUC, macro AUC and the confusion matrix.

    ``probs`` is ``(N, K)`` class probabilities. AUC is one-vs-rest per class
    and is ``None`` for a class that is absent (or is everything) in
    ``y_true``; the macro AUC averages the defined ones (``None`` if none is).
    """
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
        "macro_f1": float(np.mean(f1)),
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
    macro = {k: float(np.mean([per[c][k] for c in classes])) for k in ("precision", "recall", "f1")}
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
        "AUC: one-vs-rest per class; the macro AUC averages the classes where it is defined.",
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        " " * (width + 2) + "  ".join(f"{c[:9]:>9}" for c in classes),
    ]
    for c, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"{c:<{width}}  " + "  ".join(f"{v:>9}" for v in row))
    return "\n".join(lines) + "\n"


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def history_plot_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Loss and accuracy per epoch, training and validation, as PNG bytes."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "loss", "loss"), (fig.add_subplot(1, 2, 2), "acc",
                                                                          "accuracy")):
        for part, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{part}_{key}") for h in history]
            pts = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{part}", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return _figure_png(fig)


def confusion_plot_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix as a labelled heat map with counts, as PNG bytes."""
    from matplotlib.figure import Figure

    cm = np.asarray(matrix)
    k = len(classes)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.1 * k + 2))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), labels=list(classes), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if top and cm[i, j] > top / 2 else "black")
    return _figure_png(fig)


class RunLog:
    """``training_log.txt``: appended line by line as training goes (and echoed to ``echo``)."""

    def __init__(self, path: str | Path, echo: Any = None):
        self.path = Path(path)
        self.echo = echo

    def __call__(self, message: str) -> None:
        import time

        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
        if self.echo is not None:
            self.echo(line.rstrip("\n"))
