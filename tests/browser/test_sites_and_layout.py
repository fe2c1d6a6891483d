"""In chromium: a run on two datasets from the Train page, shown per site; and the pages on a 390 px phone."""

from __future__ import annotations

import urllib.request

import pytest

from tests.browser_steps import browser_login, shot
from tests.helpers import ADMIN, CLINICIAN, wait_for
from tests.synthetic_data import write_busbra_folder

pytestmark = pytest.mark.browser


def test_the_train_page_trains_on_two_sites_and_the_run_shows_each(server, new_page, tmp_path):
    busbra = write_busbra_folder(tmp_path / "BUSBRA", cases=30, size=48)
    page = new_page()
    browser_login(page, server, ADMIN, "/train")
    page.wait_for_selector("#train[data-ready='1']")
    page.fill("#f-name", "two sites")
    page.select_option("#f-backbone", "tiny_cnn")
    page.select_option("#f-dataset", "phantom")
    page.fill("#f-dataset_params-size", "48")
    page.fill("#f-dataset_params-per_class", "16")
    page.click("#add-site")
    page.select_option("#f-datasets-1-dataset", "busbra")
    page.fill("#f-datasets-1-data_dir", str(busbra))
    page.fill("#f-train-epochs", "2")
    page.fill("#f-train-batch_size", "8")
    if not page.locator("#advanced").evaluate("d => d.open"):
        page.click("#advanced summary")
    page.fill("#f-train-input_size", "32")
    page.fill("#f-train-resize", "36")
    page.fill("#f-train-workers", "0")
    page.check("#f-train-balance_sites")
    shot(page, "train_two_sites")
    page.click("#train-submit")
    page.wait_for_url("**/runs/*")
    run_id = int(page.url.rsplit("/", 1)[1])
    wait_for(lambda: server.api(f"/api/runs/{run_id}")["status"] in ("finished", "failed"), timeout=240,
             what="the two-site run")
    run = server.api(f"/api/runs/{run_id}")
    assert run["status"] == "finished", run.get("error")
    assert run["dataset"] == "phantom+busbra"
    page.reload()
    page.wait_for_selector("#test-sites")
    sites = page.locator("#test-sites tbody tr")
    assert sites.count() == 2
    assert {sites.nth(i).get_attribute("data-site") for i in range(2)} == {"phantom", "busbra"}
    assert "benign, malignant" in page.locator("#test-sites tr[data-site='busbra']").inner_text()
    assert page.locator("#card-training-sites").count() == 1 and "busbra" in page.inner_text("#card-training-sites")
    shot(page, "run_two_sites")


@pytest.mark.parametrize("path", ["/", "/runs", "/train", "/models", "/admin/users", "/admin/audit", "/diagnose",
                                  "/studies"])
def test_no_page_scrolls_sideways_on_a_phone(server, browser, path):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        browser_login(page, server, ADMIN, path)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        shot(page, f"phone_{path.strip('/').replace('/', '_') or 'home'}")
        assert width <= 391, f"{path} is {width} px wide at 390 px"
    finally:
        context.close()


def test_a_run_page_with_a_long_path_fits(server, browser, tmp_path):
    deep = tmp_path.joinpath(*[f"a-very-long-folder-name-{i}" for i in range(8)])
    busbra = write_busbra_folder(deep / "BUSBRA", cases=10, size=40)
    run = server.api("/api/runs", {"backbone": "tiny_cnn", "dataset": "busbra", "data_dir": str(busbra),
                                   "train": {"epochs": 1, "batch_size": 8, "input_size": 32, "resize": 36,
                                             "workers": 0}})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        browser_login(page, server, ADMIN, f"/runs/{run['id']}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1281, f"the run page is {width} px wide at 1280 px"
    finally:
        context.close()


def test_the_favicon_and_the_keyboard_drop_zone(server, new_page):
    with urllib.request.urlopen(server.url + "/favicon.ico", timeout=10) as r:
        assert r.status == 200 and r.read(4) == b"\x00\x00\x01\x00"  # an ICO file, for everyone, logged in or not
    page = new_page()
    browser_login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded]", state="attached")  # the page's script is listening
    # Each press must reach the file input as a click (the browser opens its picker on that click). The test
    # counts the clicks and cancels them, as headless chromium does not always report a picker it opened.
    page.evaluate("""() => {
        const input = document.getElementById("files");
        input.dataset.clicks = "0";
        input.addEventListener("click", (e) => {
            e.preventDefault();
            input.dataset.clicks = String(+input.dataset.clicks + 1);
        });
    }""")
    zone = page.locator("#drop-zone")
    zone.press("Enter")
    page.wait_for_selector("#files[data-clicks='1']", state="attached")
    zone.press(" ")
    page.wait_for_selector("#files[data-clicks='2']", state="attached")
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    page.locator("#modality").press("Enter")  # a key pressed elsewhere opens nothing
    assert page.get_attribute("#files", "data-clicks") == "2"
    assert page.get_attribute("#files", "multiple") is not None
