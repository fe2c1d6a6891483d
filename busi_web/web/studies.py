"""Studies: the hospital's PACS over DICOMweb (``PACS_SERVERS``): search studies, open one, diagnose an
instance, and write the result back into the study.

* ``GET /studies``: the page.
* ``GET /api/pacs``: the configured endpoints (name, title, server, whether results may be written back).
* ``GET /api/pacs/<name>/studies?date_from=&date_to=&modality=&accession=&patient_id=&limit=``: QIDO-RS;
  dates are ``YYYY-MM-DD``, modality ``US`` or ``MG``; any other filter is a 400.
* ``GET /api/pacs/<name>/studies/<handle>``: the study's instances (image instances can be diagnosed).
* ``POST /api/pacs/<name>/instances/<handle>/diagnose``: WADO-RS fetches the instance, which is diagnosed as
  an upload is (the same form fields as ``POST /api/predict``, ``frame`` included); with ``write_back=true``
  a Secondary Capture and a Structured Report (:mod:`busi_web.dicom.writing`), and with ``report_pdf=true``
  also the case report as an Encapsulated PDF, are stored into the same study with one STOW-RS request.

Studies and instances travel as opaque handles (:mod:`busi_web.pacs.handles`), never as UIDs. The study list
shows the patient's name, ID and birth date and the accession number, so that a clinician sees whose images
these are (a wrong-patient write-back must be noticed); a diagnosis answer carries no patient attribute, and
the audit keeps only the endpoint, keyed digests of the UIDs and what was written back.
"""

from __future__ import annotations

import copy
import io
import logging
import re
from datetime import date
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify, render_template, request
from pydicom.dataset import Dataset
from pydicom.uid import UID

from busi_web.diagnosis.uploads import Upload, decode_budget, decode_upload
from busi_web.dicom.privacy import quiet, uid_digests
from busi_web.dicom.writing import MANUFACTURER, Answer, encapsulated_pdf, secondary_capture, structured_report
from busi_web.errors import UserError
from busi_web.pacs.client import Pacs, value, values
from busi_web.pacs.endpoints import Endpoint
from busi_web.report.content import operating_text, warnings_of
from busi_web.report.pdf import report_pdf_bytes
from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.web.auth import current_user
from busi_web.web.diagnose import FRAME, Diagnosis, diagnose_uploads
from busi_web.web.helpers import arg
from busi_web.web.metrics import stage

bp = Blueprint("studies", __name__)
log = logging.getLogger(__name__)

HANDLE = re.compile(r"^[0-9a-f]{32}$")
MODALITIES = ("US", "MG")
LIMIT = Param("limit", "int", 50, minimum=1, maximum=500)
WRITE_BACK = Param("write_back", "bool", False)
REPORT_PDF = Param("report_pdf", "bool", False)
CONFIRM = Param("confirm", "bool", False)
TEXT = Param("accession", "str", None)
PATIENT_ID = Param("patient_id", "str", None)


@bp.get("/studies")
def page():
    """Search the PACS, open a study, diagnose an instance and write the result back."""
    servers = [e.public() for e in services_of().pacs.values()]
    return render_template("pages/studies.html", page="studies", servers=servers, modalities=MODALITIES)


@bp.get("/api/pacs")
def servers():
    """The configured DICOMweb endpoints (no URLs' paths, no credentials)."""
    return jsonify({"servers": [e.public() for e in services_of().pacs.values()]})


def _endpoint(name: str) -> Endpoint:
    endpoints = services_of().pacs
    if name not in endpoints:
        known = ", ".join(endpoints) or "none is configured (PACS_SERVERS)"
        raise UserError(f"there is no PACS named {name!r}; the PACS here: {known}", 404)
    return endpoints[name]


def _date(name: str) -> str | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw).strftime("%Y%m%d")
    except ValueError:
        raise UserError(f"{name} must be a date as YYYY-MM-DD, got {raw[:40]!r}", 400, {name: "YYYY-MM-DD"}) from None


def _person(name: Any) -> str | None:
    """A DICOM person name as people write it: ``DOE^JANE`` -> ``DOE, JANE``."""
    parts = [p.strip() for p in str(name or "").split("^") if p.strip()]
    return None if not parts else parts[0] if len(parts) == 1 else f"{parts[0]}, {' '.join(parts[1:])}"


