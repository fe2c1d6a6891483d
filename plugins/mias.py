"""The ``mias`` dataset: regions of interest cropped from mini-MIAS mammograms.

::

    <root>/Info.txt          REFNUM BG CLASS SEVERITY X Y RADIUS, one row per abnormality
    <root>/mdb001.pgm        (or mdb001.png), one scan per REFNUM

Info.txt is read leniently: the header, blank lines and stray text are
skipped, a scan may have several rows (one per lesion), and an abnormality
may come without coordinates (e.g. calcifications spread over the breast).
Such a row cannot be cropped around and is left out, with the reason kept in
``dataset.skipped``. X and Y are pixels with the origin at the bottom-left.

Tasks: ``severity`` (benign vs malignant; abnormal rows only) and
``abnormality`` (normal vs abnormal). Each sample is one square crop: centred
on a lesion, or for a normal scan at a random place inside the breast. Left
and right breasts of one woman are consecutive numbers (mdb001/mdb002); both
get the same ``Sample.group``, so the split keeps a woman in one part and every
crop of a lesion stays with her. Training-time augmentation (the 8
rotations/mirrors plus a small shift) and the balancing of the original study
expand only the training part (:meth:`MiasDataset.training_items`).

``intensity='crop'`` (the default) standardises each crop to its own mean and
spread (:func:`~plugins.mias_crops.standardise`): on mini-MIAS a crop's
overall brightness (exposure, density) holds no severity signal, and a CNN
that keys on it scores below chance on held-out women.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from busi_web.data.datasets import DatasetError, ImageDataset, Sample, read_image
from busi_web.hookspecs import hookimpl
from busi_web.specs import DatasetSpec, Param

from .mias_crops import (
    DIHEDRAL,
    INTENSITY,
    crop_window,
    dihedral,
    mias_to_pixel,
    normal_centre,
    resize_square,
    roi_crop,
    standardise,
    window_side,
)
from .mias_info import (
    ABNORMALITIES,
    LAYOUT,
    InfoRow,
    check_root,
    info_file,
    pair_of,
    parse_classes,
    parse_info,
    scan_files,
)

__all__ = ["ABNORMALITIES", "BALANCING", "TASKS", "InfoRow", "MiasDataset", "balance_items", "crop_for_model",
           "pair_of", "parse_info", "register_datasets"]

# The Train page's recipe: the study's CNN on 48 px crops; the crops are augmented by the dataset itself.
RECOMMENDED = {
    "backbone": "mammo_cnn",
    "train": {"epochs": 6, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "scheduler": "cosine",
              "input_size": 48, "resize": 48, "hflip": False, "rotation": 0.0, "balance": "weighted_loss",
              "monitor": "val_loss", "patience": 0, "val_frac": 0.2, "test_frac": 0.2},
    "note": "Crops come from the dataset at crop_size (48 px): keep input_size and resize equal to it. Each epoch "
            "already shows every crop in 8 orientations. See the README, 'Mammography'.",
}
TASKS = {"severity": ["benign", "malignant"], "abnormality": ["normal", "abnormal"]}
BALANCING = ("none", "class", "full")


class MiasDataset(ImageDataset):
    """Crops of the mini-MIAS scans under ``root`` for ``task``; see the module docstring."""

    name = "mias"
    modality = "mammography"
    channels = 1
    has_duplicates = False  # crops are grouped by woman; hashing crops would only merge unrelated tissue

    def __init__(self, root: str | Path | None, task: str = "severity", classes: str | Sequence[str] = "",
                 crop_size: int = 48, scale_by_radius: bool = False, augment: bool = True, jitter: int = 3,
                 balance: str = "none", normal_crops: int = 1, seed: int = 0, intensity: str = "crop"):
        if task not in TASKS:
            raise DatasetError(f"unknown task {task!r}; choose {' or '.join(TASKS)}")
        if balance not in BALANCING:
            raise DatasetError(f"unknown balancing {balance!r}; choose one of {', '.join(BALANCING)}")
        if intensity not in INTENSITY:
            raise DatasetError(f"unknown intensity {intensity!r}; choose one of {', '.join(INTENSITY)}")
        path = check_root(root)
        wanted = parse_classes(classes)
        self.task, self.crop_size, self.scale_by_radius = task, int(crop_size), bool(scale_by_radius)
        self.augment, self.jitter, self.balance, self.seed = bool(augment), int(jitter), balance, int(seed)
        self.intensity = intensity
        info = info_file(path)
        scans = scan_files(path)
        samples: list[Sample] = []
        self.skipped: list[str] = []
        seen: dict[str, int] = {}
        for row in parse_info(info):
            scan = scans.get(row.refnum)
            k = seen[row.refnum] = seen.get(row.refnum, -1) + 1
            if row.normal and task == "severity" or wanted and not row.normal and row.abnormality not in wanted:
                continue
            if scan is None:
                self.skipped.append(f"{row.refnum} (Info.txt line {row.line}): no scan {row.refnum}.pgm/.png")
                continue
            if not row.normal and (row.x is None or row.severity is None):
                self.skipped.append(f"{row.refnum} (Info.txt line {row.line}): {row.abnormality} without "
                                    "coordinates or severity, nothing to centre a crop on")
                continue
            extra = {"refnum": row.refnum, "abnormality": row.abnormality, "severity": row.severity,
                     "x": row.x, "y": row.y, "radius": row.radius, "background": row.background}
            if row.normal:
                samples += [Sample(key=f"{row.refnum}#n{j}", label=0, path=str(scan), group=pair_of(row.refnum),
                                   extra={**extra, "crop": j}) for j in range(int(normal_crops))]
            else:
                label = int(row.severity == "M") if task == "severity" else 1
                samples.append(Sample(key=f"{row.refnum}#{k}", label=label, path=str(scan),
                                      group=pair_of(row.refnum), extra=extra))
        if not samples:
            raise DatasetError(f"no usable rows in {path / 'Info.txt'} for task {task!r}"
                               f"{' and classes ' + ','.join(wanted) if wanted else ''}; expected {LAYOUT}")
        super().__init__(TASKS[task], samples, root=path)
        self._context: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_context"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- geometry --------------------------------------------------------------------------------------------
    def window(self, index: int) -> int:
        """Side in scan pixels of sample ``index``'s crop window (before resizing to ``crop_size``)."""
        return window_side(self.crop_size, self.samples[index].extra["radius"], self.scale_by_radius)

    def centre(self, index: int, scan: np.ndarray) -> tuple[int, int]:
        """``(column, row)`` of sample ``index``'s crop centre in the scan."""
        e = self.samples[index].extra
        if e["x"] is not None:
            return mias_to_pixel(e["x"], e["y"], scan.shape[0])
        # Normal scan: a random place inside the breast, the same for a given (seed, key) on every machine.
        rng = np.random.default_rng([self.seed, zlib.crc32(self.samples[index].key.encode())])
        return normal_centre(scan, self.window(index), rng)

    def _margin(self, index: int) -> int:
        """Jitter in scan pixels: ``jitter`` output pixels scaled by the window's zoom."""
        return int(round(self.jitter * self.window(index) / self.crop_size))

    def context(self, index: int) -> np.ndarray:
        """The crop window plus the jitter margin on every side, cut once per sample and kept."""
        with self._lock:
            patch = self._context.get(index)
        if patch is None:
            scan = read_image(self.samples[index].path, grayscale=True)
            col, row = self.centre(index, scan)
            patch = crop_window(scan, col, row, self.window(index) + 2 * self._margin(index))
            with self._lock:
                self._context[index] = patch
        return patch

    def _finish(self, patch: np.ndarray) -> np.ndarray:
        """A cut window as the model sees it: resized to ``crop_size``, then standardised if asked."""
        patch = resize_square(patch, self.crop_size)
        return standardise(patch) if self.intensity == "crop" else patch

    # -- the ImageDataset interface --------------------------------------------------------------------------
    def load_image(self, index: int) -> np.ndarray:
        m, side = self._margin(index), self.window(index)
        return self._finish(self.context(index)[m:m + side, m:m + side])

    def training_items(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """One epoch of training: each crop in its 8 rotations/mirrors (with ``augment``), then balanced."""
        variants = DIHEDRAL if self.augment else 1
        items = [(i, v) for i in indices for v in range(variants)]
        return balance_items(items, [self._balance_key(i) for i, _ in items], self.balance)

    def _balance_key(self, index: int) -> tuple[str, int]:
        s = self.samples[index]
        # 'class' equalises benign and malignant within one abnormality class; 'full' every label overall.
        return (s.extra["abnormality"] if self.balance == "class" and self.task == "severity" else "", s.label)

    def training_image(self, index: int, variant: int) -> np.ndarray:
        """Training view ``variant`` of a crop: shifted by up to ``jitter`` pixels, then dihedral ``variant % 8``."""
        m, side = self._margin(index), self.window(index)
        dy, dx = (torch.randint(0, 2 * m + 1, (2,)).tolist() if m else (m, m))
        patch = self._finish(self.context(index)[dy:dy + side, dx:dx + side])
        return dihedral(patch, variant) if self.augment else patch


def balance_items(items: list[tuple[int, int]], keys: Sequence[tuple[str, int]], mode: str) -> list[tuple[int, int]]:
    """Top up every label of a stratum to the stratum's largest label with more copies (new variant numbers).

    ``keys[k]`` is ``(stratum, label)`` of ``items[k]``. ``class``: strata are the
    abnormality classes; ``full``: one stratum, so every label matches the largest.
    Copies cycle through the label's items in order; copy ``r`` of item ``(i, v)``
    is ``(i, v + 8 r)``, the same rotation/mirror with its own random shift.
    """
    if mode == "none":
        return list(items)
    groups: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for item, (stratum, label) in zip(items, keys, strict=True):
        groups.setdefault(stratum, {}).setdefault(label, []).append(item)
    out = list(items)
    for by_label in groups.values():
        target = max(len(v) for v in by_label.values())
        for members in by_label.values():
            for k in range(target - len(members)):
                i, v = members[k % len(members)]
                out.append((i, v + DIHEDRAL * (1 + k // len(members))))
    return out


def crop_for_model(image: np.ndarray, col: int, row: int, params: dict, radius: float | None = None,
                   ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The crop a model trained on this dataset with ``params`` sees around ``(col, row)`` of a full mammogram.

    Checkpoints saved before the ``intensity`` parameter existed saw the scan's own grey levels: a missing
    key means ``'scan'``, not the current default.
    """
    return roi_crop(image, col, row, int(params.get("crop_size", 48)), radius,
                    bool(params.get("scale_by_radius", False)), str(params.get("intensity", "scan")))


def _build(root: str | None = None, task: str = "severity", classes: str = "", crop_size: int = 48,
           scale_by_radius: bool = False, augment: bool = True, jitter: int = 3, balance: str = "none",
           normal_crops: int = 1, seed: int = 0, intensity: str = "crop") -> MiasDataset:
    return MiasDataset(root, task, classes, crop_size, scale_by_radius, augment, jitter, balance, normal_crops, seed,
                       intensity)


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="mias",
            title="mini-MIAS mammograms (regions of interest)",
            description=(
                "The mini-MIAS folder (Info.txt plus mdbNNN.pgm or .png scans). Each sample is a square crop "
                "around an abnormality (or, for normal scans, inside the breast); both breasts of a woman stay "
                "in one split part. Set the training input_size and resize to the crop size."
            ),
            factory=_build,
            params=(
                Param("task", "choice", "severity", "'severity': benign vs malignant (abnormal scans only); "
                      "'abnormality': normal vs abnormal.", choices=tuple(TASKS)),
                Param("classes", "str", "", "Comma-separated abnormality classes to keep (CALC, CIRC, SPIC, "
                      "MISC, ARCH, ASYM); empty: all."),
                Param("crop_size", "int", 48, "Side of the crop in pixels: 48 as in the original study, 128 or "
                      "224 for ResNets.", minimum=16, maximum=512),
                Param("scale_by_radius", "bool", False, "Cut a window that holds the whole lesion (its radius "
                      "from Info.txt) and shrink it to crop_size, instead of a fixed window."),
                Param("intensity", "choice", "crop", "'crop': each crop standardised to its own mean and spread "
                      "(film exposure and breast density differ between scans and, on mini-MIAS, mislead a small "
                      "model); 'scan': the scan's grey levels as they are.", choices=INTENSITY),
                Param("augment", "bool", True, "Training only: each crop in its 8 rotations/mirrors per epoch."),
                Param("jitter", "int", 3, "Training only: random shift of the crop, up to this many pixels.",
                      minimum=0, maximum=64),
                Param("balance", "choice", "none", "Training only: 'class' equalises benign and malignant "
                      "within each abnormality class (severity task; otherwise as 'full'), 'full' makes every class "
                      "as large as the largest.",
                      choices=BALANCING),
                Param("normal_crops", "int", 1, "Crops per normal scan (abnormality task).", minimum=1,
                      maximum=64, advanced=True),
                Param("seed", "int", 0, "Seed of the crop positions in normal scans.", minimum=0, advanced=True),
            ),
            needs_data_dir=True,
            modality="mammography",
            recommended=RECOMMENDED,
            roi_crop=crop_for_model,
        )
    ]
