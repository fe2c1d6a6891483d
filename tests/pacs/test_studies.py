"""The Studies flow against a real PACS (Debian's Orthanc with DICOMweb, started by the test): search, open,
diagnose an instance, write the results back into the study, read them back; and every way a PACS fails."""

from __future__ import annotations

import json

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
)
from tests.helpers import CLINICIAN, finished_run, make_user_client
from tests.servers import LOCKED_PATIENT, free_port, orthanc

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding an ultrasound study (a still, a cine loop and a report), a mammogram, and a locked study."""
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        us_still = compressed(instance(phantom(seed=1), spacing=(0.1, 0.1)), JPEGLSLossless)
        study, series = str(us_still.StudyInstanceUID), str(us_still.SeriesInstanceUID)
        loop = compressed(instance(np.stack([phantom(seed=k) for k in range(3)]), study_uid=study,
                                   series_uid=series, region_cm=(0.01, 0.01)), RLELossless)
        loop.InstanceNumber = 2
        sr = report(study_uid=study)
        sr.AccessionNumber, sr.StudyDate, sr.PatientBirthDate = ACCESSION, us_still.StudyDate, "19700101"
        mammo = instance(phantom(seed=5).astype(np.uint16) * 16, modality="MG", window=(2048, 4096))
        mammo.StudyDate, mammo.AccessionNumber = "20240115", "ACC-MAMMO"
        locked = instance(phantom(seed=6))
        locked.PatientID, locked.AccessionNumber = LOCKED_PATIENT, "ACC-LOCKED"
        server.load(us_still, loop, sr, mammo, locked)
        yield {"server": server, "us": us_still, "loop": loop, "mammo": mammo, "locked": locked}


@pytest.fixture
def app(make_app, pacs):
    server = pacs["server"]
    app = make_app(PACS_SERVERS={
        "orthanc": server.settings(title="Test PACS"),
        "readonly": server.settings(write_back=False),
        "wrongpass": server.settings(password="not-the-password"),
        "down": {"url": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout": 2}})
    store = app.extensions["busi_web"].store
    finished_run(store, promote=True)
    mg = finished_run(store, seed=4, modality="mammography")
    store.set_default(mg["id"], by="test", reason="the mammography model")
    return app


@pytest.fixture
def client(app):
    return make_user_client(app, *CLINICIAN, "clinician")


def secrets_of(*datasets) -> list[str]:
    out = [PATIENT_NAME, PATIENT_ID, ACCESSION, LOCKED_PATIENT]
    for ds in datasets:
        out += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    return out


def no_secrets(text: str, *datasets) -> None:
    for secret in secrets_of(*datasets):
        assert secret not in text, secret


def find(client, accession=None, **filters) -> list[dict]:
    """The study list: it names each study's patient (so a clinician sees whose images these are), never a UID."""
    query = "&".join(f"{k}={v}" for k, v in {**filters, **({"accession": accession} if accession else {})}.items())
    r = client.get(f"/api/pacs/orthanc/studies?{query}")
    assert r.status_code == 200, r.get_json()
    text = r.get_data(as_text=True)
    assert "1.2.826" not in text and "StudyInstanceUID" not in text
    return r.get_json()["studies"]


