"""Scanner provenance: was the scanner of this image among the training data's devices?

A model trained on GE Logiq scanners has not learned what a Toshiba's images
look like. When a DICOM names its scanner (``Manufacturer`` and
``ManufacturerModelName``), the result says whether that scanner was in the
model's training data, and if not, says so plainly. Names are compared
loosely: lower case, letters and digits only, and a model name matches a
training device that contains it (``LOGIQ7`` matches ``GE Logiq 7``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

UNSEEN = "this scanner was not in the training data"
UNKNOWN = "the training data does not name its scanners: whether this one was among them is unknown"


def _key(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())


def scanner_check(manufacturer: str | None, model_name: str | None, devices: Iterable[str]) -> dict[str, Any] | None:
    """``{"manufacturer", "model_name", "seen", "message"}`` for an image whose file names its scanner model;
    ``None`` when it names none (a plain image, or a DICOM without ManufacturerModelName)."""
    model = _key(model_name)
    if not model:
        return None
    devices = sorted({d for d in devices if _key(d)})
    if not devices:
        return {"manufacturer": manufacturer, "model_name": model_name, "seen": None, "training_devices": [],
                "message": UNKNOWN}
    seen = any(model in _key(d) or _key(d) in _key(f"{manufacturer} {model_name}") for d in devices)
    return {"manufacturer": manufacturer, "model_name": model_name, "seen": seen,
            "message": None if seen else UNSEEN, "training_devices": devices}
