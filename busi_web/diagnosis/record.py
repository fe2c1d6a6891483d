"""The audit row of one diagnosis: the same for every path that diagnoses (the page and API, the PACS, the
command line), so that the audit answers "what did the model say, and which model" whatever the path.

A file's name may be its patient's (exports often are): the row keeps a keyed digest of it (the same name gives
the same digest, so a case can still be traced) and, for a DICOM file, keyed digests of its UIDs; never a name,
an identifier or a UID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from busi_web.dicom.privacy import keyed_digest, uid_digests

if TYPE_CHECKING:  # torch-free at run time: the command line imports this at start
    from busi_web.diagnosis.uploads import Upload
    from busi_web.model.prediction import Prediction


def audited_model(model: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit keeps of the model beside its run id: enough to know later what answered, and how good."""
    return {"name": model["name"], "training_data": model["training_data"]["dataset"],
            "accepted": (model.get("verdict") or {}).get("accepted"), "acceptance": model.get("acceptance"),
            "temperature": (model.get("calibration") or {}).get("temperature")}


def diagnosis_row(upload: Upload, pred: Prediction, model: Mapping[str, Any], key: str, *,
                  lesion: Any = None, scanner: Any = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``diagnose`` audit row's detail for one image; ``key`` is the app's secret (for the digests)."""
    dicom = None if upload.dicom is None else {**upload.dicom.describe(), "uids": uid_digests(upload.dicom.header,
                                                                                              key)}
    return {"file_digest": keyed_digest(key, upload.filename), "label": pred.label, "withheld": pred.withheld,
            "probabilities": pred.probabilities, "explainer": pred.explainer, "target": pred.target_label,
            "stored": upload.stored_path, "modality": model["modality"], "demo": model["demo"], "ood": pred.ood,
            "model": audited_model(model), "lesion": lesion, "dicom": dicom, "operating_point": pred.operating,
            "scanner": scanner, **(extra or {})}
