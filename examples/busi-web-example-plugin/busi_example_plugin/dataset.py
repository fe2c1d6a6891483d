"""A dataset whose images are listed in a CSV file: ``path,label[,mask]``, paths relative to the data folder."""

from __future__ import annotations

import csv
from pathlib import Path

from busi_web.data.datasets import DatasetError, ImageDataset, Sample


class CsvListDataset(ImageDataset):
    """Every row of ``<root>/<file>`` is one image; the classes are the labels in the order they first appear."""

    name = "csvlist"

    def __init__(self, root: str | None, file: str = "labels.csv"):
        if root is None:
            raise DatasetError("the csvlist dataset needs a data folder holding the CSV file and the images")
        folder = Path(root)
        listing = folder / file
        if not listing.is_file():
            raise DatasetError(f"{listing} does not exist; put a CSV file with columns path,label[,mask] there")
        with open(listing, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise DatasetError(f"{listing} needs a header row with the columns path and label (and optionally mask)")
        classes: list[str] = []
        samples = []
        for line, row in enumerate(rows, start=2):
            path = folder / row["path"]
            if not path.is_file():
                raise DatasetError(f"{listing}, line {line}: {path} does not exist")
            if row["label"] not in classes:
                classes.append(row["label"])
            mask = (row.get("mask") or "").strip()
            samples.append(Sample(key=row["path"], label=classes.index(row["label"]), path=str(path),
                                  mask_paths=(str(folder / mask),) if mask else ()))
        super().__init__(classes, samples, root=folder)
