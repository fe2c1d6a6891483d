"""The dataset interface that dataset plugins implement.

A dataset is an ordered list of :class:`Sample` plus a way to load each
sample's pixels and, when it has one, its lesion mask. Loading is lazy so
that ``busi-web datasets inspect`` and the split can look at a folder of
thousands of images without decoding them all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from busi_web.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")


class DatasetError(UserError):
    """A dataset cannot be used as given; the message names the path and the fix."""


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``key`` identifies the sample in split files and reports (a path
    relative to the dataset root for on-disk datasets). ``group`` forces
    samples into the same split part (e.g. both breasts of one woman, or
    one patient's images); ``None`` lets the splitter group near-duplicates
    by perceptual hash. ``extra`` holds metadata; ``extra["site"]`` and
    ``extra["device"]``, when set, say where the image was acquired (see
    :meth:`ImageDataset.site_of`).
    """

    key: str
    label: int
    path: str | None = None
    mask_paths: tuple[str, ...] = ()
    group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class ImageDataset:
    """Base class for datasets. Subclasses fill ``classes`` and ``samples``.

    ``load_image(i)`` returns an ``uint8`` array, ``(H, W)`` for grayscale
    or ``(H, W, 3)`` RGB. ``load_mask(i)`` returns a ``bool`` array of the
    image's size or ``None`` when the sample has no mask (a normal case
    with an all-black mask returns an all-false mask).
    """

    name: str = ""
    modality: str = "ultrasound"
    channels: int = 3
    # The scanner of every image, when a dataset comes from one (a sample's extra["device"] wins).
    device: str | None = None

    def __init__(self, classes: list[str], samples: list[Sample], root: str | Path | None = None):
        self.classes = list(classes)
        self.samples = list(samples)
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for s in self.samples:
            counts[self.classes[s.label]] += 1
        return counts

    def load_image(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        if sample.path is None:
            raise NotImplementedError(f"{type(self).__name__} must implement load_image")
        return read_image(sample.path, grayscale=self.channels == 1)

    def load_mask(self, index: int) -> np.ndarray | None:
        sample = self.samples[index]
        if not sample.mask_paths:
            return None
        mask: np.ndarray | None = None
        for mp in sample.mask_paths:
            m = read_image(mp, grayscale=True) > 127
            if mask is None:
                mask = m
            elif m.shape == mask.shape:
                mask |= m
            else:
                raise DatasetError(f"mask {mp} has size {m.shape[::-1]}, the other mask {mask.shape[::-1]}")
        return mask

    def site_of(self, index: int) -> tuple[str, str | None]:
        """``(site, device)`` of sample ``index``: its ``extra["site"]`` (default: the dataset's name) and its
        ``extra["device"]`` (default: the dataset's :attr:`device`; ``None`` when unknown)."""
        extra = self.samples[index].extra
        return str(extra.get("site") or self.name or "unnamed"), extra.get("device") or self.device

    def official_split(self) -> dict[str, list[int]] | None:
        """A split the dataset itself prescribes (its publisher's partition, when one was chosen):
        ``{"train", "val", "test"}`` sample indices, or ``None`` (the default) for the project's own split."""
        return None

    def has_masks(self) -> bool:
        """Whether some samples have a lesion mask (:meth:`load_mask` returns an array for them)."""
        return any(s.mask_paths for s in self.samples)

    def training_items(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """What one training epoch draws from the training samples ``indices``: ``(sample index, variant)`` pairs.

        By default each sample once, variant 0. A dataset that augments or
        balances at its own level (e.g. mammogram crops in 8 orientations)
        returns more items; :meth:`training_image` then makes each variant.
        Validation and test always see :meth:`load_image`, unaugmented.
        """
        return [(int(i), 0) for i in indices]

    def training_image(self, index: int, variant: int) -> np.ndarray | None:
        """The image of training item ``(index, variant)``; ``None`` (the default): :meth:`load_image`'s,
        which the trainer may have cached. Randomness must come from torch's generator (seeded per epoch)."""
        return None

    def check_usable(self) -> None:
        """Raise :class:`DatasetError` unless the dataset can train a classifier."""
        where = f" in {self.root}" if self.root else ""
        if not self.samples:
            raise DatasetError(f"no images found{where}; expected one subfolder per class with image files")
        empty = [c for c, n in self.class_counts().items() if n == 0]
        if empty:
            raise DatasetError(
                f"class folder(s) {', '.join(empty)} hold no images{where}; add images or remove the folder"
            )
        if len(self.classes) < 2:
            raise DatasetError(f"only one class ({self.classes[0]}){where}; a classifier needs at least two")


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Decode an image file into ``uint8`` RGB (or grayscale) or raise :class:`DatasetError`."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = (255 * (arr - arr.min()) / max(float(np.ptp(arr)), 1.0)).astype(np.uint8)
                return arr if grayscale else np.repeat(arr[..., None], 3, axis=2)
            im = im.convert("L" if grayscale else "RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; replace or remove the file") from None


def check_data_dir(dataset: str, needed: bool, data_dir: str | Path | None) -> Path | None:
    """The data folder of ``dataset`` as a path (``None`` when it needs none and got none), or a
    :class:`DatasetError` saying what to pass when it is needed and missing, or is not a folder."""
    if not data_dir or not str(data_dir).strip():
        if needed:
            raise DatasetError(f"dataset {dataset!r} needs a data folder; pass one (--data-dir, or DATA_DIRS in "
                               "the configuration)")
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        why = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"data folder {path} {why}; give the folder that holds the {dataset!r} images")
    return path
