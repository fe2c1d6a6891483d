"""The ``busbra`` dataset: BUS-BRA (breast ultrasound, Rio de Janeiro) as the official download lays it out.

::

    <root>/Images/bus_0001-l.png     8-bit grayscale, cropped to the scan area
    <root>/Masks/mask_0001-l.png     the lesion outline (0/255)
    <root>/bus_data.csv              ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX
    <root>/5-fold-cv.csv             ID,Pathology,kFold,valid_1..valid_5
    <root>/10-fold-cv.csv            ID,Pathology,kFold,valid_1..valid_10

The label is ``Pathology`` (benign or malignant: the set has no normal
images). ``Case`` is the patient: it is each sample's ``group``, so one
patient's images never sit on both sides of a split. Each sample carries
its metadata in ``extra``: ``birads``, ``device`` (the scanner, without the
probe's frequency, which is ``probe``), ``histology``, ``side`` and ``case``.

``partition`` picks an official partition: ``5-fold:K`` or ``10-fold:K``
(fold ``K`` from 1). In such a file an image whose ``kFold`` is ``K`` is in
the test part of fold ``K``; of the others, ``valid_K`` = 1 marks training
and 0 validation. Left empty, the project's own split is used (grouped by
patient, stratified by class).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from busi_web.data.datasets import DatasetError, Sample
from busi_web.hookspecs import hookimpl
from busi_web.specs import DatasetSpec, Param

from .imagefolder import FolderDataset, check_root

CLASSES = ["benign", "malignant"]
PARTITIONS = {"5-fold": (5, "5-fold-cv.csv"), "10-fold": (10, "10-fold-cv.csv")}
LAYOUT = ("the BUS-BRA download: <root>/Images/bus_NNNN-x.png, <root>/Masks/mask_NNNN-x.png and "
          "<root>/bus_data.csv (the BUSBRA folder)")
_PARTITION = re.compile(r"^(?P<cv>5-fold|10-fold):(?P<fold>\d+)$")
_NEEDED = ("ID", "Case", "Pathology", "Device")

# The recipe the Train page offers: BUSI's (S with the scan steps, adopted by the sites rule of docs/quality.md),
# epochs budgeted for three times as many images.
RECOMMENDED = {
    "backbone": "resnet18",
    "backbone_params": {"dropout": 0.3, "output_stride": 16},
    "train": {"epochs": 40, "batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05,
              "scheduler": "cosine", "input_size": 128, "resize": 128, "hflip": True, "rotation": 15.0,
              "crop_scale": 0.5, "intensity": 0.2, "label_smoothing": 0.1, "ema": 0.99, "lesion_loss": 1.0,
              "balance": "weighted_loss", "monitor": "val_macro_f1", "patience": 0, "seed": 42,
              "val_frac": 0.15, "test_frac": 0.15, "scan_crop": True, "normalise": "equalize", "scanner": 0.5},
    "note": "CPU recipe: BUSI's, with fewer epochs for three times the images. Train it together with busi to "
            "learn the normal class and two sites; see docs/quality.md.",
}


def device_and_probe(text: str) -> tuple[str, str]:
    """``"GE Logiq 7 @10-14MHz"`` -> ``("GE Logiq 7", "10-14MHz")``; a device without ``@`` has no probe."""
    device, _, probe = text.partition("@")
    return device.strip(), probe.strip()


def parse_partition(text: str) -> tuple[str, int] | None:
    """``"5-fold:3"`` -> ``("5-fold", 3)``; empty -> ``None``; anything else a :class:`DatasetError`."""
    text = (text or "").strip()
    if not text:
        return None
    m = _PARTITION.match(text)
    if m is None:
        raise DatasetError(f"partition {text!r} is not one of BUS-BRA's; write 5-fold:K (K from 1 to 5) or "
                           "10-fold:K (K from 1 to 10), or leave it empty for the project's own split")
    cv, fold = m.group("cv"), int(m.group("fold"))
    if not 1 <= fold <= PARTITIONS[cv][0]:
        raise DatasetError(f"partition {text!r}: the {cv} partition has folds 1 to {PARTITIONS[cv][0]}")
    return cv, fold


def _read_csv(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path} has no column(s) {', '.join(missing)}; expected the BUS-BRA download's "
                                   f"{path.name}")
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; expected {LAYOUT}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; replace it with the download's file") from None


class BusbraDataset(FolderDataset):
    """BUS-BRA under ``root`` (see the module docstring). ``partition``: an official fold, or empty."""

    name = "busbra"
    modality = "ultrasound"

    def __init__(self, root: str | Path | None, partition: str = ""):
        path = check_root(root, "busbra", LAYOUT)
        if not (path / "bus_data.csv").is_file() and (path / "BUSBRA" / "bus_data.csv").is_file():
            raise DatasetError(f"{path} holds the BUS-BRA folder one level down; did you mean {path / 'BUSBRA'}?")
        self.partition = parse_partition(partition)
        rows = _read_csv(path / "bus_data.csv", _NEEDED)
        samples: list[Sample] = []
        self.skipped: list[str] = []
        for line, row in enumerate(rows, start=2):
            ident, pathology = row["ID"], row["Pathology"].lower()
            if pathology not in CLASSES:
                self.skipped.append(f"bus_data.csv line {line} ({ident or 'no ID'}): Pathology {pathology!r} is "
                                    "neither benign nor malignant")
                continue
            image = path / "Images" / f"{ident}.png"
            if not ident or not image.is_file():
                self.skipped.append(f"bus_data.csv line {line}: no image Images/{ident}.png")
                continue
            mask = path / "Masks" / f"mask_{ident.removeprefix('bus_')}.png"
            device, probe = device_and_probe(row["Device"])
            extra: dict[str, Any] = {"device": device, "probe": probe, "case": row["Case"],
                                     "birads": row.get("BIRADS", ""), "histology": row.get("Histology", ""),
                                     "side": row.get("Side", "")}
            samples.append(Sample(key=f"Images/{ident}.png", label=CLASSES.index(pathology), path=str(image),
                                  mask_paths=(str(mask),) if mask.is_file() else (),
                                  group=f"case {row['Case']}" if row["Case"] else None, extra=extra))
        if not samples:
            raise DatasetError(f"no usable rows in {path / 'bus_data.csv'}; expected {LAYOUT}")
        self.orphan_masks = []
        super().__init__(list(CLASSES), samples, root=path)

    def official_split(self) -> dict[str, list[int]] | None:
        """The chosen official fold as ``{"train", "val", "test"}`` sample indices, or ``None`` (no partition).

        Raises :class:`DatasetError` when the partition file leaves an image out or puts one patient on two
        sides (the file and ``bus_data.csv`` then come from different downloads)."""
        if self.partition is None:
            return None
        cv, fold = self.partition
        assert self.root is not None
        file = self.root / PARTITIONS[cv][1]
        rows = {r["ID"]: r for r in _read_csv(file, ("ID", "kFold", f"valid_{fold}"))}
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        missing = []
        for i, s in enumerate(self.samples):
            ident = Path(s.key).stem
            row = rows.get(ident)
            if row is None:
                missing.append(ident)
                continue
            if row["kFold"] == str(fold):
                parts["test"].append(i)
            else:
                parts["train" if row[f"valid_{fold}"] in ("1", "1.0") else "val"].append(i)
        if missing:
            raise DatasetError(f"{file.name} has no row for {len(missing)} image(s), e.g. {missing[0]}; use the "
                               "partition files of the same download as bus_data.csv")
        side: dict[str, str] = {}
        for part, idx in parts.items():
            for i in idx:
                case = self.samples[i].group or ""
                if side.setdefault(case, part) != part:
                    raise DatasetError(f"{file.name} fold {fold} puts {case} in both {side[case]} and {part}")
        return parts


def _build(root: str | None = None, partition: str = "") -> BusbraDataset:
    return BusbraDataset(root, partition)


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="busbra",
            title="BUS-BRA (breast ultrasound, Brazil)",
            description=(
                "The BUS-BRA download's BUSBRA folder: Images/, Masks/ and bus_data.csv. Benign and malignant "
                "(biopsy-proven; no normal images), grouped by patient (Case), with BI-RADS, device, histology "
                "and side for each image. Cite Gómez-Flores et al., Medical Physics 51(4), 2024."
            ),
            factory=_build,
            params=(
                Param("partition", "str", "", "An official partition, 5-fold:K or 10-fold:K (fold K from 1); "
                      "empty: the project's own split, grouped by patient.", advanced=True),
            ),
            needs_data_dir=True,
            modality="ultrasound",
            recommended=RECOMMENDED,
        )
    ]
