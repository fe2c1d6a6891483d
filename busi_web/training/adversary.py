"""A site adversary: features trained so that the site an image came from cannot be read from them.

With several datasets, the look of a site (its scanners, its settings, its
post-processing) is information a model can use. When a class was imaged at
one site only (BUSI's normal images), the site becomes evidence for that
class. :class:`SiteAdversary` puts a small head on the explained layer's
pooled features that learns to tell the sites apart, and reverses its
gradient into the backbone (Ganin and Lempitsky's gradient reversal), so the
features are trained to carry as little of the site as they can.

It is shown only the images whose class every site has (benign and
malignant for BUSI with BUS-BRA): asked to hide the site of all images, the
features would have to hide "normal" too, since only one site has it. Its
strength ramps up from 0 over the run (``2 / (1 + exp(-10 p)) - 1`` at
progress ``p``), so the features first learn the classes. The head is a
training aid only: it is not part of the saved model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from busi_web.explain.base import resolve_layer
from busi_web.training.aids import LayerHeads


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-strength`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """``x`` unchanged, but the gradient that flows back through it is multiplied by ``-strength``."""
    return _Reverse.apply(x, float(strength))


class SiteAdversary(LayerHeads):
    """The site head on ``layer``'s pooled output (see the module docstring).

    ``shared``: ``(K,)`` booleans, the classes every site has (the images it
    is shown). ``weight``: the adversarial loss's full strength. Call
    :meth:`set_progress` at the start of each epoch, run forward passes inside
    :meth:`capture`, and add :meth:`loss` to the classification loss.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, sample: torch.Tensor, sites: int,
                 shared: torch.Tensor, weight: float):
        if weight <= 0:
            raise ValueError(f"the site adversary's weight must be positive, got {weight}")
        if sites < 2:
            raise ValueError("a site adversary needs at least two sites")
        self.shared = torch.as_tensor(shared, dtype=torch.bool)
        if not bool(self.shared.any()):
            raise ValueError("the sites share no class: a site adversary has no images it may be shown")
        self.weight, self.strength = float(weight), 0.0
        super().__init__(model, [layer], sample, "a site adversary")
        channels = self._probe()[0].shape[1]
        self.heads = nn.Sequential(nn.Linear(channels, 64), nn.ReLU(), nn.Linear(64, sites))

    def to(self, device: torch.device) -> SiteAdversary:
        super().to(device)
        self.shared = self.shared.to(device)
        return self

    def set_progress(self, progress: float) -> None:
        """The share of the run done (0 to 1): the strength becomes ``weight * (2 / (1 + exp(-10 p)) - 1)``."""
        p = min(1.0, max(0.0, float(progress)))
        self.strength = self.weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)

    def loss(self, y: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        """The adversarial loss of the last forward pass: cross-entropy of the head's site guess over the images
        whose class every site has. Its gradient trains the head to find the site and, reversed, the features
        to hide it."""
        pooled = self._take()[0].float().mean((2, 3))
        shown = self.shared[y]
        if not bool(shown.any()):
            return pooled.sum() * 0.0  # no shared-class image in this batch; keeps the graph whole
        logits = self.heads(reverse_gradient(pooled[shown], self.strength))
        return nn.functional.cross_entropy(logits, site[shown])


def site_adversary(model: nn.Module, layer: str, site_table: torch.Tensor, size: int, channels: int,
                   weight: float) -> SiteAdversary:
    """The adversary of a run: on ``model``'s explained ``layer`` (a dotted path), for the sites of
    ``site_table`` (``(S, K)`` booleans, the classes each site has; see
    :func:`busi_web.training.site_loss.site_class_table`), shown the classes they all have."""
    return SiteAdversary(model, resolve_layer(model, layer), torch.zeros(1, channels, size, size),
                         site_table.shape[0], site_table.all(0), weight)