def _when(day: Any, time: Any) -> tuple[str | None, str | None]:
    day, time = str(day or ""), str(time or "")
    shown_day = f"{day[:4]}-{day[4:6]}-{day[6:8]}" if re.match(r"^\d{8}$", day) else None
    shown_time = f"{time[:2]}:{time[2:4]}" if re.match(r"^\d{4}", time) else None
    return shown_day, shown_time


FILTERS = ("date_from", "date_to", "modality", "accession", "patient_id", "limit")


@bp.get("/api/pacs/<name>/studies")
def studies(name: str):
    """Studies matching the filters, each with an opaque handle and what identifies it to the clinician: the
    patient's name, ID and birth date, the accession number, date and description (shown, never audited)."""
    endpoint = _endpoint(name)
    unknown = sorted(set(request.args) - set(FILTERS))
    if unknown:
        raise UserError(f"unknown filter(s) {', '.join(unknown)}; the filters are {', '.join(FILTERS)}", 400,
                        {k: "unknown filter" for k in unknown})
    modality = (request.args.get("modality") or "").strip().upper() or None
    if modality is not None and modality not in MODALITIES:
        raise UserError(f"modality must be one of {', '.join(MODALITIES)}, got {modality[:10]!r}", 400,
                        {"modality": " or ".join(MODALITIES)})
    accession = arg("accession", TEXT)
    if accession is not None and (len(accession) > 16 or any(c in accession for c in "*?\\")):
        raise UserError("accession must be the whole accession number (at most 16 characters, no wildcards)", 400,
                        {"accession": "at most 16 characters"})
    patient_id = arg("patient_id", PATIENT_ID)
    if patient_id is not None and (len(patient_id) > 64 or any(c in patient_id for c in "*?\\")):
        raise UserError("patient_id must be the whole patient ID (at most 64 characters, no wildcards)", 400,
                        {"patient_id": "at most 64 characters"})
    found = Pacs(endpoint).studies(date_from=_date("date_from"), date_to=_date("date_to"), modality=modality,
                                   accession=accession, patient_id=patient_id, limit=arg("limit", LIMIT))
    handles = services_of().handles
    out = []
    for item in found:
        uid = value(item, "StudyInstanceUID")
        if not uid:
            continue
        day, time = _when(value(item, "StudyDate"), value(item, "StudyTime"))
        out.append({"handle": handles.handle(name, str(uid)), "date": day, "time": time,
                    "modalities": [str(m) for m in values(item, "ModalitiesInStudy")],
                    "description": value(item, "StudyDescription"),
                    "accession": value(item, "AccessionNumber"),
                    "patient_name": _person(value(item, "PatientName")), "patient_id": value(item, "PatientID"),
                    "birth_date": _when(value(item, "PatientBirthDate"), None)[0],
                    "series": value(item, "NumberOfStudyRelatedSeries"),
                    "instances": value(item, "NumberOfStudyRelatedInstances")})
    return jsonify({"server": endpoint.public(), "studies": out})


@bp.get("/api/pacs/<name>/studies/<handle>")
def study(name: str, handle: str):
    """The instances of one study, in series and instance order; image instances can be diagnosed."""
    endpoint = _endpoint(name)
    (study_uid,) = _resolve(name, handle, 1)
    handles = services_of().handles
    out = []
    for item in Pacs(endpoint).instances(study_uid):
        series_uid, instance_uid = value(item, "SeriesInstanceUID"), value(item, "SOPInstanceUID")
        if not series_uid or not instance_uid:
            continue
        sop_class = str(value(item, "SOPClassUID") or "")
        sop_name = UID(sop_class).name if sop_class else "unknown"
        modality = str(value(item, "Modality") or "")
        own = str(value(item, "SeriesDescription") or "").startswith("busi-web ")
        out.append({"handle": handles.handle(name, study_uid, str(series_uid), str(instance_uid)),
                    "series_description": value(item, "SeriesDescription"), "busi_web_result": own,
                    "series_number": value(item, "SeriesNumber"), "instance_number": value(item, "InstanceNumber"),
                    "modality": modality or None, "sop_class": sop_name,
                    # busi-web's own pictures and reports are results, not scans: never offered for diagnosis.
                    "diagnosable": "Image Storage" in sop_name and modality in ("US", "MG", "OT", "") and not own,
                    "frames": int(value(item, "NumberOfFrames") or 1), "rows": value(item, "Rows"),
                    "columns": value(item, "Columns")})
    out.sort(key=lambda i: (int(i["series_number"] or 0), int(i["instance_number"] or 0)))
    return jsonify({"server": endpoint.public(), "study": handle, "instances": out})


