"""Group-aware, stratified train / validation / test splits.

A random split of BUSI leaks: the same scan is saved more than once (a few
copies even under two classes), and a copy in the test part of an image the
model trained on inflates the score. So images are first joined into groups:

* near-duplicates: a 64-bit DCT perceptual hash (pHash) per image; two
  images whose hashes differ in at most ``threshold`` bits are joined;
* ``Sample.group``: samples that share a group name (e.g. both breasts of
  one woman) are joined too.

Joins are transitive (union-find). Whole groups are then dealt to the parts,
class by class, in an order drawn from ``seed``: the same dataset, fractions,
threshold and seed always give the same split. The split is saved with each
run as ``split.json`` (sample keys, not indices, so it survives re-scans).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from busi_web.data.datasets import DatasetError, ImageDataset

PARTS = ("train", "val", "test")
DEFAULT_THRESHOLD = 6
_HASH_SIDE = 32  # pHash: DCT of a 32x32 grayscale thumbnail, keep the 8x8 lowest frequencies


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an image (``uint8`` HxW or HxWx3).

    The image is reduced to a 32x32 grayscale thumbnail, whose 8x8 lowest
    DCT frequencies are compared with their median: one bit each. Resizing,
    re-compression and mild noise change few bits; a different scan changes
    about half of them.
    """
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(image.astype(np.float32), (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].flatten()
    # The median excludes the DC term, which only says how bright the image is on average.
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def image_hashes(dataset: ImageDataset, on_error: Callable[[int, DatasetError], None] | None = None,
                 ) -> list[int | None]:
    """The perceptual hash of every sample, in order.

    An unreadable image raises :class:`DatasetError`, unless ``on_error`` is
    given: then it is called with the index and the error, and the hash is ``None``.
    """
    out: list[int | None] = []
    for i in range(len(dataset)):
        try:
            out.append(perceptual_hash(dataset.load_image(i)))
        except DatasetError as exc:
            if on_error is None:
                raise
            on_error(i, exc)
            out.append(None)
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        by_root: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            by_root.setdefault(self.find(i), []).append(i)
        return sorted(by_root.values())


def _join_near(uf: _UnionFind, hashes: Sequence[int | None], threshold: int) -> None:
    """Union every pair of hashes at Hamming distance <= threshold (vectorised, in row blocks)."""
    idx = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(idx) < 2:
        return
    codes = np.array([hashes[i] for i in idx], dtype=np.uint64)
    block = 1024  # a 1024 x n distance block: bounded memory for large folders
    for start in range(0, len(codes), block):
        rows = codes[start:start + block]
        dist = np.bitwise_count(rows[:, None] ^ codes[None, :])
        a, b = np.nonzero(dist <= threshold)
        for i, j in zip(a + start, b, strict=True):
            if i < j:
                uf.union(int(idx[i]), int(idx[j]))


def group_indices(n: int, hashes: Sequence[int | None] | None, threshold: int,
                  named: Sequence[str | None] = ()) -> list[list[int]]:
    """All groups (singletons included) from hashes and ``Sample.group`` names."""
    uf = _UnionFind(n)
    if hashes is not None:
        _join_near(uf, hashes, threshold)
    first: dict[str, int] = {}
    for i, g in enumerate(named):
        if g is not None:
            uf.union(first.setdefault(g, i), i)
    return uf.groups()


def near_duplicate_groups(dataset: ImageDataset, threshold: int = DEFAULT_THRESHOLD) -> list[list[int]]:
    """Groups of two or more near-duplicate images (sample indices, sorted); singletons left out."""
    hashes = image_hashes(dataset)
    return [g for g in group_indices(len(dataset), hashes, threshold) if len(g) > 1]


@dataclass
class Split:
    """Sample indices of each part, plus the multi-member groups that were kept together."""

    train: list[int]
    val: list[int]
    test: list[int]
    keys: list[str] = field(repr=False)
    groups: list[list[int]] = field(default_factory=list)
    seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.15
    threshold: int = DEFAULT_THRESHOLD
    excluded: list[int] = field(default_factory=list)  # left out of every part (an acceptance set's images)
    sites: list[str] = field(default_factory=list, repr=False)  # each sample's site (empty: not recorded)

    def part(self, name: str) -> list[int]:
        if name not in PARTS:
            raise KeyError(f"unknown split part {name!r}; expected one of {', '.join(PARTS)}")
        return getattr(self, name)

    def twins_of_training(self, groups: Sequence[Sequence[int]], part: str = "test") -> set[int]:
        """The images of ``part`` with a near-duplicate in the training part (``groups`` as from
        :func:`near_duplicate_groups`): none on a duplicate-aware split; the leak of a split that ignored them."""
        train = set(self.train)
        members = set(self.part(part))
        return {i for g in groups if train.intersection(g) for i in g if i in members}

    def counts(self, dataset: ImageDataset) -> dict[str, dict[str, int]]:
        """``{part: {class: n}}``."""
        out = {}
        for name in PARTS:
            c = {cls: 0 for cls in dataset.classes}
            for i in self.part(name):
                c[dataset.classes[dataset.samples[i].label]] += 1
            out[name] = c
        return out

    def site_counts(self, dataset: ImageDataset) -> dict[str, dict[str, Any]]:
        """Per site: ``{"devices": {device: n}, part: {class: n} for each part}`` (images left out uncounted)."""
        out: dict[str, dict[str, Any]] = {}
        for name in PARTS:
            for i in self.part(name):
                site, device = dataset.site_of(i)
                entry = out.setdefault(site, {"devices": {}, **{p: {c: 0 for c in dataset.classes} for p in PARTS}})
                entry[name][dataset.classes[dataset.samples[i].label]] += 1
                key = device or "unknown"
                entry["devices"][key] = entry["devices"].get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict listing each part by sample key (the content of ``split.json``)."""
        return {
            "version": 1,
            "seed": self.seed,
            "val_frac": self.val_frac,
            "test_frac": self.test_frac,
            "threshold": self.threshold,
            **{name: [self.keys[i] for i in self.part(name)] for name in PARTS},
            "groups": [[self.keys[i] for i in g] for g in self.groups],
            "excluded": [self.keys[i] for i in self.excluded],
            **({"sites": dict(zip(self.keys, self.sites, strict=True))} if self.sites else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, data: str | dict[str, Any], dataset: ImageDataset) -> Split:
        """Read a split (JSON text or its dict) back onto ``dataset``'s indices.

        Raises :class:`DatasetError` when it names samples the dataset lacks
        (the data folder changed since the split was made).
        """
        doc = json.loads(data) if isinstance(data, str) else data
        if not isinstance(doc, dict) or any(not isinstance(doc.get(p), list) for p in PARTS):
            raise DatasetError("split file is not a busi-web split: expected lists 'train', 'val' and 'test'")
        keys = [s.key for s in dataset.samples]
        where = {k: i for i, k in enumerate(keys)}
        missing = [k for p in PARTS for k in doc[p] if k not in where]
        if missing:
            raise DatasetError(f"the split names {len(missing)} image(s) the dataset does not have, e.g. "
                               f"{missing[0]!r}; the data folder changed since the split was made")
        parts = {p: [where[k] for k in doc[p]] for p in PARTS}
        return cls(**parts, keys=keys,
                   groups=[[where[k] for k in g if k in where] for g in doc.get("groups", [])],
                   seed=doc.get("seed", 0), val_frac=doc.get("val_frac", 0.15), test_frac=doc.get("test_frac", 0.15),
                   threshold=doc.get("threshold", DEFAULT_THRESHOLD),
                   excluded=[where[k] for k in doc.get("excluded", []) if k in where],
                   sites=[dataset.site_of(i)[0] for i in range(len(dataset))])

    @classmethod
    def load(cls, path: str | Path, dataset: ImageDataset) -> Split:
        return cls.from_json(Path(path).read_text(encoding="utf-8"), dataset)


def split_dataset(dataset: ImageDataset, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0,
                  threshold: int = DEFAULT_THRESHOLD, exclude: Collection[int] = (),
                  hashes: Sequence[int | None] | None = None) -> Split:
    """Stratified, group-aware split of ``dataset`` (see the module docstring).

    Each group goes to one part; a group is counted under its most common
    class (ties: the lowest label). Every class with at least three groups
    has at least one group in each part whose fraction is above zero.
    A group with a member in ``exclude`` is left out whole (``Split.excluded``):
    a near-duplicate of a left-out image must not stay behind. ``hashes``: the
    samples' perceptual hashes when the caller has them already.
    Raises :class:`DatasetError` for an unreadable image, ``ValueError`` for bad fractions.
    """
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val_frac + test_frac >= 1:
        raise ValueError(f"val_frac + test_frac must be below 1 to leave images for training, got "
                         f"{val_frac + test_frac:g}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    n = len(dataset)
    # Generated datasets declare that they hold no duplicates: skip decoding every image.
    if hashes is None and getattr(dataset, "has_duplicates", True):
        hashes = image_hashes(dataset)
    elif not getattr(dataset, "has_duplicates", True):
        hashes = None
    groups = group_indices(n, hashes, threshold, [s.group for s in dataset.samples])
    left_out = set(exclude)
    excluded = sorted(i for g in groups if left_out.intersection(g) for i in g)
    groups = [g for g in groups if not left_out.intersection(g)]
    parts: list[list[int]] = [[], [], []]
    # A dataset's own partition (an official fold) places its images; a group follows its first placed member.
    fixed = {i: PARTS.index(part) for part, idx in (dataset.official_split() or {}).items() for i in idx}
    if fixed:
        placed = [g for g in groups if any(i in fixed for i in g)]
        for g in placed:
            parts[fixed[next(i for i in g if i in fixed)]] += g
        groups = [g for g in groups if not any(i in fixed for i in g)]
    labels = dataset.labels
    sites = [dataset.site_of(i)[0] for i in range(n)]
    fracs = (1 - val_frac - test_frac, val_frac, test_frac)
    # Strata: one per site and class, so every site is split in the same shares, class by class. Each site draws
    # from its own generator of ``seed``: a site's parts are the same whether it is split alone or with others.
    strata: dict[tuple[str, int], list[list[int]]] = {}
    for g in groups:
        votes = np.bincount([labels[i] for i in g], minlength=len(dataset.classes))
        label = int(np.argmax(votes))
        site = max(sorted({sites[i] for i in g}), key=[sites[i] for i in g].count)
        strata.setdefault((site, label), []).append(g)
    rngs = {site: np.random.default_rng(seed) for site in sorted({site for site, _ in strata})}
    for key in sorted(strata):
        class_groups = strata[key]
        order = rngs[key[0]].permutation(len(class_groups))
        # Big groups first (stable over the shuffled order), so the small ones even out the counts.
        ordered = sorted((class_groups[k] for k in order), key=len, reverse=True)
        total = sum(len(g) for g in ordered)
        target = [f * total for f in fracs]
        got = [0, 0, 0]
        wanted = [p for p in range(3) if fracs[p] > 0]
        pending = list(ordered)
        if len(ordered) >= 3:
            # Seed each part with one of the smallest groups, so every part sees every class.
            for p in wanted:
                g = pending.pop()  # smallest remaining
                parts[p] += g
                got[p] += len(g)
        for g in pending:
            p = max(wanted, key=lambda q: (target[q] - got[q]) / max(target[q], 1e-9))
            parts[p] += g
            got[p] += len(g)
    multi = [g for g in groups if len(g) > 1]
    return Split(*(sorted(p) for p in parts), keys=[s.key for s in dataset.samples], groups=multi, seed=seed,
                 val_frac=val_frac, test_frac=test_frac, threshold=threshold, excluded=excluded, sites=sites)
