"""DICOM files through ``POST /api/predict`` and ``busi-web predict``: the modality picks its default model, a
frame is chosen, the spacing is read, the audit keeps digests, a stored upload is de-identified, and no
patient data reaches an answer, the audit or the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from tests.dicom_phantoms import (
    ACCESSION,
    PATIENT_ID,
    PATIENT_NAME,
    compressed,
    instance,
    phantom,
    report,
    to_bytes,
)
from tests.helpers import CLINICIAN, finished_run, make_user_client, run_cli, upload

CINE = np.stack([phantom(seed=k) for k in range(3)])


def secrets_of(ds) -> list[str]:
    return [PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, ACCESSION, "19700101",
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]


@pytest.fixture
def served(make_app):
    """An app with an ultrasound and a mammography default model, and a clinician's client."""
    app = make_app(STORE_UPLOADS=True)
    store = app.extensions["busi_web"].store
    us = finished_run(store, promote=True)
    mg = finished_run(store, seed=4, modality="mammography")
    store.set_default(mg["id"], by="test", reason="the mammography model")
    return {"app": app, "store": store, "us": us["id"], "mg": mg["id"],
            "client": make_user_client(app, *CLINICIAN, "clinician")}


def test_the_modality_picks_the_model_and_nothing_identifying_comes_back(served, caplog):
    client, store = served["client"], served["store"]
    us = compressed(instance(phantom(), spacing=(0.1, 0.1)), JPEGLSLossless)
    mg = instance(phantom(seed=2).astype(np.uint16) * 16, modality="MG", window=(2048, 4096))
    caplog.set_level(logging.DEBUG)
    for ds, run_id, modality in ((us, served["us"], "ultrasound"), (mg, served["mg"], "mammography")):
        r = client.post("/api/predict", data=upload((to_bytes(ds), "case")))
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["run_id"] == run_id and body["model"]["modality"] == modality
        result = body["results"][0]
        assert result["dicom"]["modality"] == ds.Modality and result["dicom"]["frames"] == 1
        for secret in secrets_of(ds):
            assert secret not in r.get_data(as_text=True), secret
    assert served["client"].post("/api/predict", data=upload((to_bytes(us), "case"))).get_json()[
        "results"][0]["pixel_spacing_source"] == "PixelSpacing"
    # A file named after its patient: the answer echoes the name to its sender, the audit does not keep it.
    r = client.post("/api/predict", data=upload((to_bytes(us), "TESTPATIENT_JANE.dcm")))
    assert r.status_code == 200 and r.get_json()["results"][0]["filename"] == "TESTPATIENT_JANE.dcm"
    # The audit keeps digests of the UIDs, not the UIDs, and never the patient.
    rows = store.audit_log("diagnose")
    dumped = json.dumps(rows)
    for ds in (us, mg):
        for secret in secrets_of(ds):
            assert secret not in dumped and secret not in caplog.text, secret
    digests = [row["detail"]["dicom"]["uids"] for row in rows]
    assert all(len(d["study"]) == 32 for d in digests)
    assert len({d["study"] for d in digests}) == 2  # the US rows share their study's digest
    # The stored upload is de-identified and holds the same pixels.
    stored = [row["detail"]["stored"] for row in rows]
    kept = pydicom.dcmread(stored[-1])
    with open(stored[-1], "rb") as f:
        raw = f.read()
    for secret in secrets_of(us):
        assert secret.encode() not in raw
    # Burned-in text is not looked for: a file that does not say "no burned-in annotation" is not marked clean.
    assert "BurnedInAnnotation" not in kept and "PatientIdentityRemoved" not in kept
    assert kept.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert np.array_equal(kept.pixel_array, pydicom.dcmread(pydicom.filebase.DicomBytesIO(to_bytes(us))).pixel_array)


def test_frames_spacing_and_conflicts(served):
    client = served["client"]
    cine = to_bytes(compressed(instance(CINE, region_cm=(0.01, 0.01)), RLELossless))
    r = client.post("/api/predict", data=upload((cine, "loop.dcm"), frame="3"))
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    assert result["dicom"]["frame"] == 3 and result["dicom"]["frames"] == 3
    assert result["dicom"]["pixel_spacing_mm"] == pytest.approx([0.1, 0.1])
    assert result["pixel_spacing_source"] == "SequenceOfUltrasoundRegions"
    r = client.post("/api/predict", data=upload((cine, "loop.dcm"), frame="3", pixel_spacing="0.2"))
    assert r.get_json()["results"][0]["pixel_spacing_source"] == "pixel_spacing"  # the form's value wins
    r = client.post("/api/predict", data=upload((cine, "loop.dcm"), frame="4"))
    assert r.status_code == 400 and r.get_json()["fields"] == {"frame": "1 to 3"}
    r = client.post("/api/predict", data=upload((cine, "loop.dcm"), frame="0"))
    assert r.status_code == 400 and "frame" in r.get_json()["error"]
    mg = to_bytes(instance(phantom(), modality="MG"))
    r = client.post("/api/predict", data=upload((mg, "mg.dcm"), modality="ultrasound"))
    assert r.status_code == 400 and "is a mammography image" in r.get_json()["error"]
    r = client.post("/api/predict", data=upload((mg, "mg.dcm"), (cine, "loop.dcm")))
    assert r.status_code == 400 and "different modalities" in r.get_json()["error"]
    r = client.post("/api/predict", data=upload((mg, "mg.dcm"), run_id=str(served["us"])))
    assert r.status_code == 400 and "ultrasound model" in r.get_json()["error"]


def test_unsuitable_dicom_files_are_4xx_and_nothing_is_stored(served):
    client, store = served["client"], served["store"]
    whole = to_bytes(instance(phantom()))
    ct = instance(phantom())
    ct.Modality = "CT"
    for data, words in ((to_bytes(report()), "Basic Text SR Storage object with no image"),
                        (to_bytes(ct), "DICOM CT image"), (whole[:400], "lacks its image description"),
                        (whole[:-500], "truncated or corrupt")):
        r = client.post("/api/predict", data=upload((data, "bad.dcm")))
        assert r.status_code == 400 and words in r.get_json()["error"], (words, r.get_json())
        assert "Traceback" not in r.get_data(as_text=True)
    assert store.audit_log("diagnose") == []
    uploads = Path(served["app"].instance_path) / "uploads"
    assert not uploads.exists() or not [p for p in uploads.rglob("*") if p.is_file()]


def test_the_cli_reads_dicom(served, tmp_path):
    case = tmp_path / "case.dcm"
    case.write_bytes(to_bytes(instance(CINE, modality="US", spacing=(0.1, 0.1))))
    result = run_cli("predict", str(case), "--frame", "2", "--out", str(tmp_path / "out"), "--json",
                     env={"BUSI_WEB_INSTANCE_PATH": served["app"].instance_path})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"]["run_id"] == served["us"] and answer["results"][0]["dicom"]["frame"] == 2
    assert PATIENT_NAME not in result.stdout and PATIENT_ID not in result.stdout
    bad = run_cli("predict", str(case), "--frame", "9", "--out", str(tmp_path / "out"),
                  env={"BUSI_WEB_INSTANCE_PATH": served["app"].instance_path})
    assert bad.returncode != 0 and "choose a frame from 1 to 3" in bad.stderr
