"""Mixup for training batches: each image blended with another of its batch, labels in the same shares.

The engine (:class:`busi_web.training.loop.Engine`) blends a batch before the
forward pass and weighs the loss of both labels by the shares; lesion masks
for lesion guidance are blended with their images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MixedBatch", "mix_batch"]


@dataclass
class MixedBatch:
    images: torch.Tensor
    partner: torch.Tensor  # the index of the image each one was blended with
    share: float  # each image's own share, at least 0.5: its own label stays the larger part
    masks: tuple[torch.Tensor, torch.Tensor] | None


def mix_batch(alpha: float, x: torch.Tensor,
              masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> MixedBatch:
    """Mixup: blend every image of ``x`` with another of the batch, in shares drawn from Beta(alpha, alpha).

    ``masks`` (lesion masks ``(N, H, W)`` and whether each image has one) are
    blended in the same shares; a blend has a mask only when both images had
    one. Draws from torch's global generator, so a seeded epoch repeats.
    """
    share = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    share = max(share, 1.0 - share)
    partner = torch.randperm(x.shape[0]).to(x.device)
    mixed = x * share + x[partner] * (1.0 - share)
    if masks is not None:
        m, has = masks
        masks = (m.float() * share + m[partner].float() * (1.0 - share), has.bool() & has[partner].bool())
    return MixedBatch(mixed, partner, share, masks)