def _resolve(name: str, handle: str, parts: int) -> tuple[str, ...]:
    if not HANDLE.match(handle or ""):
        raise UserError("that is not a study or instance handle of this server; search the studies again", 404)
    return services_of().handles.resolve(name, handle, parts)


@bp.post("/api/pacs/<name>/instances/<handle>/diagnose")
def diagnose_instance(name: str, handle: str):
    """Fetch one instance, diagnose it, and (``write_back``) store the results into its study.

    The diagnosis is answered whatever happens to the write-back: ``written`` says what was stored, or why
    nothing was (refused, already there, or the PACS failed), and every outcome is audited."""
    endpoint = _endpoint(name)
    study_uid, series_uid, instance_uid = _resolve(name, handle, 3)
    write_back, report_pdf = arg("write_back", WRITE_BACK), arg("report_pdf", REPORT_PDF)
    if (write_back or report_pdf) and not endpoint.write_back:
        raise UserError(f"PACS {name} is read-only for busi-web (write_back is false in PACS_SERVERS); diagnose "
                        "without writing back", 403, {"write_back": "not allowed for this PACS"})
    pacs = Pacs(endpoint)
    config = current_app.config
    with stage("decode"):
        data = pacs.retrieve(study_uid, series_uid, instance_uid)
        # The sizes modalities produce (a full-field mammogram is 25-50 MB): MAX_PACS_MB, not the upload limit;
        # memory stays bounded by MAX_IMAGE_PIXELS and the decode budget.
        upload = decode_upload(io.BytesIO(data), f"PACS {name} instance", int(config["MAX_IMAGE_PIXELS"]),
                               int(float(config["MAX_PACS_MB"]) * 2**20),
                               max_side=int(config.get("MAX_IMAGE_SIDE") or 0), frame=arg("frame", FRAME),
                               budget=decode_budget(current_app._get_current_object()),
                               limit=("instances from the PACS", "an administrator can raise MAX_PACS_MB"))
    header = upload.dicom.header  # what names the image on the page: series and image numbers, no identifier
    if is_own_result(header):
        raise UserError("this instance is one of busi-web's own results (a picture or a report it wrote back), not "
                        "a scan; choose an image of the study's ultrasound or mammography series", 400)
    upload.filename = f"{name}: series {header.get('SeriesNumber', '?')}, image {header.get('InstanceNumber', '?')}"
    diagnosis = diagnose_uploads([upload], {"pacs": name})
    diagnosis.body["written"] = _write_back(pacs, diagnosis, upload, report_pdf, write_back,
                                            arg("confirm", CONFIRM)) if write_back or report_pdf else None
    return jsonify(diagnosis.body)


def is_own_result(header: Any) -> bool:
    """Whether an instance is busi-web's own Secondary Capture, Structured Report or case report."""
    return str(header.get("Manufacturer", "") or "") == MANUFACTURER or \
        str(header.get("SeriesDescription", "") or "").startswith("busi-web ")


def needs_confirmation(body: dict[str, Any]) -> list[str]:
    """Why writing this answer into the PACS needs an explicit confirmation (empty: it does not)."""
    reasons = []
    if body["model"].get("demo"):
        reasons.append("the model is a demo, trained on synthetic images")
    if body["results"][0].get("withheld"):
        reasons.append("the image is unlike the training images, so no class is given")
    return reasons


