"""A run's split of its dataset: saved once in the run folder (``split.json``) and reused on resume; the
images the modality's acceptance set claims (and their duplicate groups) left out of every part."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from busi_web.data.datasets import DatasetError
from busi_web.data.fingerprints import overlap
from busi_web.data.splits import Split, split_dataset
from busi_web.store import run_files as art
from busi_web.training.feeding import class_counts


def run_split(run_dir: Path, ds: Any, p: dict[str, Any], store: Any, modality: str,
              log: Callable[[str], None]) -> tuple[Split, dict[str, Any] | None]:
    """The run's split (the saved one, else a new duplicate-aware one of ``val_frac``, ``test_frac`` and
    ``seed``), and what the acceptance set took out of the data (``None`` when the modality has no set, or
    the split was saved before). Raises :class:`DatasetError` when a part would be empty or the training part
    would hold one class."""
    path = run_dir / art.SPLIT_JSON
    left_out = None
    if path.exists():
        log("reusing the saved split.json")
        split = Split.load(path, ds)
    else:
        exclude, hashes, left_out = _acceptance_overlap(ds, store, modality)
        split = split_dataset(ds, p["val_frac"], p["test_frac"], p["seed"], exclude=exclude, hashes=hashes)
        if left_out is not None:
            left_out["images"] = len(split.excluded)
            log(f"left out {len(split.excluded)} images: copies of the {modality} acceptance set "
                f"{left_out['set_id']} ({left_out['identical']} identical, {left_out['near_duplicates']} "
                "near-duplicates, the rest their duplicate groups)")
    for part in ("train", "val", "test"):
        if not split.part(part):
            raise DatasetError(f"the {part} part of the split is empty: {len(ds)} images are too few; add "
                               "images or raise val_frac / test_frac")
    present = sum(1 for c in class_counts([ds.labels[i] for i in split.train], len(ds.classes)) if c)
    if present < 2:
        raise DatasetError("the training part holds only one class; add images of the other classes")
    if not path.exists():
        art.write_atomic(path, split.to_json())
    return split, left_out


def _acceptance_overlap(ds: Any, store: Any, modality: str
                        ) -> tuple[list[int], list[int] | None, dict[str, Any] | None]:
    """The images of ``ds`` that the modality's acceptance set claims, their hashes, and a summary (nothing
    when the modality has no set)."""
    accepted = store.acceptance_set(modality)
    if accepted is None:
        return [], None, None
    found = overlap(ds, accepted["items"])
    summary = {"set_id": accepted["id"], "identical": len(found.exact), "near_duplicates": len(found.near)}
    return found.indices, found.phashes, summary
