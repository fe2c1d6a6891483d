"""A run's folder: the names of the files a run leaves there, atomic writes, and reading them back.

Every file is written to a temporary file in the same folder and renamed
over its name (``os.replace``), so a reader (the web page, a user copying the
folder) never sees half a file, even when the trainer is killed mid-write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

HISTORY_PNG = "training_history.png"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
REPORT_TXT = "classification_report.txt"
METRICS_JSON = "metrics.json"
ACCEPTANCE_JSON = "acceptance.json"
MODEL_CARD_JSON = "model_card.json"
PARAMS_JSON = "params.json"
SPLIT_JSON = "split.json"
FINGERPRINTS_JSON = "fingerprints.json"  # the training and validation images' fingerprints (acceptance overlap)
LOG_TXT = "training_log.txt"
BEST_PT = "best_model.pt"
LAST_PT = "last.pt"


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def artifact_names(run_dir: str | Path | None) -> list[str]:
    """Regular files in a run folder, sorted (not the hidden temporary files of atomic writes)."""
    folder = Path(run_dir or "")
    if not run_dir or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_json(run_dir: str | Path | None, name: str) -> dict[str, Any] | None:
    """A JSON object file of a run folder (e.g. :data:`METRICS_JSON`), or ``None`` when absent or unreadable.

    Files are written atomically, so only a foreign file can be unreadable.
    """
    if not run_dir:
        return None
    try:
        data = json.loads((Path(run_dir) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
