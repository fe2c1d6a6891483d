"""A clinician drops a DICOM cine loop on the Diagnose page (chromium, a real gunicorn): the file's modality
picks the model, the result says what the file is, and the frame picker diagnoses another frame."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from tests.browser_steps import browser_login as login
from tests.browser_steps import shot, wait_runs
from tests.dicom_phantoms import PATIENT_ID, PATIENT_NAME, compressed, instance, phantom, to_bytes
from tests.helpers import CLINICIAN

pytestmark = pytest.mark.browser


def test_a_cine_loop_is_diagnosed_frame_by_frame(server, new_page, tmp_path):
    run = wait_runs(server, 1)[0]
    server.api(f"/api/runs/{run['id']}/promote", {"reason": "DICOM browser test"})
    loop = np.stack([phantom(seed=k, lesion=(30 + 12 * k, 44, 12)) for k in range(4)])
    path = tmp_path / "IM000001"  # as PACS exports name them: no extension
    path.write_bytes(to_bytes(compressed(instance(loop, spacing=(0.1, 0.1)), JPEG2000Lossless)))
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded]")
    assert page.locator("#frame-field").is_hidden()
    page.set_input_files("#files", [str(path)])
    assert "IM000001" in page.inner_text("#file-list") and page.locator("#diagnose-error").is_hidden()
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1']")
    line = page.locator(".result .dicom-line")
    assert "DICOM US" in line.inner_text() and "frame 1 of 4" in line.inner_text()
    assert "0.1 × 0.1 mm per pixel (PixelSpacing)" in line.inner_text()
    assert page.locator("#frame-field").is_visible() and page.inner_text("#frame-count") == "of 4"
    first = page.evaluate("() => window.busiLastDiagnosis.results[0].original_png")
    page.fill("#frame", "3")
    page.dispatch_event("#frame", "change")
    page.wait_for_selector(".result .dicom-line[data-frame='3'] >> xpath=ancestor::article[@data-ready='1']")
    third = page.evaluate("() => window.busiLastDiagnosis.results[0]")
    assert third["dicom"]["frame"] == 3 and third["original_png"] != first
    text = page.content()
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    shot(page, "dicom_cine_frame_3")
