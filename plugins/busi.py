"""The ``busi`` dataset: the Breast Ultrasound Images (BUSI) folder layout.

::

    <root>/benign/benign (1).png       <root>/benign/benign (1)_mask.png
    <root>/malignant/malignant (1).png <root>/malignant/malignant (1)_mask.png  (+ _mask_1.png ...)
    <root>/normal/normal (1).png       <root>/normal/normal (1)_mask.png        (all black)

Mask files are never samples; several masks of one image are merged, and a
mask of another size than its image is resized to it (nearest neighbour).
Images may have any size. Known traps of the set (near-duplicate scans, some
filed under two classes) are reported by ``busi-web datasets inspect busi``
and handled by the group-aware split in :mod:`busi_web.data.splits`.
"""

from __future__ import annotations

from pathlib import Path

from busi_web.data.datasets import IMAGE_SUFFIXES, DatasetError, Sample
from busi_web.hookspecs import hookimpl
from busi_web.specs import DatasetSpec, Param

from .imagefolder import FolderDataset, check_root, parse_class_list, scan_class_folder

CLASSES = ["benign", "malignant", "normal"]

# The recipe the Train page offers for BUSI: from scratch (no ImageNet weights), sized for a 2-core CPU (about
# 22 minutes when the CPU is free). ResNet18 at 128 px (the whole image; the data is 256 px) with an output
# stride of 16 (an 8 x 8 last map), random-resized crops, intensity jitter, a weight average and lesion
# guidance from the BUSI masks. Chosen by the mean validation macro-F1 over five duplicate-aware splits
# (docs/quality.md): lesion guidance beat the same recipe without it, and the output stride of 16
# beat the standard 32. The scan steps (crop to the scan, CLAHE, scanner augmentation) were adopted by the sites
# rule: they raised the benign-versus-malignant AUC on the hospital the model never saw (docs/quality.md, "Sites").
RECOMMENDED = {
    "backbone": "resnet18",
    "backbone_params": {"dropout": 0.3, "output_stride": 16},
    "train": {"epochs": 80, "batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05,
              "scheduler": "cosine", "input_size": 128, "resize": 128, "hflip": True, "rotation": 15.0,
              "crop_scale": 0.5, "intensity": 0.2, "label_smoothing": 0.1, "ema": 0.99, "lesion_loss": 1.0,
              "balance": "weighted_loss", "monitor": "val_macro_f1", "patience": 0, "seed": 42,
              "val_frac": 0.15, "test_frac": 0.15, "scan_crop": True, "normalise": "equalize", "scanner": 0.5},
    "note": "CPU recipe (from scratch, with lesion guidance from the masks, cropped to the scan, equalised, with "
            "scanner augmentation; about 22 minutes on 2 free cores). Train it together with busbra for a second "
            "site. On a GPU use resnet50_cbam at 224 px; see docs/quality.md.",
}

LAYOUT = ("the BUSI layout <root>/{benign,malignant,normal}/NAME.png with masks NAME_mask.png "
          "(the Dataset_BUSI_with_GT folder of the download)")


class BusiDataset(FolderDataset):
    """BUSI images under ``root``; ``classes`` picks a subset (kept in the standard order)."""

    name = "busi"
    modality = "ultrasound"
    # Al-Dhabyani et al. (2020): the images were acquired on LOGIQ E9 and LOGIQ E9 Agile scanners.
    device = "GE LOGIQ E9"

    def __init__(self, root: str | Path | None, classes: str | list[str] | None = None):
        path = check_root(root, "busi", LAYOUT)
        wanted = parse_class_list(classes) if isinstance(classes, str) or classes is None else list(classes)
        unknown = [c for c in wanted if c not in CLASSES]
        if unknown:
            raise DatasetError(f"unknown BUSI class(es) {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
        if wanted and len(wanted) < 2:
            raise DatasetError(f"classes={','.join(wanted)} leaves one class; a classifier needs at least two")
        names = [c for c in CLASSES if not wanted or c in wanted]
        missing = [c for c in names if not (path / c).is_dir()]
        if missing:
            raise DatasetError(f"{path} has no class folder(s) {', '.join(missing)}; expected {LAYOUT}"
                               f"{_hint(path)}")
        samples: list[Sample] = []
        self.orphan_masks = []
        for label, cls in enumerate(names):
            got, orphans = scan_class_folder(path / cls, path, label)
            if not got:
                raise DatasetError(f"class folder {path / cls} holds no images ({', '.join(IMAGE_SUFFIXES)}, "
                                   f"mask files excluded); expected {LAYOUT}")
            samples += got
            self.orphan_masks += orphans
        super().__init__(names, samples, root=path)


def _hint(path: Path) -> str:
    """Point at the right folder when the user gave its parent (the download unpacks one level down)."""
    try:
        below = [p for p in path.iterdir() if p.is_dir() and all((p / c).is_dir() for c in CLASSES)]
    except OSError:
        return ""
    return f"; did you mean {below[0]}?" if below else ""


def _build(root: str | None = None, classes: str = "") -> BusiDataset:
    return BusiDataset(root, classes)


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="busi",
            title="BUSI (Breast Ultrasound Images)",
            description=(
                "The BUSI download's Dataset_BUSI_with_GT folder: benign, malignant and normal subfolders "
                "with images and their lesion masks (NAME_mask.png, extra lesions in NAME_mask_1.png ...)."
            ),
            factory=_build,
            params=(
                Param("classes", "str", "", "Comma-separated subset of benign, malignant, normal "
                      "(empty: all three).", advanced=True),
            ),
            needs_data_dir=True,
            modality="ultrasound",
            recommended=RECOMMENDED,
        )
    ]
