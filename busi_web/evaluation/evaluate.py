"""Evaluate a trained run on a folder of images: classification quality, heatmap localisation, shortcuts.

This is how a hospital validates a model on its own images:
``busi-web evaluate --run ID --data-dir DIR [--dataset busi]``. The data is
read through a dataset plugin (the same layout the model was trained on);
every image is classified with the run's checkpoint and preprocessing
(:class:`~busi_web.model.predictor.Predictor`), and every registered explainer
maps every image. The report gives

* accuracy, macro-F1, per-class precision / recall, one-vs-rest AUC and the
  confusion matrix (:func:`busi_web.evaluation.metrics.classification_metrics`);
* the expected calibration error and a reliability diagram, before and after
  the model's temperature (:mod:`busi_web.model.calibration`);
* per explainer, on the images whose lesion mask is not empty: pointing
  game, energy pointing game and IoU at 0.5, each beside its chance
  baseline (:mod:`busi_web.evaluation.heatmap_quality`);
* for a model that segments: Dice and IoU of its lesion outline and the
  pointing game of its lesion map on lesion images, and the share of normal
  images (empty masks) where it outlines a lesion anyway
  (:mod:`busi_web.evaluation.segmentation`);
* per explainer, the shortcut check: the maps' mass on burned-in caliper
  marks and text against the lesion (:mod:`busi_web.evaluation.shortcuts`).

An explainer that fails (a broken plugin) is skipped: the report lists it under ``skipped`` with the error.

Maps explain the predicted class: the explanation a clinician would see.
``part="test"`` restricts the evaluation to one part of the run's own
``split.json`` (for the data folder the run was trained on: evaluating the
training images would flatter the model). The report goes to
``<run_dir>/evaluations/<timestamp>_<dataset>[_<part>]/``: ``report.md``,
``report.json`` (with every prediction) and PNGs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busi_web.data.datasets import DatasetError, ImageDataset, check_data_dir
from busi_web.data.sites import Source, open_sources
from busi_web.data.splits import PARTS, Split
from busi_web.errors import UserError
from busi_web.evaluation.heatmap_quality import localisation
from busi_web.evaluation.metrics import classification_metrics
from busi_web.evaluation.report import write_report
from busi_web.evaluation.segmentation import OutlineTally
from busi_web.evaluation.shortcuts import ShortcutScore, detect_marks, shortcut_score, summarise_shortcuts
from busi_web.evaluation.sites import per_site
from busi_web.model.calibration import apply_temperature, calibration_summary
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginFailure, PluginRegistry
from busi_web.store import run_files as art

__all__ = ["EVALUATIONS_DIR", "EvaluationError", "evaluate_run", "evaluation_files", "list_evaluations"]

EVALUATIONS_DIR = "evaluations"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
Log = Callable[[str], None]


class EvaluationError(UserError):
    """The evaluation cannot run as asked; the message says why and what to do."""


def _load_predictor(run_dir: Path, registry: PluginRegistry, device: str) -> Predictor:
    if not run_dir.is_dir():
        raise EvaluationError(f"run folder {run_dir} does not exist")
    path = run_dir / art.BEST_PT
    if not path.is_file():
        raise EvaluationError(f"run folder {run_dir} has no {art.BEST_PT}: the run never finished an epoch; "
                              "train it (or resume it) first")
    try:
        return Predictor.from_checkpoint(path, registry, device)
    except ValueError as exc:  # a CheckpointError, or a device this machine lacks
        raise EvaluationError(f"cannot load the model: {exc}") from None


def build_dataset(registry: PluginRegistry, dataset: str, data_dir: str | Path | None,
                   params: dict[str, Any] | None) -> ImageDataset:
    try:
        spec = registry.dataset(dataset)
        root = check_data_dir(dataset, spec.needs_data_dir, data_dir)
        ds = spec.build(params or {}, root=str(root) if root else None)
        ds.check_usable()
    except UserError as exc:  # an unknown dataset, bad parameters, a missing or unusable folder
        raise EvaluationError(str(exc)) from None
    return ds


def label_map(ds: ImageDataset, classes: Sequence[str]) -> list[int]:
    """The model's class index of each dataset class; refuses classes the model does not know."""
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise EvaluationError(f"the data has class(es) {', '.join(unknown)} that the model does not know; the "
                              f"model was trained on {', '.join(classes)}. Evaluate on a folder with those "
                              "classes (a subset is fine)")
    return [list(classes).index(c) for c in ds.classes]


