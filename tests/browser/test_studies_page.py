"""The Studies page against a real PACS (Orthanc) and a real gunicorn, in chromium: search by accession, open
the study, diagnose frame 2 of a cine loop with write-back, see what was written, open the case report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from tests.browser_steps import browser_login as login
from tests.browser_steps import shot, wait_runs
from tests.dicom_phantoms import ACCESSION, PATIENT_ID, compressed, instance, phantom
from tests.helpers import CLINICIAN
from tests.servers import orthanc, served

pytestmark = pytest.mark.browser
SINGLE_NAME, SINGLE_PHYSICIAN = "ONECOMPONENTPATIENT", "ONECOMPONENTDOCTOR"


@pytest.fixture(scope="module")
def pacs_server(chromium_path, tmp_path_factory):
    """Orthanc with one ultrasound cine loop, and a gunicorn that knows it as PACS ``ward``."""
    home = tmp_path_factory.mktemp("studies")
    with orthanc(home / "orthanc") as pacs:
        loop = compressed(instance(np.stack([phantom(seed=k) for k in range(3)]), spacing=(0.1, 0.1)),
                          JPEG2000Lossless)
        # Names of one component: the DICOM libraries warn about them, quoting them (never into the server's log).
        loop.PatientName, loop.ReferringPhysicianName = SINGLE_NAME, SINGLE_PHYSICIAN
        pacs.load(loop)
        settings = {"BUSI_WEB_PACS_SERVERS": json.dumps({"ward": pacs.settings(title="Ward PACS")})}
        with served(home, settings) as server:
            yield {"server": server, "pacs": pacs, "loop": loop}


def test_a_clinician_diagnoses_a_pacs_study_and_writes_it_back(pacs_server, new_page):
    server, loop = pacs_server["server"], pacs_server["loop"]
    run = wait_runs(server, 1)[0]
    server.api(f"/api/runs/{run['id']}/promote", {"reason": "Studies browser test"})
    page = new_page()
    login(page, server, CLINICIAN, "/studies")
    assert page.locator("#nav-studies").is_visible()
    assert "Ward PACS" in page.inner_text("#pacs")
    page.fill("#patient-id", PATIENT_ID)
    page.click("#search-studies")
    page.wait_for_selector("#study-list tbody tr")
    # Whose study it is, in plain sight: name, ID, birth date, accession.
    listed = page.inner_text("#study-list")
    assert page.locator("#study-list tbody tr").count() == 1 and ACCESSION in listed
    assert SINGLE_NAME in listed and PATIENT_ID in listed and "1970-01-01" in listed
    page.click("#study-list .open-study")
    page.wait_for_selector("#instance-list tbody tr .diagnose-instance")
    assert SINGLE_NAME in page.inner_text("#study-patient")
    page.fill("#instance-list .frame", "2")
    page.check("#write-back")
    page.click("#instance-list .diagnose-instance")
    # The model is the phantom demo: not written back until the clinician confirms; the diagnosis is on screen.
    page.wait_for_selector("#written:not([hidden]) #confirm-write-back")
    page.wait_for_selector(".result[data-ready='1']")
    assert "demo" in page.inner_text("#written")
    page.once("dialog", lambda d: d.accept())
    page.click("#confirm-write-back")
    page.wait_for_selector("#written:has-text('Secondary Capture')")
    assert "confirmed" in page.inner_text("#written")
    page.wait_for_selector(".result[data-ready='1']")
    assert "frame 2 of 3" in page.inner_text(".result .dicom-line")
    text = page.content()
    for secret in (str(loop.StudyInstanceUID), str(loop.SOPInstanceUID)):
        assert secret not in text, secret
    shot(page, "studies_written_back")
    log = server.log.read_text()  # the access log has the searches' paths, not their queries
    assert "/api/pacs/ward/studies" in log and ACCESSION not in log and PATIENT_ID not in log
    assert SINGLE_NAME not in log and SINGLE_PHYSICIAN not in log  # nor what the DICOM libraries warned about
    # The PACS now holds the two new objects in the study.
    held = pacs_server["pacs"].client().search_for_instances(study_instance_uid=str(loop.StudyInstanceUID))
    assert len(held) == 3
    # The case report opens from the result card and prints as one page.
    with page.context.expect_page() as opened:
        page.click(".result .report-link")
    report = opened.value
    report.wait_for_selector("#case-report")
    assert "Decision support" in report.inner_text("#report-notice")
    report.emulate_media(media="print")
    assert report.locator(".topbar").is_hidden() and report.locator("#print-report").is_hidden()
    shot(report, "case_report_print")
