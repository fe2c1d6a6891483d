"""What a PACS engineer found on the PACS path, against a real Orthanc: no answer of 500, bounded waits, messages
that name the real problem, frames a file really holds, and full-field mammograms."""

from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import requests
from pydicom.fileset import FileSet
from pydicom.uid import DeflatedExplicitVRLittleEndian

from busi_web.diagnosis.uploads import decode_upload
from busi_web.errors import UserError
from tests.dicom_phantoms import instance, phantom, to_bytes, with_unknown_syntax
from tests.helpers import finished_run, make_user_client
from tests.servers import ORTHANC_USER, free_port, orthanc

MAX = 40_000_000


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with a JPEG XL ultrasound study (posted as a file: the DICOM libraries here cannot write it) and a
    full-field mammogram of 26 MB."""
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        jxl = instance(phantom(seed=2))
        jxl.AccessionNumber = "ACC-JXL"
        r = requests.post(server.rest + "/instances", data=with_unknown_syntax(jxl, "1.2.840.10008.1.2.4.110"),
                          auth=ORTHANC_USER, timeout=30)
        assert r.status_code == 200, r.text
        big = np.random.default_rng(0).integers(0, 4096, (3328, 4096), dtype=np.uint16)
        mammo = instance(big, modality="MG", window=(2048, 4096))
        mammo.AccessionNumber = "ACC-FFDM"
        server.load(mammo)
        yield {"server": server, "mammo": mammo}


@pytest.fixture
def client(make_app, pacs):
    silent = socket.socket()  # accepts connections but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    app = make_app(PACS_SERVERS={
        "orthanc": pacs["server"].settings(), "silent": {"url": f"http://127.0.0.1:{silent.getsockname()[1]}/dw",
                                                         "timeout": 3},
        "down": {"url": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout": 3},
        "notdicomweb": {**pacs["server"].settings(), "url": pacs["server"].rest + "/no-such-root", "timeout": 3}})
    store = app.extensions["busi_web"].store
    finished_run(store, promote=True)
    mg = finished_run(store, seed=4, modality="mammography")
    store.set_default(mg["id"], by="test", reason="the mammography model")
    yield make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    silent.close()


def _only(client, accession: str) -> dict:
    (study,) = client.get(f"/api/pacs/orthanc/studies?accession={accession}").get_json()["studies"]
    (one,) = client.get(f"/api/pacs/orthanc/studies/{study['handle']}").get_json()["instances"]
    return one


def test_a_jpeg_xl_instance_gets_a_400_that_names_it(client):
    r = client.post(f"/api/pacs/orthanc/instances/{_only(client, 'ACC-JXL')['handle']}/diagnose", data={})
    assert r.status_code == 400 and "JPEG XL Lossless" in r.get_json()["error"]


def test_a_full_field_mammogram_from_the_pacs_is_diagnosed(client, pacs):
    assert len(to_bytes(pacs["mammo"])) > 20 * 2**20  # over the upload limit
    r = client.post(f"/api/pacs/orthanc/instances/{_only(client, 'ACC-FFDM')['handle']}/diagnose", data={})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["model"]["modality"] == "mammography"


@pytest.mark.parametrize(("server", "words"), [
    ("silent", "did not answer within 3 s"), ("down", "cannot be reached"),
    ("notdicomweb", "does not look like a DICOMweb service")])
def test_a_pacs_that_fails_answers_within_its_timeout_and_says_why(client, server, words):
    start = time.monotonic()
    r = client.get(f"/api/pacs/{server}/studies")
    waited = time.monotonic() - start
    assert r.status_code in (502, 504) and words in r.get_json()["error"], r.get_json()
    assert waited < 10, f"{server}: {waited:.1f} s"


def test_messages_name_the_real_problem_of_a_file():
    deflated = instance(phantom(seed=3))
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    deflated.save_as(buf, enforce_file_format=True)
    # Deflated: read, not called "corrupt".
    read = decode_upload(io.BytesIO(buf.getvalue()), "deflated.dcm", MAX)
    assert read.image.shape[:2] == deflated.pixel_array.shape[:2]
    folder = FileSet()
    folder.add(instance(phantom(seed=4)))
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp())
    folder.write(out)
    with pytest.raises(UserError, match="is a DICOMDIR"):
        decode_upload(io.BytesIO((out / "DICOMDIR").read_bytes()), "DICOMDIR", MAX)


def test_a_file_offers_only_the_frames_it_holds():
    claims = instance(phantom(seed=5))
    claims.NumberOfFrames = 10000
    upload = decode_upload(io.BytesIO(to_bytes(claims)), "one.dcm", MAX)
    assert upload.dicom.frames == 1
    with pytest.raises(UserError, match="has 1 frame; choose a frame from 1 to 1"):
        decode_upload(io.BytesIO(to_bytes(claims)), "one.dcm", MAX, frame=2)


def test_an_upload_over_the_limit_says_what_an_administrator_can_change(client):
    big = io.BytesIO(b"\0" * (21 * 2**20))
    r = client.post("/api/predict", data={"image": [(big, "ffdm.dcm")]})
    error = r.get_json()["error"]
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in error and "send a smaller image" not in error
