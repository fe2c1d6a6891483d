"""Fitting a trained model's operating point again, for another target sensitivity.

The trainer fits the operating point when a run ends, for its modality's
target sensitivity at that time (:mod:`busi_web.model.operating_point`).
When an administrator changes the target, or a model was trained before
operating points existed, :func:`refit_operating_point` fits it again the
same way: on the run's validation part, with the model's calibrated
probabilities, and writes it into ``best_model.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from busi_web.data.datasets import DatasetError
from busi_web.data.sites import open_sources
from busi_web.data.splits import Split
from busi_web.evaluation.evaluate import EvaluationError, trained_sources
from busi_web.model.checkpoint import read_checkpoint, save_checkpoint
from busi_web.model.operating_point import fit_operating_point, positive_index
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry
from busi_web.store import run_files as art


def refit_operating_point(run_dir: str | Path, registry: PluginRegistry, sensitivity: float,
                          batch_size: int = 32) -> dict[str, Any]:
    """Fit the threshold on p(malignant) that keeps ``sensitivity`` on the run's validation part, save it into
    the run's ``best_model.pt`` and return it. Raises :class:`EvaluationError` when the run cannot have one."""
    run_dir = Path(run_dir)
    path = run_dir / art.BEST_PT
    try:
        predictor = Predictor.from_checkpoint(path, registry)
    except ValueError as exc:
        raise EvaluationError(f"cannot load the model: {exc}") from None
    meta = predictor.checkpoint_meta
    m = positive_index(meta.classes)
    if m is None:
        raise EvaluationError(f"the model's classes ({', '.join(meta.classes)}) have no malignant class: it has no "
                              "operating point")
    try:
        _, ds = open_sources(registry, trained_sources(meta, run_dir))
        val = Split.load(run_dir / art.SPLIT_JSON, ds).val
    except (OSError, DatasetError, ValueError) as exc:
        raise EvaluationError(f"the run's validation images cannot be read ({exc}); the operating point is fitted "
                              "on them") from None
    to_model = [meta.classes.index(c) for c in ds.classes]
    p_malignant, positive = [], []
    for start in range(0, len(val), batch_size):
        chunk = val[start:start + batch_size]
        for i, pred in zip(chunk, predictor.predict_batch([ds.load_image(i) for i in chunk], explainer=None),
                           strict=True):
            p_malignant.append(pred.probabilities[meta.classes[m]])
            positive.append(to_model[ds.samples[i].label] == m)
    point = fit_operating_point(np.array(p_malignant), np.array(positive), sensitivity)
    if point is None:
        raise EvaluationError("the run's validation part has no malignant image to fit the threshold on")
    saved, state = read_checkpoint(path)
    saved.extra["operating_point"] = point
    model = predictor.model
    model.load_state_dict(state)
    save_checkpoint(path, model, saved, registry=registry)
    return point
