"""The CAM family: how each method turns the target layer's activations (and gradients) into a raw map.

Each class is a :class:`busi_web.explain.base.CamExplainer`; the base class runs the
one forward pass, captures ``A`` (the target layer's output, ``(B, C, h, w)``)
and ``dA`` (the gradient of the target class's logit with respect to ``A``),
and normalises the raw map (ReLU, bilinear upsampling, min-max). Notation
below: ``A_c`` is channel ``c``, sums over ``c`` are over channels and sums
over ``ij`` over the ``h x w`` positions.

=============  ==============================================================
``gradcam``    ``sum_c mean_ij(dA_c) * A_c`` (Selvaraju et al., 2017)
``gradcampp``  ``sum_c w_c * A_c`` with ``w_c = sum_ij relu(dA) * a_ij``,
               ``a = dA^2 / (2 dA^2 + sum_ij(A_c) dA^3 + eps)`` (Chattopadhay et al., 2018, eq. 19)
``cam``        ``sum_c W[k, c] * A_c``, ``W`` the final Linear (Zhou et al., 2016); needs
               global average pooling and that Linear right after the target layer
``layercam``   ``sum_c relu(dA_c) * A_c`` (Jiang et al., 2021)
``hirescam``   ``sum_c dA_c * A_c`` (Draelos & Carin, 2020)
``scorecam``   ``sum_c softmax_c(s_c) * A_c``, ``s_c`` the target logit for the
               input masked by ``A_c`` upsampled and min-max scaled (Wang et al., 2020)
=============  ==============================================================

The formulas, including Grad-CAM++'s ``eps = 1e-6`` and Score-CAM's mask
upsampling (bilinear with ``align_corners=True``, scaled by
``(m - min) / (max - min + 1e-8)``), follow the reference implementation
(pytorch-grad-cam 1.5), against which the tests check them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from busi_web.explain.base import CamExplainer, CamInputs

__all__ = ["GradCAM", "GradCAMPlusPlus", "CAM", "LayerCAM", "HiResCAM", "ScoreCAM", "METHODS"]

GRADCAMPP_EPS = 1e-6
SCORECAM_EPS = 1e-8


def _grads(inp: CamInputs) -> Tensor:
    if inp.gradients is None:  # only a subclass that forgot needs_gradients gets here
        raise RuntimeError("this method needs gradients; set needs_gradients = True")
    return inp.gradients


class GradCAM(CamExplainer):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    name = "gradcam"

    def raw_maps(self, inp: CamInputs) -> Tensor:
        weights = _grads(inp).mean(dim=(2, 3), keepdim=True)
        return (weights * inp.activations).sum(dim=1)


class GradCAMPlusPlus(CamExplainer):
    """Grad-CAM++: channel weights from positive gradients with per-pixel coefficients (eq. 19 of the paper)."""

    name = "gradcampp"

    def raw_maps(self, inp: CamInputs) -> Tensor:
        g = _grads(inp)
        g2 = g * g
        g3 = g2 * g
        sum_a = inp.activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + GRADCAMPP_EPS)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(g) * alpha).sum(dim=(2, 3), keepdim=True)
        return (weights * inp.activations).sum(dim=1)


class CAM(CamExplainer):
    """Class activation mapping: the final Linear layer's weights of the target class as channel weights.

    Needs no gradient. Valid only when the target layer's output goes through
    global average pooling straight into the final ``nn.Linear`` (dropout in
    between is fine: it is the identity in eval mode); otherwise a
    ``ValueError`` says so. Then CAM equals Grad-CAM after normalisation.
    """

    name = "cam"
    needs_gradients = False
    needs_head = True

    def raw_maps(self, inp: CamInputs) -> Tensor:
        head, x = inp.head, inp.head_input
        pooled = inp.activations.float().mean(dim=(2, 3))
        hint = (f"CAM needs global average pooling and the final Linear layer right after the target layer, "
                f"which {inp.layer_name!r} is not followed by; use the model's last feature layer as the "
                "target layer, or another explainer such as gradcam")
        if head is None or x is None or x.ndim != 2 or x.shape != pooled.shape:
            raise ValueError(hint)
        # The Linear's input must BE the pooled activations, or its weights do not weigh these channels.
        scale = pooled.abs().amax().clamp_min(1e-12)
        if not torch.allclose(x.float() / scale, pooled / scale, atol=1e-4, rtol=1e-3):
            raise ValueError(hint)
        weights = head.weight.detach()[inp.targets].to(inp.activations.dtype)  # (B, C)
        return torch.einsum("bc,bchw->bhw", weights, inp.activations)


class LayerCAM(CamExplainer):
    """LayerCAM: every position weighted by its own positive gradient."""

    name = "layercam"

    def raw_maps(self, inp: CamInputs) -> Tensor:
        return (torch.relu(_grads(inp)) * inp.activations).sum(dim=1)


class HiResCAM(CamExplainer):
    """HiResCAM: gradient times activation, summed over channels (faithful to the logit for GAP+Linear heads)."""

    name = "hirescam"

    def raw_maps(self, inp: CamInputs) -> Tensor:
        return (_grads(inp) * inp.activations).sum(dim=1)


class ScoreCAM(CamExplainer):
    """Score-CAM: each channel weighted by the target logit of the input masked by that channel.

    Needs one forward pass per channel and image (2048 for a ResNet50), run in
    chunks of ``batch_size`` masked images so that memory stays bounded by one
    chunk (the masks are made chunk by chunk, never all at once). Channels
    without variation give an all-zero mask, hence the same input: it is run
    once and its score shared.
    """

    name = "scorecam"
    needs_gradients = False

    def __init__(self, batch_size: int = 32):
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        self.batch_size = int(batch_size)

    def raw_maps(self, inp: CamInputs) -> Tensor:
        acts = inp.activations
        size = tuple(inp.images.shape[-2:])
        weights = torch.empty(acts.shape[:2], dtype=torch.float32, device=acts.device)
        for b in range(acts.shape[0]):
            weights[b] = torch.softmax(self._scores(inp, b, size), dim=0)
        return (weights[:, :, None, None].to(acts.dtype) * acts).sum(dim=1)

    def _scores(self, inp: CamInputs, b: int, size: tuple[int, int]) -> Tensor:
        """The target logit for image ``b`` masked by each of its channels, ``(C,)``."""
        act, image, target = inp.activations[b], inp.images[b], int(inp.targets[b])
        flat = act.flatten(1)
        span = flat.amax(dim=1) - flat.amin(dim=1)
        live = torch.nonzero(span > 0).flatten()
        scores = torch.empty(act.shape[0], dtype=torch.float32, device=act.device)
        if live.numel() < act.shape[0]:
            # A constant channel's mask is 0 everywhere: every such channel sees the same blank input.
            scores[:] = self._forward(inp, torch.zeros_like(image)[None], target)[0]
        for start in range(0, live.numel(), self.batch_size):
            idx = live[start:start + self.batch_size]
            up = F.interpolate(act[idx][None].float(), size=size, mode="bilinear", align_corners=True)[0]
            lo = up.flatten(1).amin(dim=1)[:, None, None]
            hi = up.flatten(1).amax(dim=1)[:, None, None]
            masks = (up - lo) / (hi - lo + SCORECAM_EPS)
            scores[idx] = self._forward(inp, image[None] * masks[:, None].to(image.dtype), target)
        return scores

    @staticmethod
    def _forward(inp: CamInputs, batch: Tensor, target: int) -> Tensor:
        with torch.no_grad():
            return inp.model(batch)[:, target].float()

    def __repr__(self) -> str:
        return f"ScoreCAM(batch_size={self.batch_size})"


METHODS: dict[str, type[CamExplainer]] = {
    cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, CAM, LayerCAM, HiResCAM, ScoreCAM)
}