def _answer(body: dict[str, Any], upload: Upload, confirmed_by: str | None) -> Answer:
    result, model = body["results"][0], body["model"]
    return Answer(label=result["label"], probabilities=result["probabilities"], lesion=result["lesion"],
                  model_name=model["name"], run_id=int(body["run_id"]), frame=upload.dicom.frame,
                  frames=upload.dicom.frames, scale=float(result["scale"]), notice=body["notice"],
                  warnings=warnings_of(body, 0), verdict=(model.get("verdict") or {}).get("text", ""),
                  operating=operating_text(result.get("operating_point")), demo=bool(model.get("demo")),
                  confirmed_by=confirmed_by)


def _write_back(pacs: Pacs, diagnosis: Diagnosis, upload: Upload, report_pdf: bool, images: bool,
                confirm: bool) -> dict[str, Any]:
    """Store the diagnosis into the instance's study (one STOW-RS request): the Secondary Capture and the
    Structured Report (``images``), the case report (``report_pdf``). Never raises: the answer says what was
    stored, or why nothing was, and the audit keeps every outcome.

    Refused without ``confirm`` for a demo model or a withheld class; refused when the PACS already holds the
    same result (the objects' UIDs come from the source instance, the frame and the model)."""
    body, pred = diagnosis.body, diagnosis.predictions[0]
    source = upload.dicom.header
    digests = uid_digests(source, current_app.config["SECRET_KEY"])
    audit = {"pacs": pacs.endpoint.name, "study": digests["study"], "instance": digests["instance"]}
    store, user = services_of().store, current_user.name
    reasons = needs_confirmation(body)
    if reasons and not confirm:
        error = (f"not written back: {'; '.join(reasons)}. Confirm to write it anyway (the report records who "
                 "confirmed); the diagnosis itself was made")
        store.audit("pacs.store.refused", user=user, run_id=body["run_id"], **audit, reasons=reasons)
        return {"refused": True, "error": error, "needs_confirmation": reasons}
    answer = _answer(body, upload, user if reasons else None)
    audit["series_description"] = answer.description
    try:
        made = legacy_times_fixed(source)
        objects = []
        with quiet():  # the libraries' warnings quote patient names: none reaches the log
            if images:
                picture = np.asarray(pred.picture(diagnosis.options["alpha"], diagnosis.options["colormap"]))
                objects += [secondary_capture(made, picture, answer), structured_report(made, answer)]
            if report_pdf:
                objects.append(encapsulated_pdf(made, report_pdf_bytes(diagnosis.report(0)), answer))
        audit["objects"] = [UID(str(o.SOPClassUID)).name for o in objects]
        if {str(o.SOPInstanceUID) for o in objects} <= pacs.held(objects):
            store.audit("pacs.store.refused", user=user, run_id=body["run_id"], **audit,
                        reasons=["already written back"])
            return {"refused": True, "error": "not written back again: the PACS already holds this result (the same "
                                              "image, frame and model); nothing new was stored",
                    "series_description": answer.description}
        stored = pacs.store(objects)
    except UserError as exc:
        store.audit("pacs.store.failed", user=user, run_id=body["run_id"], **audit, error=str(exc))
        return {"refused": False, "error": f"{exc} The diagnosis itself was made and audited."}
    except Exception as exc:  # noqa: BLE001 - building DICOM from a foreign header may fail in many ways
        log.warning("write-back failed: %s", type(exc).__name__)
        store.audit("pacs.store.failed", user=user, run_id=body["run_id"], **audit, error=type(exc).__name__)
        return {"refused": False, "error": "the results could not be made into DICOM objects for this study "
                                           f"({type(exc).__name__}); nothing was stored. The diagnosis itself was "
                                           "made and audited"}
    store.audit("pacs.store", user=user, run_id=body["run_id"], **audit, confirmed=bool(reasons))
    return {"objects": stored.stored, "series_description": answer.description, "confirmed": bool(reasons)}


def legacy_times_fixed(source: Dataset) -> Dataset:
    """A copy of ``source`` whose times in the old ACR-NEMA form (``11:25:01``) are in DICOM's (``112501``): the
    objects written back copy them, and DICOM writers refuse the old form."""
    fixed = copy.copy(source)
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime"):
        raw = source.get(keyword)
        if raw is not None and ":" in str(raw):
            setattr(fixed, keyword, str(raw).replace(":", ""))
    return fixed
