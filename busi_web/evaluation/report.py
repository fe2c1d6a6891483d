"""Writing an evaluation report (:mod:`busi_web.evaluation.evaluate`): ``report.md``, ``report.json`` and its PNGs.

Every file is written atomically (:func:`busi_web.store.run_files.write_atomic`),
``report.md`` last: a folder with a ``report.md`` is a complete report, which
is what the run page lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busi_web.evaluation.metrics import classification_report_text
from busi_web.evaluation.plots import confusion_plot_png, examples_png, localisation_plot_png, reliability_plot_png
from busi_web.evaluation.sites import sites_markdown
from busi_web.store import run_files as art

LOCALISATION_PNG = "localisation.png"


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: Mapping[str, Any], pngs: Sequence[str]) -> str:
    """The human report: what was evaluated, classification numbers, localisation and the shortcut check."""
    c = report["classification"]
    lines = [f"# Evaluation of run {report.get('run_id')} ({report['backbone']}) on {report['dataset']}", "",
             f"- data: `{report.get('data_dir') or 'generated'}`"
             + (f", part **{report['part']}** of the run's split" if report.get("part") else ", whole folder"),
             f"- images: {c['n']}; model classes: {', '.join(report['classes'])}; "
             f"data classes: {', '.join(report['data_classes'])}",
             f"- written {report['created_at']} in {report['seconds']:.0f} s", "",
             "## Classification", "",
             f"**accuracy {_f(c['accuracy'])}**, **macro-F1 {_f(c['macro_f1'])}**, "
             f"macro one-vs-rest AUC {_f(c['auc'])}", "",
             "| class | precision | recall | F1 | AUC (one-vs-rest) | support |", "|---|---|---|---|---|---|"]
    for name in report["classes"]:
        p = c["per_class"][name]
        lines.append(f"| {name} | {_f(p['precision'])} | {_f(p['recall'])} | {_f(p['f1'])} | {_f(p['auc'])} | "
                     f"{p['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(report["classes"]) + " |", "|---" * (len(report["classes"]) + 1) + "|"]
    for name, row in zip(report["classes"], c["confusion_matrix"], strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    if report.get("sites"):
        lines += ["", "## Per site", "", "Probabilities calibrated; the operating point is the threshold on "
                  "p(malignant) the model keeps from its validation part."
                  + (" **An external validation**: data the model never trained on." if report.get("external")
                     else ""), ""]
        lines += sites_markdown(report["sites"])
    cal = report["calibration"]
    lines += ["", "## Calibration", "",
              f"Expected calibration error ({cal['bins']} bins of the top class's confidence): "
              f"**{_f(cal['ece_before'])} before, {_f(cal['ece_after'])} after** the model's temperature "
              f"T = {cal['temperature']:.3f} (fitted on its validation part; 1 means none). See the reliability "
              "diagram."]
    lines += ["", "## Heatmap localisation", "",
              "Maps of the predicted class on the images with a non-empty lesion mask. Chance: the lesion's "
              "share of the image (a random point hits it, a uniform map puts that share of its mass in it, a "
              "map covering everything has that IoU).", "",
              "| explainer | lesions | pointing game | energy | IoU@0.5 | chance |", "|---|---|---|---|---|---|"]
    for name, s in report["localisation"].items():
        lines.append(f"| {name} | {s['n']} | {_f(s['pointing'])} | {_f(s['energy'])} | {_f(s['iou'])} | "
                     f"{_f(s['chance'])} |")
    seg = report.get("segmentation")
    if seg:
        lines += ["", "## Lesion outline", "",
                  f"The model's own lesion map, thresholded at {seg['threshold']:g}: on the {seg['n_lesion']} images "
                  f"with a lesion, **Dice {_f(seg['dice'])}**, IoU {_f(seg['iou'])}, its peak inside the lesion "
                  f"(pointing game) **{_f(seg['pointing'])}**, a lesion outlined at all {_f(seg['found'])}; on the "
                  f"{seg['n_normal']} images without one, **false lesions {_f(seg['false_lesion_rate'])}** "
                  f"({_f(seg['false_confident_rate'])} without the low-confidence mark)."]
    n_images = c["n"]
    capped = [f"{name} mapped {k} of {n_images} images" for name, k in (report.get("mapped_images") or {}).items()
              if k < n_images]
    if capped:
        lines += ["", f"Capped with max_maps (spread evenly over the images): {'; '.join(capped)}."]
    skipped = report.get("skipped") or {}
    if skipped:
        lines += ["", "**Skipped explainers** (they failed; fix or remove the plugin):", ""]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]
    lines += ["", "## Shortcut check: burned-in marks", "",
              "Share of each map's mass on detected caliper marks and text (outside the lesion) against the "
              "marks' share of the image, and on the lesion against its share. A map is flagged when it puts "
              "at least 10 % of its mass and 3x chance on the marks and looks at them more keenly than at the "
              "lesion; a model when 20 % or more of its maps on images with marks are flagged. Means over the maps of "
              "images with marks.", "",
              "| explainer | maps with marks | mass on marks | marks' area | mass on lesion | lesion area | "
              "flagged maps | verdict |", "|---|---|---|---|---|---|---|---|"]
    for name, s in report["shortcuts"].items():
        verdict = "**looks at the marks**" if s["flagged"] else "ok"
        lines.append(f"| {name} | {s['n_with_marks']}/{s['n_maps']} | {_f(s['mark_energy'])} | "
                     f"{_f(s['mark_chance'])} | {_f(s['lesion_energy'])} | {_f(s['lesion_chance'])} | "
                     f"{s['flagged_share']:.0%} | {verdict} |")
    flagged = [n for n, s in report["shortcuts"].items() if s["flagged"]]
    if flagged:
        lines += ["", f"**Warning:** the maps of {', '.join(flagged)} dwell on burned-in marks: the model may "
                  "have learned them as a shortcut. Check the examples, and consider masking the marks."]
    lines += ["", "## Figures", ""] + [f"![{p}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def write_report(folder: str | Path, report: dict[str, Any],
                 examples: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]],
                 ) -> Path:
    """Write the report's files into ``folder`` (created); returns the path of ``report.md``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = report["classification"]
    pngs = [art.CONFUSION_PNG, art.RELIABILITY_PNG, LOCALISATION_PNG]
    art.write_atomic(folder / art.CONFUSION_PNG, confusion_plot_png(c["confusion_matrix"], report["classes"],
                                                                f"{report['dataset']} evaluation"))
    art.write_atomic(folder / art.RELIABILITY_PNG, reliability_plot_png(
        report["calibration"], f"{report['dataset']} evaluation: reliability"))
    art.write_atomic(folder / LOCALISATION_PNG, localisation_plot_png(report["localisation"]))
    for name, items in examples.items():
        if items:
            art.write_atomic(folder / f"examples_{name}.png", examples_png(name, items))
            pngs.append(f"examples_{name}.png")
    art.write_atomic(folder / art.REPORT_TXT, classification_report_text(c, report["dataset"]))
    art.write_json(folder / "report.json", {**report, "pngs": pngs})
    return art.write_atomic(folder / "report.md", markdown(report, pngs))