def _indices(ds: ImageDataset, run_dir: Path, part: str | None) -> list[int]:
    if not part:
        return list(range(len(ds)))
    if part not in PARTS:
        raise EvaluationError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    path = run_dir / art.SPLIT_JSON
    if not path.is_file():
        raise EvaluationError(f"run folder {run_dir} has no {art.SPLIT_JSON}; evaluate the whole folder instead")
    try:
        return Split.load(path, ds).part(part)
    except DatasetError as exc:
        raise EvaluationError(f"{exc}; evaluate the whole folder (no part) instead") from None


def _explainers(registry: PluginRegistry, names: Sequence[str] | None) -> list[str]:
    known = sorted(registry.explainers)
    if names is None:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EvaluationError(f"unknown explainer(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return list(names)


def _spread(n: int, cap: int | None) -> set[int]:
    """Positions of the images an explainer maps: all, or ``cap`` of them spread evenly."""
    if cap is None or cap >= n:
        return set(range(n))
    if cap < 0:
        raise EvaluationError(f"max_maps must be at least 0, got {cap}")
    return {int(p) for p in np.linspace(0, n - 1, cap).round()} if cap else set()


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None, dataset: str | None = None, *,
                 registry: PluginRegistry, part: str | None = None,
                 explainers: Sequence[str] | None = None, dataset_params: dict[str, Any] | None = None,
                 max_maps: int | Mapping[str, int] | None = None, batch_size: int = 16, device: str = "cpu",
                 out_dir: str | Path | None = None, log: Log = lambda _m: None) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on ``dataset`` read from ``data_dir``; write and return the report.

    ``dataset`` defaults to the one the model was trained on; for that same
    dataset the run's own dataset parameters are used unless
    ``dataset_params`` are given. ``explainers``: the explainers that map (``None``: every registered one; an
    empty list: none, classification only). ``max_maps`` caps how many images an
    explainer maps (an int for all, or ``{name: n}``): Score-CAM needs one
    forward pass per feature channel, tens of seconds per image on a CPU. The capped
    images are spread evenly over the evaluation order; every image is still
    classified. Raises :class:`EvaluationError` for bad input.
    """
    run_dir = Path(run_dir).expanduser()
    predictor = _load_predictor(run_dir, registry, device)
    meta = predictor.checkpoint_meta
    dataset = dataset or meta.dataset or ""
    trained = trained_sources(meta, run_dir)
    if len(trained) > 1 and dataset == meta.dataset:  # the run's own sites, from the folders it trained on
        try:
            _, ds = open_sources(registry, trained)
        except UserError as exc:
            raise EvaluationError(f"{exc}; evaluate one dataset of the run at a time (--dataset NAME)") from None
        data_dir = None
    else:
        if dataset_params is None and dataset == meta.dataset:
            dataset_params = predictor.dataset_params
        ds = build_dataset(registry, dataset, data_dir, dataset_params)
    to_model = label_map(ds, meta.classes)
    indices = _indices(ds, run_dir, part)
    if not indices:
        raise EvaluationError("no images to evaluate")
    names = _explainers(registry, explainers)
    mapped = {n: _spread(len(indices), max_maps.get(n) if isinstance(max_maps, Mapping) else max_maps)
              for n in names}
    log(f"evaluating {run_dir.name} on {len(indices)} {dataset} images ({part or 'whole folder'}); "
        f"explainers {', '.join(names)}")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    probs: list[np.ndarray] = []
    flagged: list[bool] = []
    loc: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    shortcuts: dict[str, list[ShortcutScore]] = {n: [] for n in names}
    examples: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]] = {n: [] for n in names}
    skipped: dict[str, str] = {}
    outlines = OutlineTally(predictor.lesion_threshold) if predictor.segments else None
    for start_i in range(0, len(indices), batch_size):
        chunk = indices[start_i:start_i + batch_size]
        try:
            images = [ds.load_image(i) for i in chunk]
            masks = [ds.load_mask(i) for i in chunk]
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from None
        preds = predictor.predict_batch(images, explainer=None)
        for i, mask, pred in zip(chunk, masks, preds, strict=True):
            p = np.array([pred.probabilities[c] for c in meta.classes])
            probs.append(p)
            flagged.append(bool(pred.ood and pred.ood.get("out_of_distribution")))
            site, device_name = ds.site_of(i)
            rows.append({"key": ds.samples[i].key, "true": meta.classes[to_model[ds.samples[i].label]],
                         "pred": pred.label, "probabilities": pred.probabilities,
                         "has_lesion": bool(mask is not None and mask.any()), "site": site, "device": device_name,
                         "group": ds.samples[i].group, "out_of_distribution": flagged[-1],
                         "suspicious": None if pred.operating is None else pred.operating["suspicious"]})
            if outlines is not None and pred.lesion_map is not None:
                outlines.add(ds.samples[i].key, pred.lesion_map, pred.lesion is not None, mask,
                             pred.lesion is not None and not pred.lesion.low_confidence)
        marks = [detect_marks(img) for img in images]
        for name in names:
            pick = [k for k in range(len(chunk)) if start_i + k in mapped[name]]
            if not pick or name in skipped:
                continue
            try:
                maps = predictor.predict_batch([images[k] for k in pick], explainer=name)
            except PluginFailure as exc:  # a broken explainer must not cost the whole report
                skipped[name] = str(exc)
                log(f"  skipping explainer {name}: {exc}")
                continue
            for k, pred in zip(pick, maps, strict=True):
                i, image, mask, mk = chunk[k], images[k], masks[k], marks[k]
                lesion = mask if mask is not None and mask.any() and mask.shape == image.shape[:2] else None
                if lesion is not None:
                    loc[name].append({"key": ds.samples[i].key, **localisation(pred.heatmap, lesion).to_dict()})
                shortcuts[name].append(shortcut_score(pred.heatmap, mk, lesion))
                if lesion is not None and len(examples[name]) < 6:
                    examples[name].append((image, pred.heatmap, lesion, mk))
        log(f"  {min(start_i + batch_size, len(indices))}/{len(indices)} images "
            f"({time.perf_counter() - start:.0f} s)")
    y = [meta.classes.index(r["true"]) for r in rows]
    classification = classification_metrics(y, np.stack(probs), meta.classes)
    # The Predictor answers calibrated probabilities; the temperature's inverse gives the raw ones back.
    temperature = predictor.temperature or 1.0
    raw = apply_temperature(np.stack(probs), 1.0 / temperature)
    calibration = calibration_summary(raw, np.asarray(y), temperature)
    point = predictor.operating_point
    sites = per_site(y, np.stack(probs), meta.classes, [r["site"] for r in rows], [r["group"] for r in rows],
                     [r["device"] for r in rows], flagged=flagged,
                     threshold=None if point is None else point["threshold"])
    report = {
        "version": 1, "run_dir": str(run_dir), "run_id": meta.run_id, "backbone": meta.backbone,
        "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "part": part,
        "classes": list(meta.classes), "data_classes": list(ds.classes), "target": "predicted class",
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": time.perf_counter() - start,
        "classification": classification,
        "calibration": calibration,
        "operating_point": point,
        "sites": sites,
        "external": is_external(trained, dataset, data_dir),
        "localisation": {n: _localisation_summary(loc[n]) for n in names},
        "segmentation": None if outlines is None else outlines.summary(),
        "mapped_images": {n: len(mapped[n]) for n in names},
        "skipped": skipped,
        "shortcuts": {n: summarise_shortcuts(shortcuts[n]) for n in names},
        "predictions": rows,
        "localisation_per_image": loc,
        "segmentation_per_image": None if outlines is None else {"lesions": outlines.lesions,
                                                                  "normals": outlines.normals},
        "shortcuts_per_image": {n: [s.to_dict() for s in shortcuts[n]] for n in names},
    }
    folder = Path(out_dir) if out_dir else _new_folder(run_dir, dataset, part)
    report["folder"] = str(folder)
    write_report(folder, report, examples)
    log(f"report written to {folder}")
    return report


def trained_sources(meta: Any, run_dir: Path) -> list[Source]:
    """The datasets a model was trained on: from its checkpoint, else its run folder's ``params.json``, else the
    checkpoint's one dataset."""
    listed = meta.extra.get("datasets")
    if not listed:
        listed = (art.read_json(run_dir, art.PARAMS_JSON) or {}).get("datasets")
    if listed:
        return [Source.from_dict(d) for d in listed]
    return [Source(meta.dataset or "", None, dict(meta.extra.get("dataset_params") or {}))]


