"""Heatmap quality: does the map point at the lesion (localisation), and does it matter to the model (faithfulness)?

Localisation, against a lesion mask of the map's size (any nonzero pixel is lesion):

* **pointing game**: a hit when the map's maximum lies inside the mask (when
  several pixels share the maximum, a hit needs at least half of them inside;
  a map without variation points nowhere and never hits);
* **energy pointing game**: the share of the map's total mass inside the mask;
* **IoU** of the map thresholded at 0.5 (``map >= 0.5``) with the mask.

Each comes with its **chance baseline**, the mask's share of the image: the
hit rate of a uniformly random point, the energy share of a uniform map, and
the IoU of a map that lights up the whole image. A score is only good in
comparison with it: a lesion covering 40 % of the image gives 0.4 for free.

Faithfulness (Petsiuk et al., RISE, 2018), for one image and its class:

* **deletion**: the most salient pixels are replaced by a baseline (zeros in
  the normalised input, i.e. the mean colour) in ``steps`` equal steps; the
  class probability should fall fast, so a **lower** area under the curve is better;
* **insertion**: starting from a blurred copy, the most salient pixels are put
  back; the probability should rise fast, so a **higher** area is better.

The area is the trapezoidal area under probability against the fraction of
pixels changed, both in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

__all__ = ["LocalisationScores", "FaithfulnessCurve", "mask_share", "pointing_game", "energy_pointing_game",
           "iou_at", "localisation", "deletion_curve", "insertion_curve", "deletion_auc", "insertion_auc"]


def _map(heatmap: Any) -> np.ndarray:
    arr = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"heatmap must be a 2-D array (H, W), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("heatmap holds NaN or infinite values")
    return arr


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    hm = _map(heatmap)
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):
        m = m[:, :, 0]  # a mask saved as an RGB image
    if m.shape != hm.shape:
        raise ValueError(f"mask shape {m.shape} does not match heatmap shape {hm.shape}; resize the mask "
                         "(nearest neighbour) or compute the heatmap at the mask's size")
    m = m != 0
    if not m.any():
        raise ValueError("the mask is empty (no lesion pixel): localisation scores need a lesion; "
                         "skip images without one (e.g. the 'normal' class)")
    return hm, m


def mask_share(mask: Any) -> float:
    """The mask's share of the image: the chance baseline of every localisation score."""
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.size == 0:
        raise ValueError("the mask is empty (size 0)")
    return float(np.count_nonzero(m) / m.size)


def pointing_game(heatmap: Any, mask: Any) -> bool:
    """Whether the map's maximum lies inside the mask (see the module docstring for ties and flat maps)."""
    hm, m = _pair(heatmap, mask)
    top = hm.max()
    if top <= hm.min():
        return False
    at_max = hm == top
    return bool(np.count_nonzero(at_max & m) * 2 >= np.count_nonzero(at_max))


def energy_pointing_game(heatmap: Any, mask: Any) -> float:
    """Share of the map's mass inside the mask (negative values count as 0); 0 for an all-zero map."""
    hm, m = _pair(heatmap, mask)
    hm = np.clip(hm, 0.0, None)
    total = hm.sum()
    return float(hm[m].sum() / total) if total > 0 else 0.0


def iou_at(heatmap: Any, mask: Any, threshold: float = 0.5) -> float:
    """Intersection over union of ``heatmap >= threshold`` with the mask."""
    hm, m = _pair(heatmap, mask)
    region = hm >= float(threshold)
    union = np.count_nonzero(region | m)
    return float(np.count_nonzero(region & m) / union)


@dataclass(frozen=True)
class LocalisationScores:
    """The three localisation scores of one map, and the chance baseline they share."""

    pointing_hit: bool
    energy: float
    iou: float
    chance: float
    threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"pointing_hit": self.pointing_hit, "pointing_chance": self.chance, "energy": self.energy,
                "energy_chance": self.chance, "iou": self.iou, "iou_chance": self.chance,
                "iou_threshold": self.threshold}


def localisation(heatmap: Any, mask: Any, threshold: float = 0.5) -> LocalisationScores:
    """Pointing game, energy pointing game and IoU at ``threshold``, each with its chance baseline."""
    return LocalisationScores(pointing_hit=pointing_game(heatmap, mask), energy=energy_pointing_game(heatmap, mask),
                              iou=iou_at(heatmap, mask, threshold), chance=mask_share(mask),
                              threshold=float(threshold))


# -- faithfulness -------------------------------------------------------------

