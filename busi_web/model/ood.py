"""Out-of-distribution warnings: is an input like the images the model was trained on?

The reference is the distribution of the model's own features: the target
layer's activations, averaged over space, of the training images (with the
evaluation preprocessing, no augmentation). It is modelled as a Gaussian
with a probabilistic-PCA covariance: the ``k`` strongest directions keep
their own variances, and every other direction shares one residual variance
(the mean of the rest, so the total variance is kept). The score of an input
is its Mahalanobis distance under that Gaussian, divided by the square root
of the feature count so that typical training images score about 1.

The threshold is a high quantile (the 95th percentile by default) of the
scores of the *validation* images, which the reference never saw: about one
in twenty images like the training data gets a warning, and anything farther
than that does. The 99th percentile of about a hundred validation images is
their one or two most unusual ones: over five BUSI splits it let 40% of
mammograms through, the 95th 4% (docs/trust.md). A mammogram sent to an ultrasound model, a photograph, a blank
frame or a real scan sent to a model trained on phantoms lands far outside.

The reference is stored in the checkpoint's metadata as plain lists (``k``
rows of the feature length), so checkpoints stay safe to load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["OodReference", "record_features", "first_batch", "loader_features", "DEFAULT_QUANTILE", "MAX_COMPONENTS"]

DEFAULT_QUANTILE = 0.95
MAX_COMPONENTS = 32


@dataclass
class OodReference:
    """The feature distribution of a model's training images and the warning threshold."""

    layer: str
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    variances: np.ndarray  # (k,)
    residual: float  # the variance of every other direction
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    @classmethod
    def fit(cls, layer: str, train: np.ndarray, val: np.ndarray, quantile: float = DEFAULT_QUANTILE,
            max_components: int = MAX_COMPONENTS) -> OodReference:
        """Fit on the training images' features ``(N, D)``; set the threshold on the validation images'."""
        x = np.asarray(train, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need the features of at least 2 training images as (N, D), got shape {x.shape}")
        if not 0.5 <= quantile < 1:
            raise ValueError(f"quantile must be between 0.5 and 1, got {quantile}")
        n, d = x.shape
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        eig = s ** 2 / (n - 1)
        k = max(1, min(int(max_components), n - 1, d - 1 if d > 1 else 1, int((eig > eig[0] * 1e-9).sum())))
        floor = max(float(eig[0]) * 1e-6, 1e-12)
        residual = max((float(eig.sum()) - float(eig[:k].sum())) / max(d - k, 1), floor)
        ref = cls(layer=layer, mean=mean, components=vt[:k], variances=np.maximum(eig[:k], floor),
                  residual=residual, threshold=float("inf"), quantile=float(quantile))
        val_scores = ref.scores(val)
        if len(val_scores) == 0:
            raise ValueError("need the features of at least one validation image to set the threshold")
        ref.threshold = float(np.quantile(val_scores, quantile))
        return ref

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distances of ``features (N, D)`` from the training images (about 1 for typical ones)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (N, {self.mean.shape[0]}), got shape {f.shape}")
        c = f - self.mean
        z = c @ self.components.T
        rest = np.maximum((c ** 2).sum(axis=1) - (z ** 2).sum(axis=1), 0.0)
        d2 = (z ** 2 / self.variances).sum(axis=1) + rest / self.residual
        return np.sqrt(d2 / self.mean.shape[0])

    def verdicts(self, features: np.ndarray) -> list[dict[str, Any]]:
        """Per image: ``{"score", "threshold", "out_of_distribution"}``."""
        return [{"score": round(float(s), 4), "threshold": round(self.threshold, 4),
                 "out_of_distribution": bool(s > self.threshold)} for s in self.scores(features)]

    def to_meta(self) -> dict[str, Any]:
        """Plain data for the checkpoint's metadata."""
        return {"layer": self.layer, "mean": self.mean.astype(np.float32).tolist(),
                "components": self.components.astype(np.float32).tolist(),
                "variances": self.variances.tolist(), "residual": self.residual, "threshold": self.threshold,
                "quantile": self.quantile}

    @classmethod
    def from_meta(cls, data: Any) -> OodReference | None:
        """The reference saved by :meth:`to_meta`, or ``None`` when ``data`` is absent or damaged."""
        if not isinstance(data, dict):
            return None
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            comps = np.asarray(data["components"], dtype=np.float64).reshape(-1, mean.shape[0])
            variances = np.asarray(data["variances"], dtype=np.float64)
            if len(variances) != len(comps) or (variances <= 0).any() or float(data["residual"]) <= 0:
                return None
            return cls(layer=str(data["layer"]), mean=mean, components=comps, variances=variances,
                       residual=float(data["residual"]), threshold=float(data["threshold"]),
                       quantile=float(data.get("quantile", DEFAULT_QUANTILE)))
        except (KeyError, TypeError, ValueError):
            return None


def _pooled(output: Any) -> Tensor | None:
    if not isinstance(output, Tensor):
        return None
    if output.ndim == 4:
        return output.detach().float().mean(dim=(2, 3)).cpu()
    if output.ndim == 2:
        return output.detach().float().cpu()
    return None


@contextmanager
def record_features(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Record ``layer``'s outputs, averaged over space, ``(B, C)`` per call, while the block runs.

    The caller owns the model for the duration (the Predictor's lock, or the trainer's own process): the hook
    does not tell threads apart. It is removed on the way out, always.
    """
    calls: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        pooled = _pooled(output)
        if pooled is not None:
            calls.append(pooled)

    with layer.register_forward_hook(hook):
        yield calls


def first_batch(calls: list[Tensor], batch: int) -> np.ndarray | None:
    """The first recorded call of ``batch`` images (later calls may be an explainer's extra forwards)."""
    for t in calls:
        if t.shape[0] == batch:
            return t.numpy()
    return None


@torch.no_grad()
def loader_features(model: nn.Module, layer: nn.Module, batches: Any, device: torch.device) -> np.ndarray:
    """Pooled features of ``layer`` over ``batches`` of ``(images, labels)``: ``(N, C)``."""
    model.eval()
    out = []
    with record_features(layer) as calls:
        for x, _y in batches:
            calls.clear()
            model(x.to(device))
            got = first_batch(calls, x.shape[0])
            if got is None:
                raise ValueError("the layer kept for out-of-distribution checks did not run on the images")
            out.append(got)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
