"""Which model answers, in a real browser: an admin sets a default on the Models page with a reason, the gate
refuses a weak model there, and a clinician's result card names its model, carries the decision-support notice
and warns about an image unlike the model's training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_web.store import JobStore
from tests.browser_steps import browser_login as login
from tests.browser_steps import shot, wait_runs
from tests.helpers import ADMIN, CLASSES, CLINICIAN, write_busi_folder

pytestmark = pytest.mark.browser


def _answer_prompts(page, reason: str) -> None:
    page.on("dialog", lambda dialog: dialog.accept(reason) if dialog.type == "prompt" else dialog.accept())


def test_an_admin_sets_a_default_with_a_reason_and_the_result_card_names_it(server, new_page, tmp_path):
    run = wait_runs(server, 1)[0]
    page = new_page()
    login(page, server, ADMIN, "/models")
    row = page.locator(f"#modality-ultrasound tr[data-run-id='{run['id']}']")
    assert row.get_attribute("data-default") == "0" and "demo" in row.inner_text()
    assert "none" in page.inner_text("#modality-ultrasound .default-line")
    _answer_prompts(page, "the only model we have, for the demo")
    row.locator("button[data-act='set-default']").click()
    page.wait_for_selector(f"#modality-ultrasound [data-default-run='{run['id']}']")
    assert "the only model we have, for the demo" in page.inner_text("#modality-ultrasound .default-line")
    assert page.locator(f"tr[data-run-id='{run['id']}']").get_attribute("data-default") == "1"
    summary = page.locator(f"tr[data-card-of='{run['id']}'] details.card-summary")
    summary.locator("summary").click()
    assert "the only model we have, for the demo" in summary.inner_text() and "synthetic" in summary.inner_text()
    shot(page, "models_default_set")
    # The change is audited with its reason.
    store = JobStore(server.instance / "busi.db", server.instance / "runs")
    audit = store.audit_log("model.default.set")[0]
    assert audit["user"] == ADMIN[0] and audit["detail"]["reason"] == "the only model we have, for the demo"

    # A clinician diagnoses with that default: the card names the model, says it is a demo and decision support.
    scan = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(60, 120, (96, 96), dtype=np.uint8)).save(scan)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96), 255, np.uint8)).save(blank)
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded='1']")
    assert f"run {run['id']}" in page.inner_text("#model-info") and "DEMO" in page.inner_text("#model-info")
    assert "Decision support, not a diagnosis" in page.inner_text("#support-notice")
    assert "Decision support, not a diagnosis" in page.inner_text("#site-notice")
    page.set_input_files("#files", [str(blank)])
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1']")
    card = page.locator(".result").first
    provenance = card.locator(".provenance")
    assert provenance.get_attribute("data-run-id") == str(run["id"])
    assert f"run {run['id']}" in provenance.inner_text() and "DEMO MODEL" in provenance.inner_text()
    assert "not a diagnosis" in provenance.inner_text()
    # A blank frame is nothing like the phantoms the model learnt: a prominent warning, and the audit says so.
    assert card.get_attribute("data-ood") == "1" and card.locator(".ood-warning").is_visible()
    assert "Do not rely on this result" in card.locator(".ood-warning").inner_text()
    shot(page, "diagnose_provenance_ood")
    row = store.audit_log("diagnose")[0]
    assert row["run_id"] == run["id"] and row["detail"]["ood"]["out_of_distribution"] is True
    assert row["detail"]["demo"] is True and row["detail"]["modality"] == "ultrasound"
    assert row["detail"]["model"]["training_data"] == "phantom" and row["detail"]["model"]["temperature"] > 0


def test_the_gate_refuses_a_weak_model_on_the_models_page(server, new_page, tmp_path):
    runs = wait_runs(server, 1)
    weak = runs[0]
    folder = write_busi_folder(tmp_path / "acceptance", CLASSES, per_class=3)
    page = new_page()
    login(page, server, ADMIN, "/models")
    section = page.locator("#modality-ultrasound")
    section.locator("details.admin-forms summary").click()
    form = section.locator("form.acceptance-form")
    form.locator("select[name=source]").select_option("folder")
    form.locator("select[name=dataset]").select_option("busi")
    form.locator("input[name=data_dir]").fill(str(folder))
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#modality-ultrasound .acceptance-set[data-set-id]")
    assert "9 images" in page.inner_text("#modality-ultrasound .acceptance-set")
    section = page.locator("#modality-ultrasound")
    section.locator("details.admin-forms summary").click()
    settings = section.locator("form.settings-form")
    settings.locator("input[name=floors]").fill("macro_f1=0.99, sensitivity_malignant=0.99")
    settings.locator("button[type=submit]").click()
    page.wait_for_selector("#modality-ultrasound .floors")
    assert "macro_f1 ≥ 0.99" in page.inner_text("#modality-ultrasound .floors")
    row = page.locator(f"#modality-ultrasound tr[data-run-id='{weak['id']}']")
    assert "has not been evaluated" in row.locator(".gate").inner_text()
    row.locator("button[data-act='evaluate']").click()
    page.wait_for_function(f"""() => {{
        const cell = document.querySelector("tr[data-run-id='{weak['id']}'] td.acceptance");
        return cell && /\\d/.test(cell.textContent); }}""")
    row = page.locator(f"#modality-ultrasound tr[data-run-id='{weak['id']}']")
    assert row.get_attribute("data-gate") == "fail" and "below the floor 0.99" in row.locator(".gate").inner_text()
    assert "–" in row.locator("td.acceptance").inner_text()  # the confidence interval
    if row.get_attribute("data-default") == "1":  # the first test made it the default: clear it first
        _answer_prompts(page, "re-checking the gate")
        page.locator("#modality-ultrasound button[data-act='clear-default']").click()
        page.wait_for_selector("#modality-ultrasound [data-default-run='']")
    else:
        _answer_prompts(page, "trying the weak one")
    page.locator(f"#modality-ultrasound tr[data-run-id='{weak['id']}'] button[data-act='set-default']").click()
    page.wait_for_selector("#models-error:not([hidden])")
    message = page.inner_text("#models-error")
    assert "does not pass the ultrasound acceptance gate" in message and "macro_f1" in message
    shot(page, "models_gate_refused")
    assert server.api("/api/models")["modalities"][0]["default"] is None
    assert Path(server.instance / "busi.db").exists()
