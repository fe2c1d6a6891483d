"""Image fingerprints: who an image is, independent of its file name, and which images of a dataset are
already someone else's (an acceptance set's).

Two fingerprints per image:

* ``sha256``: of the decoded pixels (shape, then bytes). The same picture
  saved again, renamed or re-encoded losslessly has the same one; any
  change of a pixel gives another.
* ``phash``: the 64-bit perceptual hash of :mod:`busi_web.data.splits`, as
  16 hex digits. A near-duplicate (another export of the same scan,
  resized or re-compressed) differs in a few bits only.

An acceptance set is recorded as these fingerprints. Training leaves out
every image that matches one exactly, or that lies within the splitter's
near-duplicate threshold of one, so no copy of an acceptance image is
trained, validated or tested on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from busi_web.data.datasets import ImageDataset
from busi_web.data.splits import DEFAULT_THRESHOLD, hamming, perceptual_hash

__all__ = ["pixel_hash", "fingerprint", "fingerprints", "Overlap", "overlap", "data_hash", "part_fingerprints",
           "count_overlap"]


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 (hex) of a decoded image: its shape, then its ``uint8`` bytes."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha256(repr(tuple(arr.shape)).encode())
    digest.update(arr.astype(np.uint8, copy=False).tobytes())
    return digest.hexdigest()


def fingerprint(image: np.ndarray) -> tuple[str, int]:
    """``(sha256, phash)`` of one decoded image."""
    return pixel_hash(image), perceptual_hash(image)


def fingerprints(dataset: ImageDataset, indices: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """``{"key", "label", "sha256", "phash"}`` of samples ``indices`` (default: all), label as the class name."""
    out = []
    for i in range(len(dataset)) if indices is None else indices:
        sha, ph = fingerprint(dataset.load_image(i))
        sample = dataset.samples[i]
        out.append({"key": sample.key, "label": dataset.classes[sample.label], "sha256": sha,
                    "phash": f"{ph:016x}"})
    return out


@dataclass
class Overlap:
    """The samples of a dataset that an acceptance set claims: by exact pixels, or as near-duplicates."""

    exact: list[int]
    near: list[int]
    phashes: list[int]  # every sample's perceptual hash, in order (for the splitter, so it decodes once)

    @property
    def indices(self) -> list[int]:
        return sorted(set(self.exact) | set(self.near))


def overlap(dataset: ImageDataset, items: Sequence[dict[str, Any]], threshold: int = DEFAULT_THRESHOLD
            ) -> Overlap:
    """Which samples of ``dataset`` are (near-)copies of the recorded ``items``.

    ``threshold`` is the splitter's: at most that many differing pHash bits is a near-duplicate. A dataset
    that declares it holds no duplicates (``has_duplicates = False``, e.g. generated phantoms) is matched by
    exact pixels only.
    """
    shas = {it["sha256"] for it in items}
    near_ok = getattr(dataset, "has_duplicates", True)
    theirs = [int(it["phash"], 16) for it in items] if near_ok else []
    exact, near, phashes = [], [], []
    for i in range(len(dataset)):
        sha, ph = fingerprint(dataset.load_image(i))
        phashes.append(ph)
        if sha in shas:
            exact.append(i)
        elif any(hamming(ph, t) <= threshold for t in theirs):
            near.append(i)
    return Overlap(exact, near, phashes)


def part_fingerprints(dataset: ImageDataset, parts: dict[str, Sequence[int]]) -> dict[str, list[list[str]]]:
    """``{part: [[sha256, phash hex], ...]}`` of the images of each part (what a run keeps of its training and
    validation images, so that an acceptance set defined later can be checked against them)."""
    out: dict[str, list[list[str]]] = {}
    for part, indices in parts.items():
        out[part] = []
        for i in indices:
            sha, ph = fingerprint(dataset.load_image(i))
            out[part].append([sha, f"{ph:016x}"])
    return out


def count_overlap(kept: Sequence[Sequence[str]], items: Sequence[dict[str, Any]],
                  threshold: int = DEFAULT_THRESHOLD) -> tuple[int, int]:
    """How many of the recorded ``items`` (an acceptance set) are among ``kept`` fingerprints: ``(identical,
    near-duplicates)``, each item counted once."""
    shas = {sha for sha, _ in kept}
    hashes = np.array([int(ph, 16) for _, ph in kept], dtype=np.uint64)
    exact = near = 0
    for item in items:
        if item["sha256"] in shas:
            exact += 1
        elif len(hashes) and int(np.bitwise_count(hashes ^ np.uint64(int(item["phash"], 16))).min()) <= threshold:
            near += 1
    return exact, near


def data_hash(dataset: ImageDataset, params: dict[str, Any] | None = None) -> str:
    """One SHA-256 (hex) for a dataset's content: every sample's key, class and file bytes (masks included), in
    key order. A generated dataset (samples without files) is identified by its parameters instead, which
    regenerate it exactly."""
    digest = hashlib.sha256()
    samples = sorted(dataset.samples, key=lambda s: s.key)
    if not any(s.path for s in samples):
        digest.update(json.dumps({"generated": type(dataset).__name__, "params": params or {}},
                                 sort_keys=True, default=str).encode())
        return digest.hexdigest()
    for s in samples:
        digest.update(f"{s.key}\0{dataset.classes[s.label]}\0".encode())
        for path in (s.path, *s.mask_paths):
            if path:
                with open(path, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()