def is_external(trained: Sequence[Source], dataset: str, data_dir: str | Path | None) -> bool:
    """Whether evaluating ``dataset`` from ``data_dir`` is an external validation: a dataset the model never
    trained on, or its dataset read from another folder (another site's images in the same layout)."""
    same = [s for s in trained if s.dataset == dataset]
    if not same:
        return True
    if data_dir is None:
        return False
    here = Path(data_dir).expanduser().resolve()
    return all(s.data_dir is not None and Path(s.data_dir).expanduser().resolve() != here for s in same)


def _localisation_summary(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the lesions: the pointing hit rate, energy share and IoU, and their common chance level."""
    return {"n": len(items),
            "pointing": _mean([float(r["pointing_hit"]) for r in items]),
            "energy": _mean([r["energy"] for r in items]),
            "iou": _mean([r["iou"] for r in items]),
            "chance": _mean([r["pointing_chance"] for r in items]),
            "iou_threshold": 0.5}


def _new_folder(run_dir: Path, dataset: str, part: str | None) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = run_dir / EVALUATIONS_DIR / f"{stamp}_{dataset}{'_' + part if part else ''}"
    folder, n = base, 1
    while folder.exists():  # two evaluations within a second
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def list_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation reports of a run, newest first: ``{"name", "path", "markdown", "pngs", "summary"}``."""
    root = Path(run_dir) / EVALUATIONS_DIR
    out = []
    # report.md is written last: its time orders the reports (folder names have one-second stamps).
    done = [p for p in root.glob(f"*/{REPORT_MD}") if p.is_file()] if root.is_dir() else []
    for md in sorted(done, key=lambda p: (p.stat().st_mtime_ns, p.parent.name), reverse=True):
        folder = md.parent
        try:
            summary = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
            summary = {k: summary.get(k) for k in ("dataset", "part", "data_dir", "created_at")}
        except (OSError, ValueError):
            summary = {}
        out.append({"name": folder.name, "path": folder, "markdown": md.read_text(encoding="utf-8"),
                    "pngs": sorted(p.name for p in folder.glob("*.png")), "summary": summary})
    return out


def evaluation_files(run_dir: str | Path) -> list[str]:
    """Every report file as ``evaluations/<folder>/<file>`` (what the artifact route may serve)."""
    root = Path(run_dir) / EVALUATIONS_DIR
    if not root.is_dir():
        return []
    return sorted(f"{EVALUATIONS_DIR}/{d.name}/{f.name}" for d in root.iterdir() if d.is_dir()
                  for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