@dataclass(frozen=True)
class FaithfulnessCurve:
    """Class probability after changing ``fractions`` of the pixels, most salient first, and its area."""

    mode: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: float

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fractions": self.fractions.tolist(), "scores": self.scores.tolist(),
                "auc": self.auc}


def _blur(image: Tensor) -> Tensor:
    # RISE's insertion baseline: a Gaussian blur (kernel 11, sigma 5), smaller kernels for tiny images.
    k = min(11, min(image.shape[-2:]) - (1 - min(image.shape[-2:]) % 2))
    return image if k < 3 else TF.gaussian_blur(image, [k, k], [5.0, 5.0])


def _baseline(image: Tensor, baseline: str | float | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        if baseline.shape != image.shape:
            raise ValueError(f"baseline tensor must have the image's shape {tuple(image.shape)}, "
                             f"got {tuple(baseline.shape)}")
        return baseline.to(image.device, image.dtype)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(image, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(image)
    if baseline == "blur":
        return _blur(image)
    raise ValueError(f"baseline must be 'zero', 'blur', a number or a tensor of the image's shape, got {baseline!r}")


def _curve(mode: str, model: nn.Module, image: Tensor, saliency: Any, target: int, steps: int,
           baseline: str | float | Tensor, batch_size: int) -> FaithfulnessCurve:
    if not isinstance(image, Tensor) or image.ndim not in (3, 4) or (image.ndim == 4 and image.shape[0] != 1):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be the model's input for one image, a tensor (C, H, W) or (1, C, H, W); "
                         f"got {shape}")
    image = image[0] if image.ndim == 4 else image
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    steps = int(steps)
    h, w = image.shape[-2:]
    sal = torch.as_tensor(_map(saliency), dtype=torch.float32)
    if tuple(sal.shape) != (h, w):
        sal = F.interpolate(sal[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    # rank[p] = position of pixel p in the most-salient-first order (ties: reading order).
    order = torch.argsort(sal.flatten(), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    rank = rank.view(h, w).to(image.device)
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * (h * w) / steps).long().to(image.device)
    base = _baseline(image, baseline)
    first, second = (base, image) if mode == "deletion" else (image, base)  # changed pixels take `first`
    scores = []
    with torch.no_grad():
        for start in range(0, steps + 1, int(batch_size)):
            changed = rank[None] < counts[start:start + int(batch_size), None, None]  # (b, H, W)
            batch = torch.where(changed[:, None], first[None], second[None])
            logits = model(batch)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or not 0 <= int(target) < logits.shape[1]:
                raise ValueError(f"the model must return logits (B, K) and target must be in 0..K-1; got "
                                 f"output {tuple(getattr(logits, 'shape', ()))} and target {target}")
            scores.append(torch.softmax(logits.float(), dim=1)[:, int(target)].cpu())
    fractions = (counts.cpu().double() / (h * w)).numpy()
    values = torch.cat(scores).double().numpy()
    auc = float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2)
    return FaithfulnessCurve(mode=mode, fractions=fractions, scores=values, auc=auc)


def deletion_curve(model: nn.Module, image: Tensor, saliency: Any, target: int, steps: int = 32,
                   baseline: str | float | Tensor = "zero", batch_size: int = 16) -> FaithfulnessCurve:
    """Probability of ``target`` as the most salient pixels are deleted (lower area = more faithful map).

    ``image`` is the model's (normalised) input ``(C, H, W)``; ``saliency`` a
    map of any size (resized bilinearly to the image's). The model is used as
    it is: put it in eval mode first.
    """
    return _curve("deletion", model, image, saliency, target, steps, baseline, batch_size)


def insertion_curve(model: nn.Module, image: Tensor, saliency: Any, target: int, steps: int = 32,
                    baseline: str | float | Tensor = "blur", batch_size: int = 16) -> FaithfulnessCurve:
    """Probability of ``target`` as the most salient pixels are inserted into the baseline (higher area = better)."""
    return _curve("insertion", model, image, saliency, target, steps, baseline, batch_size)


def deletion_auc(model: nn.Module, image: Tensor, saliency: Any, target: int, **kwargs: Any) -> float:
    """Area under :func:`deletion_curve` (lower is better)."""
    return deletion_curve(model, image, saliency, target, **kwargs).auc


def insertion_auc(model: nn.Module, image: Tensor, saliency: Any, target: int, **kwargs: Any) -> float:
    """Area under :func:`insertion_curve` (higher is better)."""
    return insertion_curve(model, image, saliency, target, **kwargs).auc
