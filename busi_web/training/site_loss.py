"""A loss in which each site teaches only the classes it has.

When one dataset has a class that another lacks (BUSI has normal images,
BUS-BRA has none), plain cross-entropy makes every image of the site without
it a lesson against that class: "looks like BUS-BRA" becomes evidence for "not
normal", and so "looks like BUSI" for "normal". :class:`SiteClassLoss`
compares each image's logits only over its site's classes (a softmax over
those alone), so the missing class's logit gets no gradient from that site's
images, and the decision for or against it is learned where both sides of it
were imaged.

The training batches then carry each image's site index as their last item
(:class:`busi_web.training.feeding.TransformedImages` with ``sites``), and
:class:`busi_web.training.loop.Engine` hands it to the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SiteClassLoss", "site_class_table"]


def site_class_table(sites: Sequence[str], labels: Sequence[int],
                     num_classes: int) -> tuple[list[str], list[int], torch.Tensor]:
    """Which classes each site has, from its images: ``sites[i]`` and ``labels[i]`` are image ``i``'s.

    Returns the site names in order of first appearance, each image's site
    index among them, and the ``(S, num_classes)`` table of booleans that
    :class:`SiteClassLoss` takes."""
    names = list(dict.fromkeys(sites))
    row = {name: k for k, name in enumerate(names)}
    table = torch.zeros(len(names), num_classes, dtype=torch.bool)
    for site, label in zip(sites, labels, strict=True):
        table[row[site], int(label)] = True
    return names, [row[s] for s in sites], table


class SiteClassLoss(nn.Module):
    """Cross-entropy over each image's site's classes only.

    ``allowed``: ``(S, K)`` booleans, the classes of each site (every row has
    at least one). ``forward(logits, y, site)`` takes each image's site index.
    Per image the loss is ``(1 - s) * -log p(y) + s * mean over the site's
    classes of -log p(c)``, with ``p`` the softmax over the site's classes
    and ``s`` the label smoothing; the batch's loss is the mean weighted by
    ``weight[y]`` (the class weights, when given). With every class allowed and no
    weights it equals :class:`torch.nn.CrossEntropyLoss` with the same smoothing.
    """

    takes_sites = True

    def __init__(self, allowed: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
        if allowed.ndim != 2 or not bool(allowed.any(1).all()):
            raise ValueError("the site class table must be (sites, classes) with at least one class per site")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.register_buffer("allowed", allowed)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, y: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed[site]
        if not bool(allowed.gather(1, y[:, None]).all()):
            raise ValueError("an image's label is not among its site's classes")
        logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)
        logp = logp.masked_fill(~allowed, 0.0)  # no -inf (nor NaN gradients) from the classes left out
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        loss = nll
        if self.label_smoothing > 0:
            spread = -logp.sum(1) / allowed.sum(1)
            loss = (1.0 - self.label_smoothing) * nll + self.label_smoothing * spread
        if self.weight is None:
            return loss.mean()
        w = self.weight[y]
        return (w * loss).sum() / w.sum().clamp_min(1e-12)
