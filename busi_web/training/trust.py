"""At the end of a run: the temperature, fitted on the validation part, and the out-of-distribution reference,
fitted on the training part with its threshold on the validation part. The test part only reports how both do.
(The numbers; :class:`~busi_web.training.run.TrainingRun` saves them into the checkpoint and the run folder.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from busi_web.explain.base import resolve_layer
from busi_web.model.calibration import calibration_summary, fit_temperature
from busi_web.model.ood import OodReference, loader_features

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def fit_trust(model: nn.Module, layer: str, device: torch.device, parts: Mapping[str, Batches],
              val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
              ) -> tuple[dict[str, Any], OodReference, dict[str, Any]]:
    """``(calibration, reference, ood report)``.

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
    return calibration, reference, ood


def checkpoint_extras(calibration: dict[str, Any], reference: OodReference) -> dict[str, Any]:
    """What the checkpoint's metadata keeps of them (the Predictor reads ``temperature`` and ``ood``)."""
    return {"temperature": calibration["temperature"], "ood": reference.to_meta(),
            "calibration": {"temperature": calibration["temperature"],
                            "ece_val_before": calibration["val"]["ece_before"],
                            "ece_val_after": calibration["val"]["ece_after"],
                            "ece_test_before": calibration["test"]["ece_before"],
                            "ece_test_after": calibration["test"]["ece_after"]}}
