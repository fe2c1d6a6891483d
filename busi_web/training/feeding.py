"""Feeding the trainer: an in-memory image cache, torch datasets, class balancing and loaders.

Decoding a PNG costs more than a small network's forward pass, so when the
decoded images of a run fit under a byte cap they are decoded once, before
the first epoch, and kept in memory. DataLoader workers are forked after
that and share the decoded arrays, so loading never starves the GPU. The
cache holds exactly what :meth:`ImageDataset.load_image` returns; every
transform still runs on it, so training sees the same pixels prediction does.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from busi_web.data.datasets import ImageDataset
from busi_web.data.scan import Box, ScanSteps, prepare_scan

_PROBES = 8  # images decoded to estimate the size of the whole set


class ImageSource:
    """``source(i)`` returns sample ``i``'s ``uint8`` image after the scan ``steps`` (:mod:`busi_web.data.scan`),
    from memory when it was cached. ``source.mask(i)`` is its lesion mask, cut to the same region."""

    def __init__(self, dataset: ImageDataset, steps: ScanSteps | None = None):
        self.dataset = dataset
        self.steps = steps or ScanSteps()
        self.images: dict[int, np.ndarray] = {}
        self.masks: dict[int, np.ndarray | None] = {}
        self.regions: dict[int, Box] = {}

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self.images.values())

    def prepare(self, image: np.ndarray, index: int | None = None) -> np.ndarray:
        """The scan steps on one decoded image (sample ``index``'s: its region is remembered for its mask)."""
        if not self.steps.active:
            return image
        out, _, box = prepare_scan(image, self.steps)
        if index is not None:
            self.regions[index] = box
        return out

    def __call__(self, index: int) -> np.ndarray:
        image = self.images.get(index)
        return image if image is not None else self.prepare(self.dataset.load_image(index), index)

    def mask(self, index: int) -> np.ndarray | None:
        """Sample ``index``'s lesion mask (``None`` when it has none); masks are small, so always cached."""
        if index not in self.masks:
            mask = self.dataset.load_mask(index)
            if mask is not None and self.steps.crop:
                if index not in self.regions:
                    self(index)  # finds the region
                left, top, right, bottom = self.regions[index]
                mask = np.ascontiguousarray(mask[top:bottom, left:right])
            self.masks[index] = mask
        return self.masks[index]


def estimate_bytes(dataset: ImageDataset, indices: Sequence[int]) -> int:
    """Approximate memory of the decoded images of ``indices`` (decodes a few spread-out ones)."""
    if not indices:
        return 0
    step = max(1, len(indices) // _PROBES)
    probes = list(indices)[::step][:_PROBES]
    mean = sum(dataset.load_image(i).nbytes for i in probes) / len(probes)
    return int(mean * len(indices) * 1.1)  # a margin for images larger than the probes


def build_source(dataset: ImageDataset, indices: Sequence[int], cap_bytes: int,
                 log: Callable[[str], None] = lambda _msg: None,
                 should_stop: Callable[[], bool] = lambda: False, steps: ScanSteps | None = None) -> ImageSource:
    """An :class:`ImageSource` with every image of ``indices`` decoded (and prepared by the scan ``steps``), if
    they fit under ``cap_bytes``.

    Images are decoded in the calling process, so forked DataLoader workers
    inherit them. Stops early (leaving the rest uncached) when ``should_stop()``.
    """
    source = ImageSource(dataset, steps)
    if cap_bytes <= 0:
        log("image cache disabled (cache_mb=0): images are decoded every epoch")
        return source
    need = estimate_bytes(dataset, indices)
    if need > cap_bytes:
        log(f"images need about {need / 2**20:.0f} MB decoded, above the cache cap of {cap_bytes / 2**20:.0f} MB:"
            " decoding them every epoch (raise cache_mb to cache them)")
        return source
    for i in indices:
        if should_stop():
            break
        image = source.prepare(dataset.load_image(i), i)
        if source.cached_bytes + image.nbytes > cap_bytes:  # the estimate was low: stop caching, keep going
            log("image cache full; the remaining images are decoded every epoch")
            break
        source.images[i] = image
    log(f"cached {len(source.images)} decoded images in memory ({source.cached_bytes / 2**20:.1f} MB)")
    return source


class TransformedImages(Dataset):
    """Samples ``indices`` of a source as ``(transform(image), label)`` pairs.

    With ``variants`` (one per index) the image of item ``k`` comes from
    ``source.dataset.training_image(indices[k], variants[k])`` when that is not
    ``None``: the dataset's own training augmentation (see
    :meth:`ImageDataset.training_items`).

    With ``masks=True`` (training with lesion guidance) items are
    ``(image, label, mask, has_mask)``: the lesion mask moved by the same
    augmentation (``transform(image, mask)``), or zeros and ``False`` for an
    image without a mask file.

    With ``sites`` (one integer per index) each item ends with its image's
    site index, for what trains by site: the per-site class loss
    (:class:`busi_web.training.site_loss.SiteClassLoss`) and the site
    adversary (:class:`busi_web.training.adversary.SiteAdversary`).
    """

    def __init__(self, source: ImageSource, indices: Sequence[int], labels: Sequence[int],
                 transform: Callable[..., Any], variants: Sequence[int] | None = None, masks: bool = False,
                 sites: Sequence[int] | None = None):
        self.source, self.indices, self.transform = source, list(indices), transform
        self.labels = [int(labels[i]) for i in self.indices]
        self.variants = None if variants is None else list(variants)
        if masks and self.variants is not None and any(self.variants):
            raise ValueError("lesion masks cannot follow a dataset's own training variants")
        self.masks = masks
        if sites is not None and len(sites) != len(self.indices):
            raise ValueError(f"one site per image: {len(sites)} sites for {len(self.indices)} images")
        self.sites = None if sites is None else [int(s) for s in sites]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[Any, ...]:
        item = self._item(k)
        return item if self.sites is None else (*item, self.sites[k])

    def _item(self, k: int) -> tuple[Any, ...]:
        i = self.indices[k]
        image = None if self.variants is None else self.source.dataset.training_image(i, self.variants[k])
        image = self.source(i) if image is None else self.source.prepare(image)
        if not self.masks:
            return self.transform(image), self.labels[k]
        mask = self.source.mask(i)
        has = mask is not None
        x, m = self.transform(image, mask if has else np.zeros(image.shape[:2], dtype=bool))
        return x, self.labels[k], m, has


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    counts = Counter(int(y) for y in labels)
    return [counts.get(c, 0) for c in range(num_classes)]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (K * n_c)``: 1 for every class when balanced; 0 for an absent class."""
    counts = class_counts(labels, num_classes)
    n = sum(counts)
    return torch.tensor([n / (num_classes * c) if c else 0.0 for c in counts], dtype=torch.float32)


def draw_weights(labels: Sequence[int], sites: Sequence[str] | None = None, *, classes: bool = True
                 ) -> list[float]:
    """Each training item's chance of a draw (summing to 1): every class equally often (``classes``), every site
    equally often (``sites``), or every class of every site equally often (both)."""
    keys = [((s if sites is not None else ""), int(y) if classes else 0)
            for s, y in zip(sites if sites is not None else [""] * len(labels), labels, strict=True)]
    count = Counter(keys)
    strata_per_site = Counter(site for site, _ in count)
    n_sites = len(strata_per_site)
    return [1.0 / (n_sites * strata_per_site[k[0]] * count[k]) for k in keys]


def balanced_sampler(labels: Sequence[int], num_classes: int, generator: torch.Generator,
                     sites: Sequence[str] | None = None, classes: bool = True) -> Sampler[int]:
    """Draws (with replacement) each class equally often on average, or each site (``sites``, with ``classes``
    False), or each class of each site (both); one epoch is ``len(labels)`` draws."""
    weights = torch.tensor(draw_weights(labels, sites, classes=classes), dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)


def drawn_class_weights(labels: Sequence[int], num_classes: int, draws: Sequence[float] | None) -> torch.Tensor:
    """:func:`class_weights` of the class mix training actually sees: the labels weighted by their chance of a
    draw (``draws``; ``None``: each item once)."""
    if draws is None:
        return class_weights(labels, num_classes)
    mass = [0.0] * num_classes
    for y, w in zip(labels, draws, strict=True):
        mass[int(y)] += w
    total = sum(mass)
    return torch.tensor([total / (num_classes * m) if m else 0.0 for m in mass], dtype=torch.float32)


def resolve_workers(workers: int, device: torch.device) -> int:
    """``-1``: none on the CPU (they would compete with the model for the same cores), up to 8 with a GPU."""
    if workers >= 0:
        return workers
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_loader(data: TransformedImages, batch_size: int, *, train: bool, workers: int, device: torch.device,
                generator: torch.Generator | None = None, sampler: Sampler[int] | None = None) -> DataLoader:
    """A DataLoader for training (shuffled or sampled) or evaluation (in order).

    A last training batch of one image is dropped: BatchNorm cannot normalise a single value per channel.
    """
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=train and len(data) % batch_size == 1 and len(data) > 1,
        generator=generator,
        # Workers are forked each epoch: they inherit the decoded images, and their augmentation seeds
        # come from ``generator``, which the trainer reseeds per epoch (reproducible, resumable).
        persistent_workers=False,
    )


def ignore_signals(_worker_id: int) -> None:
    """A DataLoader worker's start (its ``worker_init_fn``): the runner signals the whole process group, and the
    workers leave the graceful stop to the main process."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
