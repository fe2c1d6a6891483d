"""Plots of a run and of an evaluation, as PNG bytes (matplotlib's object API: no pyplot state, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def history_plot_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Loss and accuracy per epoch, training and validation, as PNG bytes."""
    # matplotlib takes about half a second to import: only when a plot is drawn. The object API: no pyplot
    # state, no display backend needed.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator  # with Figure, above

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
    from matplotlib.figure import Figure  # slow to import: only when a plot is drawn

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


def localisation_plot_png(summary: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Bars per explainer: pointing game, energy and IoU, with the chance baseline as a dashed line."""
    from matplotlib.figure import Figure  # slow to import: only when a plot is drawn

    names = [n for n, s in summary.items() if s.get("n")]
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 3), 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("pointing", "pointing game"), ("energy", "energy"), ("iou", "IoU@0.5"))):
        ax.bar(x + (k - 1) * 0.27, [summary[n][key] or 0 for n in names], 0.27, label=label)
    for i, n in enumerate(names):
        ax.hlines(summary[n]["chance"], i - 0.42, i + 0.42, colors="black", linestyles="dashed",
                  label="chance" if i == 0 else None)
    ax.set_xticks(x, labels=names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean over lesions)")
    ax.set_title("heatmap localisation against chance" if names else "no lesion masks: no localisation")
    ax.grid(axis="y", alpha=0.3)
    if names:
        ax.legend(fontsize=8)
    return _figure_png(fig)


def examples_png(name: str, examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]) -> bytes:
    """A few images with the map over them, the lesion outline in green and detected marks in magenta."""
    from matplotlib.figure import Figure  # slow to import: only when a plot is drawn

    fig = Figure(figsize=(2.4 * max(1, len(examples)), 2.6))
    for k, (image, heatmap, lesion, marks) in enumerate(examples):
        ax = fig.add_subplot(1, max(1, len(examples)), k + 1)
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        ax.imshow(rgb)
        ax.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for mask, colour in ((lesion, "lime"), (marks, "magenta")):
            if mask is not None and mask.any():
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                for c in contours:
                    c = c[:, 0, :]
                    ax.plot(np.append(c[:, 0], c[0, 0]), np.append(c[:, 1], c[0, 1]), color=colour, lw=0.8)
        ax.set_axis_off()
    fig.suptitle(f"{name}: map, lesion (green), marks (magenta)", fontsize=9)
    return _figure_png(fig)


def reliability_plot_png(summary: Mapping[str, Any], title: str = "") -> bytes:
    """A reliability diagram, before and after temperature scaling, from
    :func:`busi_web.model.calibration.calibration_summary`: accuracy against confidence per bin (a perfectly
    calibrated model lies on the diagonal), with each ECE in the legend."""
    from matplotlib.figure import Figure  # see history_plot_png

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for key, style, name in (("before", "-o", "before"), ("after", "-s", "after")):
        pts = [(b["confidence"], b["accuracy"]) for b in summary[f"reliability_{key}"] if b["count"]]
        if pts:
            label = f"{name} (ECE {summary[f'ece_{key}']:.3f})"
            if key == "after":
                label = f"after, T = {summary['temperature']:.2f} (ECE {summary['ece_after']:.3f})"
            ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability ({summary['n']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _figure_png(fig)
