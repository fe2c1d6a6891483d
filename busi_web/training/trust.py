"""At the end of a run: the temperature, fitted on the validation part, and the out-of-distribution reference,
fitted on the training part with its threshold on the validation part. The test part only reports how both do.
(The numbers; :class:`~busi_web.training.run.TrainingRun` saves them into the checkpoint and the run folder.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from busi_web.explain.base import resolve_layer
from busi_web.model.calibration import apply_temperature, calibration_summary, fit_temperature
from busi_web.model.ood import OodReference, loader_features
from busi_web.model.operating_point import fit_operating_point, positive_index

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def fit_trust(model: nn.Module, layer: str, device: torch.device, parts: Mapping[str, Batches],
              val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
              ) -> tuple[dict[str, Any], OodReference, dict[str, Any], np.ndarray]:
    """``(calibration, reference, ood report, each test image's out-of-distribution verdict)``.

    ``parts`` holds the ``train``, ``val`` and ``test`` batches (evaluation preprocessing); ``val`` and
    ``test`` are each part's ``(labels, probabilities)`` from the model's own predictions.
    """
    temperature = fit_temperature(val[1], val[0])
    calibration = {"method": "temperature scaling, fitted on the validation part", "temperature": temperature,
                   "val": calibration_summary(val[1], val[0], temperature),
                   "test": calibration_summary(test[1], test[0], temperature)}
    module = resolve_layer(model, layer)
    reference = OodReference.fit(layer, loader_features(model, module, parts["train"], device),
                                 loader_features(model, module, parts["val"], device))
    test_scores = reference.scores(loader_features(model, module, parts["test"], device))
    ood = {"layer": layer, "threshold": reference.threshold, "quantile": reference.quantile,
           "components": int(len(reference.variances)),
           "test_flagged_share": float((test_scores > reference.threshold).mean()) if len(test_scores) else None}
    return calibration, reference, ood, np.asarray(test_scores > reference.threshold, dtype=bool)


def operating_point(classes: Sequence[str], val: tuple[np.ndarray, np.ndarray], temperature: float,
                    sensitivity: float) -> dict[str, Any] | None:
    """The threshold on calibrated ``p(malignant)`` that keeps ``sensitivity`` on the validation part
    (:mod:`busi_web.model.operating_point`); ``None`` for a model without a malignant class, or a validation
    part without a malignant image."""
    m = positive_index(classes)
    if m is None:
        return None
    calibrated = apply_temperature(val[1], temperature)
    return fit_operating_point(calibrated[:, m], np.asarray(val[0]) == m, sensitivity)


def checkpoint_extras(calibration: dict[str, Any], reference: OodReference,
                      point: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the checkpoint's metadata keeps of them (the Predictor reads ``temperature``, ``ood`` and
    ``operating_point``)."""
    return {"temperature": calibration["temperature"], "ood": reference.to_meta(), "operating_point": point,
            "calibration": {"temperature": calibration["temperature"],
                            "ece_val_before": calibration["val"]["ece_before"],
                            "ece_val_after": calibration["val"]["ece_after"],
                            "ece_test_before": calibration["test"]["ece_before"],
                            "ece_test_after": calibration["test"]["ece_after"]}}