def test_search_open_diagnose_and_write_back(app, client, pacs):
    servers = client.get("/api/pacs").get_json()["servers"]
    assert [s["name"] for s in servers] == ["orthanc", "readonly", "wrongpass", "down"]
    assert "pacs-secret" not in json.dumps(servers) and servers[0]["title"] == "Test PACS"
    # Search: by modality, by accession, by date.
    assert len(find(client, modality="US")) == 2  # the ultrasound study and the locked one, not the mammogram
    assert [s["modalities"] for s in find(client, modality="MG")] == [["MG"]]
    (study,) = find(client, ACCESSION)
    assert study["accession"] == ACCESSION and set(study["modalities"]) >= {"US"} and study["instances"] == 3
    assert study["patient_name"] == "TESTPATIENT, JANE" and study["patient_id"] == PATIENT_ID
    assert study["birth_date"] == "1970-01-01", study
    assert [s["patient_id"] for s in find(client, patient_id=PATIENT_ID)] == [PATIENT_ID, PATIENT_ID]
    assert find(client, patient_id="NOBODY") == []
    r = client.get("/api/pacs/orthanc/studies?patientid=PID-1")
    assert r.status_code == 400 and "unknown filter(s) patientid" in r.get_json()["error"]
    assert [s["date"] for s in find(client, date_from="2024-01-01", date_to="2024-01-31")] == ["2024-01-15"]
    r = client.get("/api/pacs/orthanc/studies?date_from=15/01/2024")
    assert r.status_code == 400 and "YYYY-MM-DD" in r.get_json()["error"]
    # Open the study: its instances, the report among them but not diagnosable.
    r = client.get(f"/api/pacs/orthanc/studies/{study['handle']}")
    assert r.status_code == 200
    no_secrets(r.get_data(as_text=True), pacs["us"], pacs["loop"])
    instances = r.get_json()["instances"]
    by_frames = {i["frames"]: i for i in instances if i["diagnosable"]}
    assert set(by_frames) == {1, 3} and [i["sop_class"] for i in instances if not i["diagnosable"]] == [
        "Basic Text SR Storage"]
    # Diagnose frame 2 of the cine loop, and write the results back with the case report. The default model is a
    # demo: writing its answer into the PACS is refused until the clinician confirms, and the diagnosis stays.
    loop = by_frames[3]
    form = {"frame": "2", "write_back": "true", "report_pdf": "true"}
    r = client.post(f"/api/pacs/orthanc/instances/{loop['handle']}/diagnose", data=form)
    assert r.status_code == 200, r.get_json()
    refused = r.get_json()
    assert refused["results"][0]["probabilities"] and refused["written"]["refused"] is True
    assert refused["written"]["needs_confirmation"] == ["the model is a demo, trained on synthetic images"]
    r = client.post(f"/api/pacs/orthanc/instances/{loop['handle']}/diagnose", data={**form, "confirm": "true"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    no_secrets(r.get_data(as_text=True), pacs["us"], pacs["loop"])
    result = body["results"][0]
    assert result["dicom"]["frame"] == 2 and result["pixel_spacing_source"] == "SequenceOfUltrasoundRegions"
    assert body["model"]["modality"] == "ultrasound"
    assert sorted(body["written"]["objects"]) == ["Comprehensive SR Storage", "Encapsulated PDF Storage",
                                                  "Secondary Capture Image Storage"]
    assert body["written"]["confirmed"] is True
    # The same result again: refused, nothing stored twice.
    again = client.post(f"/api/pacs/orthanc/instances/{loop['handle']}/diagnose", data={**form, "confirm": "true"})
    assert again.status_code == 200 and "already holds this result" in again.get_json()["written"]["error"]
    # Read back what the PACS now holds in that study.
    dicomweb = pacs["server"].client()
    us_study = str(pacs["us"].StudyInstanceUID)
    held = dicomweb.search_for_instances(study_instance_uid=us_study, fields=["SeriesDescription"])
    written = [h for h in held if str((h.get("0008103E") or {}).get("Value", [""])[0]).startswith("busi-web")]
    assert len(written) == 3
    objects = {}
    for h in written:
        ds = dicomweb.retrieve_instance(us_study, h["0020000E"]["Value"][0], h["00080018"]["Value"][0])
        objects[str(ds.SOPClassUID)] = ds
    model_name = body["model"]["name"]
    for ds in objects.values():  # new UIDs, the same patient and study, a description naming busi-web and the model
        assert ds.StudyInstanceUID == us_study and ds.PatientID == PATIENT_ID
        assert ds.SeriesInstanceUID != pacs["loop"].SeriesInstanceUID and model_name in ds.SeriesDescription
    sc = objects["1.2.840.10008.5.1.4.1.1.7"]
    assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3 and sc.Rows > result["height"]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pacs["loop"].SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 2
    sr = objects["1.2.840.10008.5.1.4.1.1.88.33"]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == pacs["loop"].SOPInstanceUID
    text = str(sr)
    assert "Imaging Measurement Report" in text and "Finding" in text and result["label"] in text
    # What the page carries, the PACS carries: the demo flag, the verdict, the notice, who confirmed.
    assert "DEMO MODEL" in text and "the default ultrasound model" in text and "confirmed by clin" in text
    pdf = objects[ENCAPSULATED_PDF]
    assert pdf.EncapsulatedDocument.startswith(b"%PDF") and pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    # The audit: the diagnosis (with the PACS and digests) and what was written; no identifiers.
    store = app.extensions["busi_web"].store
    rows = store.audit_log(("diagnose", "pacs.store"))
    no_secrets(json.dumps(rows), pacs["us"], pacs["loop"])
    actions = {row["action"]: row["detail"] for row in rows}
    assert actions["diagnose"]["pacs"] == "orthanc" and len(actions["diagnose"]["dicom"]["uids"]["study"]) == 32
    assert actions["pacs.store"]["study"] == actions["diagnose"]["dicom"]["uids"]["study"]
    assert len(actions["pacs.store"]["objects"]) == 3 and actions["pacs.store"]["confirmed"] is True
    refusals = [row["detail"] for row in store.audit_log(("pacs.store.refused",))]
    assert sorted(r["reasons"][0] for r in refusals) == ["already written back",
                                                          "the model is a demo, trained on synthetic images"]
    # busi-web's own results are listed, not offered for diagnosis, and refused if asked for.
    instances = client.get(f"/api/pacs/orthanc/studies/{study['handle']}").get_json()["instances"]
    own = [i for i in instances if i["busi_web_result"]]
    assert len(own) == 3 and not any(i["diagnosable"] for i in own)
    sc_row = next(i for i in own if i["sop_class"] == "Secondary Capture Image Storage")
    r = client.post(f"/api/pacs/orthanc/instances/{sc_row['handle']}/diagnose", data={})
    assert r.status_code == 400 and "busi-web's own results" in r.get_json()["error"]
    # The mammogram goes to the mammography model.
    (mg_study,) = find(client, modality="MG")
    (mg,) = client.get(f"/api/pacs/orthanc/studies/{mg_study['handle']}").get_json()["instances"]
    r = client.post(f"/api/pacs/orthanc/instances/{mg['handle']}/diagnose", data={})
    assert r.status_code == 200 and r.get_json()["model"]["modality"] == "mammography"
    assert r.get_json()["written"] is None



def test_every_way_a_pacs_fails_is_clear_and_stores_nothing(app, client, pacs):
    dicomweb = pacs["server"].client()
    (locked,) = find(client, "ACC-LOCKED")
    (one,) = client.get(f"/api/pacs/orthanc/studies/{locked['handle']}").get_json()["instances"]
    locked_study = str(pacs["locked"].StudyInstanceUID)
    before = len(dicomweb.search_for_instances(study_instance_uid=locked_study))
    r = client.post(f"/api/pacs/orthanc/instances/{one['handle']}/diagnose",
                    data={"write_back": "true", "confirm": "true"})
    assert r.status_code == 200  # the diagnosis is answered; the write-back's failure is said beside it
    assert r.get_json()["results"][0]["probabilities"]
    error = r.get_json()["written"]["error"]
    assert "refused to store" in error and "nothing was stored" in error and "diagnosis itself was made" in error
    assert len(dicomweb.search_for_instances(study_instance_uid=locked_study)) == before
    store = app.extensions["busi_web"].store
    failed = store.audit_log(("pacs.store.failed",))
    assert len(failed) == 1 and "refused to store" in failed[0]["detail"]["error"]
    no_secrets(json.dumps(failed), pacs["locked"])
    # A read-only PACS, wrong credentials, a PACS that is down, a forgotten handle, an unknown PACS.
    r = client.post(f"/api/pacs/readonly/instances/{one['handle']}/diagnose", data={})
    assert r.status_code == 404  # a handle belongs to the PACS that listed it
    (study,) = client.get("/api/pacs/readonly/studies?accession=ACC-LOCKED").get_json()["studies"]
    (one,) = client.get(f"/api/pacs/readonly/studies/{study['handle']}").get_json()["instances"]
    r = client.post(f"/api/pacs/readonly/instances/{one['handle']}/diagnose", data={"write_back": "true"})
    assert r.status_code == 403 and "read-only" in r.get_json()["error"]
    r = client.get("/api/pacs/wrongpass/studies")
    assert r.status_code == 502 and "refused busi-web's credentials (HTTP 401)" in r.get_json()["error"]
    r = client.get("/api/pacs/down/studies")
    assert r.status_code == 502 and "cannot be reached at http://127.0.0.1" in r.get_json()["error"]
    r = client.post(f"/api/pacs/orthanc/instances/{'0' * 32}/diagnose", data={})
    assert r.status_code == 404 and "search the studies again" in r.get_json()["error"]
    r = client.get("/api/pacs/nowhere/studies")
    assert r.status_code == 404 and "the PACS here: orthanc, readonly" in r.get_json()["error"]
    r = client.get("/api/pacs/orthanc/studies?modality=CT")
    assert r.status_code == 400 and r.get_json()["fields"] == {"modality": "US or MG"}
    assert store.audit_log(("pacs.store",)) == []
    assert pydicom  # the reader the PACS objects were checked with above


def test_pacs_servers_are_checked_at_start(make_app):
    for bad, words in (({"x": {"url": "ftp://pacs"}}, "must be an http:// or https://"),
                       ({"x": {"url": "http://pacs", "auth": "basic"}}, "basic auth needs username and password"),
                       ({"x": {"url": "http://pacs", "colour": 1}}, "unknown key(s) colour"),
                       ({"Bad Name": {"url": "http://pacs"}}, "a name is lower-case"),
                       ({"x": {"url": "http://pacs", "auth": "bearer", "token_file": "/nonexistent/token"}},
                        "token_file cannot be read")):
        with pytest.raises(ValueError) as caught:
            make_app(PACS_SERVERS=bad)
        assert words in str(caught.value), str(caught.value)


def test_a_legacy_time_and_a_greek_name_are_written_back_intact(app, client, pacs):
    greek = instance(phantom(seed=8))
    greek.SpecificCharacterSet = "ISO_IR 126"
    greek.PatientName, greek.PatientID, greek.AccessionNumber = "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΕΛΕΝΗ", "GR-77", "ACC-GREEK"
    greek.StudyTime = "11:25:01"  # the old ACR-NEMA form some archives still hold
    pacs["server"].load(greek)
    (study,) = find(client, "ACC-GREEK")
    assert study["patient_name"] == "ΠΑΠΑΔΟΠΟΥΛΟΣ, ΕΛΕΝΗ"
    (one,) = client.get(f"/api/pacs/orthanc/studies/{study['handle']}").get_json()["instances"]
    r = client.post(f"/api/pacs/orthanc/instances/{one['handle']}/diagnose",
                    data={"write_back": "true", "report_pdf": "true", "confirm": "true"})
    assert r.status_code == 200, r.get_json()
    assert "objects" in r.get_json()["written"], r.get_json()["written"]
    dicomweb = pacs["server"].client()
    uid = str(greek.StudyInstanceUID)
    held = dicomweb.search_for_instances(study_instance_uid=uid, fields=["SeriesDescription", "SOPClassUID"])
    (doc,) = [h for h in held if h["00080016"]["Value"][0] == ENCAPSULATED_PDF]
    pdf = dicomweb.retrieve_instance(uid, doc["0020000E"]["Value"][0], doc["00080018"]["Value"][0])
    assert str(pdf.PatientName) == "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΕΛΕΝΗ" and pdf.file_meta.ImplementationClassUID
    assert "ΠΑΠΑΔΟΠΟΥΛΟΣ" in pdf_text_of(pdf.EncapsulatedDocument)  # the printed report names the patient
    (sc,) = [h for h in held if h["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.7"]
    picture = dicomweb.retrieve_instance(uid, sc["0020000E"]["Value"][0], sc["00080018"]["Value"][0])
    assert picture.Columns == greek.Columns  # the caption is wrapped under the picture, never wider than it


def pdf_text_of(data: bytes) -> str:
    import io

    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(bytes(data).rstrip(b"\0"))).pages)
