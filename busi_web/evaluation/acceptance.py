"""The acceptance set of a modality: choosing its images, and scoring a model on exactly those images.

An admin defines it once per modality (:func:`choose_images`):

* ``source="folder"``: every image of a folder, read by a dataset plugin
  (e.g. images the hospital labelled on its own scanners);
* ``source="share"``: a share of a dataset, taken by the duplicate-aware
  splitter (its "test" part with no validation part), so a near-duplicate
  group is never cut in two.

It is recorded as fingerprints (:mod:`busi_web.data.fingerprints`). Every
candidate model is scored on the same images (:func:`score_model`), checked
against those fingerprints first: a changed or missing file is refused, not
silently scored on something else. Probabilities are the model's calibrated
ones. Every metric comes with a bootstrap 95% confidence interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busi_web.data.fingerprints import count_overlap, fingerprints, part_fingerprints, pixel_hash
from busi_web.data.sites import open_sources, sources_of
from busi_web.data.splits import Split, split_dataset
from busi_web.errors import UserError
from busi_web.evaluation.evaluate import EvaluationError, build_dataset
from busi_web.model.calibration import expected_calibration_error
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry
from busi_web.store import JobStore
from busi_web.store import run_files as art
from busi_web.store.acceptance import SOURCES

__all__ = ["choose_images", "score_model", "score_and_keep", "gate_metrics", "bootstrap_intervals", "SOURCES"]

BOOTSTRAP = 1000
BATCH = 16


def choose_images(registry: PluginRegistry, dataset: str, data_dir: str | None, *, source: str,
                  dataset_params: dict[str, Any] | None = None, share: float | None = None, seed: int = 0
                  ) -> tuple[list[dict[str, Any]], str]:
    """The fingerprints of an acceptance set's images, and the dataset's modality.

    Raises :class:`EvaluationError` (400) for an unknown source, a share outside (0, 0.5] or unusable data.
    """
    if source not in SOURCES:
        raise EvaluationError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    ds = build_dataset(registry, dataset, data_dir, dataset_params)
    if source == "share":
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 0.5:
            raise EvaluationError(f"share must be a fraction above 0 and at most 0.5 of the dataset, got {share!r}")
        indices = split_dataset(ds, val_frac=0.0, test_frac=float(share), seed=int(seed)).test
    else:
        indices = list(range(len(ds)))
    if not indices:
        raise EvaluationError("the acceptance set would be empty; take a larger share or a folder with images")
    modality = getattr(ds, "modality", None) or registry.dataset(dataset).modality
    return fingerprints(ds, indices), modality


def score_model(predictor: Predictor, registry: PluginRegistry, accepted: dict[str, Any]) -> dict[str, Any]:
    """Score ``predictor`` on the acceptance set ``accepted`` (a store row with its items): the gate's metrics.

    Raises :class:`EvaluationError` when the model's modality or classes do not fit the set, or when an image of
    the set is missing or changed since the set was defined (409).
    """
    meta = predictor.checkpoint_meta
    if meta.modality != accepted["modality"]:
        raise EvaluationError(f"the model is a {meta.modality} model; the acceptance set is for "
                              f"{accepted['modality']}")
    ds = build_dataset(registry, accepted["dataset"], accepted.get("data_dir"), accepted.get("dataset_params"))
    where = {s.key: i for i, s in enumerate(ds.samples)}
    folder = accepted.get("data_dir") or "the dataset"
    # A model of fewer classes (benign and malignant only) is scored on the images of its classes; the others are
    # counted as left out, and a floor on a class it lacks stays "not measured".
    items = [it for it in accepted["items"] if it["label"] in meta.classes]
    skipped = sorted({it["label"] for it in accepted["items"]} - set(meta.classes))
    if not items:
        raise EvaluationError(f"the model's classes ({', '.join(meta.classes)}) share no class with acceptance set "
                              f"{accepted['id']} ({', '.join(skipped)}); it cannot be scored there", 409)
    indices = []
    for item in items:
        i = where.get(item["key"])
        if i is None:
            raise UserError(f"acceptance image {item['key']!r} is no longer in {folder}; restore it or define a new "
                            "acceptance set", 409)
        indices.append(i)
    y, rows = [], []
    for start in range(0, len(indices), BATCH):
        chunk = indices[start:start + BATCH]
        images = [ds.load_image(i) for i in chunk]
        for img, item in zip(images, items[start:start + BATCH], strict=True):
            if pixel_hash(img) != item["sha256"]:
                raise UserError(f"acceptance image {item['key']!r} changed since the set was defined (its pixels "
                                "differ); restore it or define a new acceptance set", 409)
            y.append(meta.classes.index(item["label"]))
        for pred in predictor.predict_batch(images, explainer=None):
            rows.append([pred.probabilities[c] for c in meta.classes])
    metrics = gate_metrics(np.asarray(y), np.asarray(rows), list(meta.classes))
    if skipped:
        metrics["left_out"] = {"classes": skipped, "images": len(accepted["items"]) - len(items),
                               "why": f"the model has no class {', '.join(skipped)}"}
    return metrics


def training_overlap(run: dict[str, Any], registry: PluginRegistry, items: Sequence[dict[str, Any]]
                     ) -> dict[str, int]:
    """How many acceptance ``items`` run ``run`` trained or validated on (``{"identical", "near_duplicates",
    "images"}``), by image fingerprints, not file names: from the run's ``fingerprints.json``, else from its data
    and ``split.json``. Raises :class:`EvaluationError` (409) when neither can be read."""
    folder = Path(run["run_dir"])
    kept = art.read_json(folder, art.FINGERPRINTS_JSON)
    if kept is None:
        try:
            _, ds = open_sources(registry, sources_of(run))
            split = Split.load(folder / art.SPLIT_JSON, ds)
        except (UserError, OSError, ValueError) as exc:
            raise EvaluationError(f"run {run['id']}'s training images cannot be read to check that none of them is "
                                  f"in the acceptance set ({exc}); restore its data folder, or score another run",
                                  409) from None
        kept = part_fingerprints(ds, {"train": split.train, "val": split.val})
    exact, near = count_overlap([fp for part in ("train", "val") for fp in kept.get(part, [])], items)
    return {"identical": exact, "near_duplicates": near, "images": len(items)}


def score_and_keep(store: JobStore, predictor: Predictor, registry: PluginRegistry, run: dict[str, Any],
                   accepted: dict[str, Any], by: str | None) -> dict[str, Any]:
    """Score run ``run``'s model on ``accepted`` and keep the result: in the store (what the gate reads) and as
    ``acceptance.json`` in the run folder. Returns the metrics.

    Refused (409, nothing kept) when the run trained or validated on images of the set: a score on its own
    training images would flatter it and could carry it through the gate."""
    found = training_overlap(run, registry, accepted["items"])
    if found["identical"] or found["near_duplicates"]:
        raise EvaluationError(
            f"run {run['id']} trained or validated on {found['identical'] + found['near_duplicates']} of the "
            f"{found['images']} images of {accepted['modality']} acceptance set {accepted['id']} "
            f"({found['identical']} identical, {found['near_duplicates']} near-duplicates): a score there would "
            "flatter it. Score a model trained after the set was defined (training leaves the set's images out), "
            "or define the acceptance set from data no candidate trained on", 409,
            {"overlap": f"{found['identical']} identical, {found['near_duplicates']} near-duplicates"})
    metrics = score_model(predictor, registry, accepted)
    store.record_acceptance(run["id"], accepted["id"], metrics, by=by)
    art.write_json(Path(run["run_dir"]) / art.ACCEPTANCE_JSON, {"set_id": accepted["id"], **metrics})
    return metrics


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their mean rank."""
    _, where, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[where]


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """One-vs-rest AUC by ranks (ties share their mean rank): the Mann-Whitney U over the pairs."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _point(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """The gate's metrics of one sample, computed directly (the bootstrap runs it a thousand times): they agree
    with :func:`~busi_web.evaluation.metrics.classification_metrics` (scikit-learn), which a test checks."""
    k = len(classes)
    pred = probs.argmax(axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    true, called, hit = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    recall = np.divide(hit, true, out=np.zeros(k), where=true > 0)
    precision = np.divide(hit, called, out=np.zeros(k), where=called > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    aucs = [a for a in (_auc(probs[:, c], y == c) for c in range(k)) if a is not None]
    present = true > 0  # macro-F1 over the classes the set has: an absent class is not an F1 of 0
    out: dict[str, float | None] = {"accuracy": float(hit.sum() / len(y)), "macro_f1": float(f1[present].mean()),
                                    "auc": float(np.mean(aucs)) if aucs else None,
                                    "ece": expected_calibration_error(probs, y)}
    for c, name in enumerate(classes):
        out[f"sensitivity_{name}"] = float(recall[c]) if true[c] > 0 else None
    return out


def bootstrap_intervals(y: np.ndarray, probs: np.ndarray, classes: list[str], n: int = BOOTSTRAP,
                        seed: int = 0) -> dict[str, list[float] | None]:
    """Percentile bootstrap 95% intervals of every metric of :func:`gate_metrics` (images resampled with
    replacement ``n`` times; a metric undefined on a resample is left out of that metric's interval)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(int(n)):
        pick = rng.integers(0, len(y), len(y))
        for name, value in _point(y[pick], probs[pick], classes).items():
            if value is not None:
                draws.setdefault(name, []).append(value)
    keys = _point(y, probs, classes).keys()
    return {k: [float(np.percentile(draws[k], 2.5)), float(np.percentile(draws[k], 97.5))]
            if len(draws.get(k, [])) >= 10 else None for k in keys}


def gate_metrics(y: Sequence[int] | np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, AUC, ECE and each class's sensitivity, with ``ci`` (bootstrap 95%), ``n`` and the
    confusion matrix."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        raise EvaluationError("no images to score")
    k = len(classes)
    matrix = np.bincount(y * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k)
    return {**_point(y, probs, classes), "n": int(len(y)), "classes": classes,
            "confusion_matrix": matrix.tolist(), "ci": bootstrap_intervals(y, probs, classes)}
