"""Two explainers that return plain maps ``(B, h, w)``: busi-web adds the probabilities and scales the maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


class EigenCAM:
    """The first principal component of the target layer's activations, per image."""

    def __init__(self, center: bool = True):
        self.center = center

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor | None, target_layer: str) -> Tensor:
        seen: list[Tensor] = []
        handle = _layer(model, target_layer).register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        try:
            with torch.no_grad():
                model(images)
        finally:
            handle.remove()
        acts = seen[-1].float()  # (B, C, h, w)
        b, c, h, w = acts.shape
        flat = acts.reshape(b, c, h * w).transpose(1, 2)  # (B, h*w, C)
        if self.center:
            flat = flat - flat.mean(dim=1, keepdim=True)
        _u, _s, v = torch.linalg.svd(flat, full_matrices=False)
        maps = (flat @ v[:, 0, :, None]).reshape(b, h, w)
        # The component's sign is arbitrary: make the larger part positive.
        sign = torch.where(maps.flatten(1).sum(1) < 0, -1.0, 1.0)[:, None, None]
        return maps * sign


class GradientTimesInput:
    """The target class score's gradient with respect to the input, times the input, summed over channels."""

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor | None, target_layer: str) -> Tensor:
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            chosen = logits.argmax(dim=1) if targets is None else targets
            score = logits.gather(1, chosen[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
        maps = (grad * x.detach()).sum(dim=1)
        return maps.abs() if self.absolute else maps
