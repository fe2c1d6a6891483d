"""Training aids: a running average of the weights, lesion guidance from the masks, and the outline's loss.

The first two are not part of the saved model's architecture: the average
replaces the weights that are validated and saved, and lesion guidance only
shapes the features during training (its heads are dropped). The third,
:func:`segmentation_loss`, trains a segmenting backbone's own lesion map.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's weights, kept in a frozen copy of the model.

    After every optimiser step each floating-point parameter and buffer moves
    towards the training model's by ``1 - d``. The decay ``d`` warms up as
    ``min(decay, (1 + n) / (10 + n))`` over the first ``n`` updates, so the
    randomly initialised start is forgotten quickly. Integer buffers (batch
    counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be between 0 and 1, got {decay}")
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Optimisers and load_state_dict update tensors in place, so the pairs are made once, not every step.
        theirs = model.state_dict()
        pairs = [(mine, theirs[key]) for key, mine in self.model.state_dict().items()]
        self._floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """One step towards the current weights of the model the average was made from."""
        self.updates += 1
        weight = 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in self._floats:
            mine.lerp_(theirs, weight)
        for mine, theirs in self._others:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class LayerHeads:
    """A training aid's plumbing: heads (:attr:`heads`, an ``nn.Module`` a subclass sets) that read the outputs of
    some of a model's ``layers``, kept by forward hooks while :meth:`capture` is open.

    The constructor runs one dry forward of ``sample`` and returns nothing; :meth:`_probe` gives each layer's
    output of it (for the channel counts). The heads are not part of the saved model: only their
    :meth:`state_dict` is kept with a run's training state.
    """

    heads: nn.Module

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module], sample: torch.Tensor, what: str):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError(f"{what} needs at least one layer")
        self._features: list[torch.Tensor | None] = [None] * len(self.layers)
        with self.capture(), torch.no_grad():  # one dry forward tells each layer's channel count
            was_training = model.training
            model.eval()
            model(sample)
            model.train(was_training)
            self._probed = self._take()
        for layer, f in zip(self.layers, self._probed, strict=True):
            if f.dim() != 4:
                raise ValueError(f"{what} needs layers with (N, C, H, W) output; "
                                 f"{type(layer).__name__} gives shape {tuple(f.shape)}")

    def _probe(self) -> list[torch.Tensor]:
        """Each layer's output of the dry forward (once: it is not kept)."""
        probed, self._probed = self._probed, []
        return probed

    def to(self, device: torch.device) -> LayerHeads:
        self.heads.to(device)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.heads.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu") for k, v in self.heads.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.heads.load_state_dict(state)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """While inside, every forward of the model keeps the layers' outputs for the loss."""
        def keeper(i: int) -> Callable[..., None]:
            def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
                self._features[i] = output
            return keep
        handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._features = [None] * len(self.layers)

    def _take(self) -> list[torch.Tensor]:
        feats, self._features = self._features, [None] * len(self.layers)
        if any(f is None for f in feats):
            raise RuntimeError("a layer read by a training aid produced no output in the last forward pass")
        return feats  # type: ignore[return-value]


class LesionGuide(LayerHeads):
    """Lesion guidance: an auxiliary loss that asks the feature maps of ``layers`` to say where the lesion is.

    For each layer a 1x1 convolution turns its features into one logit per
    cell; the target is the share of each cell that the lesion mask covers
    (the augmented mask, average-pooled to that feature map's size). The loss
    is binary cross-entropy over the cells of the images that have a mask (a
    normal image's empty mask says "no lesion anywhere"), averaged over the
    layers, times ``weight``, and added to the classification loss. The first
    layer is the explained one; earlier, finer layers (deep supervision) get
    the lesion's outline at a higher resolution. The convolutions are only a
    training aid: they are not part of the saved model, but the features they
    shape are, so the classifier and its class activation maps lean on the
    lesion rather than on the rest of the image.
    """

    def __init__(self, model: nn.Module, layers: nn.Module | Sequence[nn.Module], sample: torch.Tensor,
                 weight: float):
        if weight <= 0:
            raise ValueError(f"the lesion loss weight must be positive, got {weight}")
        self.weight = float(weight)
        super().__init__(model, [layers] if isinstance(layers, nn.Module) else list(layers), sample,
                         "lesion guidance")
        self.heads = nn.ModuleList(nn.Conv2d(f.shape[1], 1, kernel_size=1) for f in self._probe())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) == {"weight", "bias"}:  # saved by the one-layer guide of earlier versions
            state = {f"0.{k}": v for k, v in state.items()}
        self.heads.load_state_dict(state)

    def loss(self, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """The weighted auxiliary loss of the last forward pass, for ``masks`` ``(N, H, W)`` in [0, 1]."""
        has = has_mask.float()
        total = masks.new_zeros((), dtype=torch.float32)
        for head, feats in zip(self.heads, self._take(), strict=True):
            logits = head(feats.float())
            target = nn.functional.adaptive_avg_pool2d(masks[:, None].float(), logits.shape[-2:])
            per_image = nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                       reduction="none").mean((1, 2, 3))
            total = total + (per_image * has).sum() / has.sum().clamp(min=1.0)
        return self.weight * total / len(self.heads)


def segmentation_loss(lesion_logits: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy of a lesion map ``(N, 1, h, w)`` against ``masks`` ``(N, H, W)``.

    The masks are area-averaged to the map's size (soft targets at the
    outline). Both terms are per image, averaged over the images that have a
    mask: a normal image's empty mask teaches "no lesion anywhere" (its Dice
    term, smoothed by 1, is 0 only for an empty map). Images without a mask
    file add nothing.
    """
    has = has_mask.float()
    if not bool(has.any()):
        return lesion_logits.sum() * 0.0  # keeps the graph (and DDP-style hooks) whole
    logits = lesion_logits.float()
    target = nn.functional.adaptive_avg_pool2d(masks[:, None].float(), logits.shape[-2:])
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1.0)
    return ((bce + dice) * has).sum() / has.sum()
