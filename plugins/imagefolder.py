"""The ``imagefolder`` dataset (one subfolder per class) and the folder scanning it shares with ``busi``.

A file whose name ends in ``_mask`` or ``_mask_N`` before its suffix
(``case 1_mask.png``, ``case 1_mask_1.png``) is a lesion mask of the image
with the same name in the same folder (``case 1.png``), never a sample.
Several masks of one image are merged; a mask of another size than its
image is resized to it (nearest neighbour) when loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from busi_web.data.datasets import IMAGE_SUFFIXES, DatasetError, ImageDataset, Sample, read_image
from busi_web.hookspecs import hookimpl
from busi_web.specs import DatasetSpec, Param

MASK_STEM = re.compile(r"^(?P<base>.+?)_mask(?:_(?P<n>\d+))?$", re.IGNORECASE)


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file with one of :data:`busi_web.data.datasets.IMAGE_SUFFIXES`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def mask_base(stem: str) -> str | None:
    """The image stem a mask stem belongs to (``"a (1)_mask_2"`` -> ``"a (1)"``), or ``None``."""
    m = MASK_STEM.match(stem)
    return m.group("base") if m else None


def natural_key(path: Path) -> list[str | int]:
    """Sort key putting ``benign (2).png`` before ``benign (10).png``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", path.as_posix().lower())
    # Alternating text / number: text parts stay strings, so the comparison never mixes types.
    return [int(x) if i % 2 else x for i, x in enumerate(parts)]


def scan_class_folder(folder: Path, root: Path, label: int, recursive: bool = False) -> tuple[list[Sample], list[str]]:
    """Samples of one class folder, with their masks attached, and the mask files no image claims.

    Keys are paths relative to ``root`` with forward slashes. Files are in
    natural order of their relative path, so the order (and hence a seeded
    split) is the same on every machine.
    """
    files = sorted(folder.rglob("*") if recursive else folder.iterdir(), key=lambda p: natural_key(p.relative_to(root)))
    images: list[Path] = []
    masks: dict[tuple[Path, str], list[tuple[int, Path]]] = {}
    for path in files:
        if not is_image_file(path) or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        base = mask_base(path.stem)
        if base is None:
            images.append(path)
        else:
            n = MASK_STEM.match(path.stem).group("n")  # type: ignore[union-attr]
            masks.setdefault((path.parent, base.lower()), []).append((int(n) if n else 0, path))
    samples = []
    claimed: set[tuple[Path, str]] = set()
    for path in images:
        owner = (path.parent, path.stem.lower())
        found = sorted(masks.get(owner, []))  # _mask first, then _mask_1, _mask_2, ...
        if found:
            claimed.add(owner)
        samples.append(Sample(key=path.relative_to(root).as_posix(), label=label, path=str(path),
                              mask_paths=tuple(str(p) for _, p in found)))
    orphans = [p.relative_to(root).as_posix() for owner, ms in masks.items() if owner not in claimed for _, p in ms]
    return samples, sorted(orphans)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; replace or remove the file") from None


class FolderDataset(ImageDataset):
    """Images in class folders under ``root``; masks follow the ``_mask`` naming rule."""

    name = "imagefolder"
    # Set by the scan: mask files whose image does not exist (reported by ``datasets inspect``).
    orphan_masks: list[str]

    def load_mask(self, index: int) -> np.ndarray | None:
        """The union of the sample's masks at the image's size, or ``None`` when it has none."""
        sample = self.samples[index]
        if not sample.mask_paths:
            return None
        assert sample.path is not None
        width, height = image_size(sample.path)
        mask = np.zeros((height, width), bool)
        for mp in sample.mask_paths:
            m = read_image(mp, grayscale=True) > 127
            if m.shape != mask.shape:
                # Masks saved at another resolution: nearest keeps them binary.
                m = cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
            mask |= m
        return mask


def check_root(root: str | Path | None, name: str, layout: str) -> Path:
    """The data folder as a :class:`Path`, or a :class:`DatasetError` saying what ``name`` expects."""
    if root is None or str(root).strip() == "":
        raise DatasetError(f"the {name} dataset needs a data folder (--data-dir); expected {layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"data folder {path} does not exist; expected {layout}")
    if not path.is_dir():
        raise DatasetError(f"data folder {path} is not a folder; expected {layout}")
    return path


def parse_class_list(text: str | None) -> list[str]:
    """``"benign, malignant"`` -> ``["benign", "malignant"]``; empty -> ``[]``; duplicates are an error."""
    names = [c.strip() for c in (text or "").split(",") if c.strip()]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DatasetError(f"class {', '.join(dupes)} is listed twice in classes={text!r}")
    return names


class ImageFolderDataset(FolderDataset):
    """``<root>/<class>/*.png|jpg|...``: one subfolder per class, classes sorted by name.

    Images in nested folders below a class folder belong to that class.
    """

    name = "imagefolder"

    def __init__(self, root: str | Path | None, classes: str | list[str] | None = None):
        layout = "one subfolder per class holding image files: <root>/<class>/<image>.png"
        path = check_root(root, "imagefolder", layout)
        found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        wanted = parse_class_list(classes) if isinstance(classes, str) or classes is None else list(classes)
        if wanted:
            missing = [c for c in wanted if c not in found]
            if missing:
                raise DatasetError(f"class folder(s) {', '.join(missing)} not found in {path}; "
                                   f"it has: {', '.join(found) or 'no subfolders'}")
            names = wanted
        else:
            names = found
        if not names:
            raise DatasetError(f"no class folders in {path}; expected {layout}")
        samples: list[Sample] = []
        self.orphan_masks = []
        for label, cls in enumerate(names):
            got, orphans = scan_class_folder(path / cls, path, label, recursive=True)
            if not got:
                raise DatasetError(f"class folder {path / cls} holds no images "
                                   f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
            samples += got
            self.orphan_masks += orphans
        super().__init__(names, samples, root=path)


def _build(root: str | None = None, classes: str = "") -> ImageFolderDataset:
    return ImageFolderDataset(root, classes)


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="imagefolder",
            title="Image folder (one subfolder per class)",
            description=(
                "Any labelled images laid out as <data folder>/<class>/<image>; class names are the "
                "subfolder names, sorted. Files named like <image>_mask.png (or _mask_1, _mask_2 ...) "
                "next to an image are its lesion masks, not samples."
            ),
            factory=_build,
            params=(
                Param("classes", "str", "", "Comma-separated class folders to use, in label order "
                      "(empty: every subfolder, sorted)."),
            ),
            needs_data_dir=True,
            modality="ultrasound",
        )
    ]
