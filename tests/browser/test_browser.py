"""The pages in a real browser: Debian's chromium driven by Playwright against a real gunicorn started here.

Each test logs in through the login page. Runs are tiny (phantom images of 48 px, a tiny CNN at 32 px input),
so the trainer subprocess does the real work in seconds. Screenshots go to ``test-artifacts/browser/``.
The server and browser fixtures are in ``tests/browser/conftest.py``, the steps in ``tests/helpers.py``.
"""

from __future__ import annotations

import base64
import io
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from busi_web_plugins.mias_crops import mias_to_pixel
from PIL import Image

from tests.browser_steps import CHART_STATE, default_model, fill_train_form, shot, submit_train_form, total, wait_runs
from tests.browser_steps import browser_login as login
from tests.helpers import ADMIN, CLINICIAN
from tests.synthetic_data import SIDE, scan, synthetic_mias

pytestmark = pytest.mark.browser

CLASSES = {"benign", "malignant", "normal"}


# -- tests ----------------------------------------------------------------------------------------------------
def test_clinician_logs_in_and_cannot_reach_the_train_page(server, new_page):
    page = new_page()
    login(page, server, CLINICIAN, "/runs")
    assert page.url.endswith("/runs"), "the login did not go on to the page asked for"
    assert page.locator("#nav-train").count() == 0 and page.locator("#nav-plugins").count() == 0
    assert page.locator("nav a", has_text="Diagnose").count() == 1
    response = page.goto(server.url + "/train")
    assert response.status == 403
    assert "only an administrator" in page.inner_text("main")
    assert page.goto(server.url + "/plugins").status == 403
    shot(page, "clinician_train_forbidden")
    page.goto(server.url + "/runs")
    page.click("#logout")
    page.wait_for_url(re.compile(r"/login"))
    assert page.goto(server.url + "/diagnose").url.startswith(server.url + "/login")


def test_admin_trains_from_the_form_and_the_chart_gains_points_live(server, new_page):
    page = new_page()
    login(page, server, ADMIN, "/train")
    # Server-side validation: the messages appear next to the fields (resize is under "advanced").
    fill_train_form(page, server, name="live 2-epoch run", epochs="0", resize="20", per_class=40)
    page.click("#advanced summary")  # close it: an error inside must open it again
    page.click("#train-submit")
    epochs_error = page.locator('[data-error-for="train.epochs"]')
    epochs_error.wait_for(state="visible")
    assert "at least 1" in epochs_error.inner_text()
    assert "input_size" in page.locator('[data-error-for="train.resize"]').inner_text()
    assert page.locator("#advanced").evaluate("d => d.open")
    assert "/train" in page.url
    shot(page, "train_form_errors")

    page.fill("#f-train-epochs", "2")
    page.fill("#f-train-resize", "36")
    run_id = submit_train_form(page)
    samples = []
    deadline = time.time() + 120
    while time.time() < deadline:
        sample = page.evaluate(CHART_STATE)
        samples.append(sample)
        if sample["status"] == "finished" or sample["status"] == "failed":
            break
        time.sleep(0.1)
    final = samples[-1]
    assert final["status"] == "finished", (final, server.log.read_text()[-3000:])
    # The charts grew while the page watched (at least from empty to some points before the run ended), from rows
    # pushed over Socket.IO after the page had loaded the REST history.
    growth = sorted({total(s) for s in samples if s["status"] not in ("finished", None)})
    assert len(growth) >= 2, f"the charts did not gain points while the run trained: {samples[::5]}"
    assert final["live"] > 0, final
    assert final["loss"] == {"train_loss": 2, "val_loss": 2}, final
    # (Batch points come every half second of training: too rare for a run this small to promise any.)
    assert final["accuracy"]["val_acc"] == 2 and final["accuracy"]["train_acc"] == 2, final
    values = page.evaluate("() => window.busiCharts.loss.data.datasets.flatMap((d) => d.data.map((p) => p.y))")
    assert all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in values), values
    assert page.locator("#batch-log div.epoch-line").count() >= 2
    # When it ends, the server re-renders the details: report, confusion matrix, files, log.
    page.wait_for_selector("#confusion-matrix")
    assert "precision" in page.inner_text("#classification-report")
    assert "test: accuracy" in page.inner_text("#full-log")
    assert page.locator("#run-artifacts a", has_text="best_model.pt").count() == 1
    assert page.inner_text("#run-status") == "finished" and page.inner_text("#run-eta") == "—"
    shot(page, "run_finished")
    assert server.api(f"/api/runs/{run_id}")["status"] == "finished"


def _phantom_png(tmp_path: Path, cls: str, index: int) -> Path:
    from busi_web_plugins.phantom import CLASSES as PHANTOM_CLASSES
    from busi_web_plugins.phantom import render_phantom

    image, _mask = render_phantom(cls, 96, 7, PHANTOM_CLASSES.index(cls), index, 1.0)
    path = tmp_path / f"{cls}_{index}.png"
    Image.fromarray(image).save(path)
    return path


def answered(card) -> str:
    """The class a result card headlines. A tiny model may find a test image unlike its training images: then the
    card says so instead of naming a class, and the probabilities open with a click; the top one is returned."""
    if card.get_attribute("data-label") != "withheld":
        return card.get_attribute("data-label")
    assert "No reliable answer" in card.locator(".withheld-answer").inner_text()
    assert card.locator(".prob-row").first.is_hidden()
    card.locator("details.withheld-probs summary").click()
    shares = {r.get_attribute("data-class"): float(r.locator(".prob-value").inner_text().rstrip("%"))
              for r in card.locator(".prob-row").all()}
    return max(shares, key=shares.get)


OVERLAY_PIXELS = """(card) => {
  const canvas = card.querySelector("canvas.overlay");
  const img = card.querySelector("img.original");
  const w = canvas.width, h = canvas.height;
  const ref = document.createElement("canvas");
  ref.width = w; ref.height = h;
  ref.getContext("2d").drawImage(img, 0, 0);
  const a = canvas.getContext("2d").getImageData(0, 0, w, h).data;
  const b = ref.getContext("2d").getImageData(0, 0, w, h).data;
  // Pure white pixels where the original is not white are the dashed frame of the analysed region: counted apart.
  let diff = 0, chroma = 0, frame = 0;
  for (let i = 0; i < a.length; i += 4) {
    if (a[i] === 255 && a[i + 1] === 255 && a[i + 2] === 255 && b[i] + b[i + 1] + b[i + 2] < 765) { frame++; continue; }
    diff += Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]);
    chroma += Math.max(a[i], a[i + 1], a[i + 2]) - Math.min(a[i], a[i + 1], a[i + 2]);
  }
  return {w, h, frame, diff: diff / (3 * w * h), chroma: chroma / (w * h),
          natural: [img.naturalWidth, img.naturalHeight]};
}"""


DROP = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type: "image/png"}));
  dt.items.add(new File(["not an image"], "notes.txt", {type: "text/plain"}));
  document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                                              cancelable: true}));
}"""


def test_diagnose_shows_label_probabilities_and_a_heatmap(server, new_page, tmp_path):
    default_model(server)
    files = [_phantom_png(tmp_path, "malignant", 1), _phantom_png(tmp_path, "benign", 2)]
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded='1']")
    assert page.locator("#no-model").count() == 0
    page.set_input_files("#files", [str(f) for f in files])
    assert page.locator("#file-list li").count() == 2
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1'] >> nth=1")
    cards = page.locator(".result")
    assert cards.count() == 2
    for i, f in enumerate(files):
        card = cards.nth(i)
        assert card.get_attribute("data-filename") == f.name
        assert answered(card) in CLASSES
        rows = card.locator(".prob-row")
        assert rows.count() == 3
        shares = [float(t.rstrip("%")) for t in rows.locator(".prob-value").all_inner_texts()]
        assert sum(shares) == pytest.approx(100, abs=0.5)
        pixels = card.evaluate(OVERLAY_PIXELS)
        assert (pixels["w"], pixels["h"]) == (96, 96) == tuple(pixels["natural"])
        # The overlay is the scan with colour on it: it differs from the grey original and is coloured.
        assert pixels["diff"] > 5 and pixels["chroma"] > 10, pixels
        # The part the model did not see (outside its centre crop) is framed, not painted.
        region = page.evaluate(f"() => window.busiLastDiagnosis.results[{i}].analysed_region")
        assert (pixels["frame"] > 0) == (region != [0, 0, 96, 96]), (pixels, region)
    # The heatmap itself is not blank: its colours vary over the image.
    heat = page.evaluate("() => window.busiLastDiagnosis.results[0].heatmap_png")
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat))).convert("RGB"), dtype=np.float32)
    assert heat.std(axis=(0, 1)).max() > 10, "the heatmap is flat"
    # The opacity slider blends in the browser: at 0 the overlay is the original, at 100 it is the heatmap.
    first = cards.nth(0)
    first.locator("input.opacity").fill("0")
    assert first.evaluate(OVERLAY_PIXELS)["diff"] < 1.0
    first.locator("input.opacity").fill("100")
    full = first.evaluate(OVERLAY_PIXELS)
    assert full["chroma"] > pixels["chroma"]
    href = first.locator("a.download").get_attribute("href")
    assert href.startswith("data:image/png;base64,")
    shot(page, "diagnose_results")
    # Drag and drop (a file the page cannot use is left out with a message), and a feature-map grid for a layer.
    page.evaluate(DROP, [base64.b64encode(files[0].read_bytes()).decode(), files[0].name])
    assert page.locator("#file-list li").count() == 1
    assert "notes.txt" in page.inner_text("#diagnose-error")
    page.select_option("#layer", index=1)
    page.click("#diagnose-submit")
    page.wait_for_selector(".result img.feature-maps")
    assert page.locator(".result img.feature-maps").evaluate("i => i.complete && i.naturalWidth > 0")
    assert page.locator(".result").count() == 1
    # The chosen explainer's parameters are on the page and reach the server: Score-CAM's batch_size.
    page.select_option("#layer", index=0)
    page.select_option("#explainer", "scorecam")
    page.wait_for_selector("#xp-batch_size")
    page.fill("#xp-batch_size", "0")
    page.click("#diagnose-submit")
    page.wait_for_selector("#diagnose-error:not([hidden])")
    assert "batch_size" in page.inner_text("#diagnose-error") and "at least 1" in page.inner_text("#diagnose-error")
    page.fill("#xp-batch_size", "4")
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-explainer='scorecam'][data-ready='1']")
    page.select_option("#explainer", "none")
    assert page.locator("#explainer-params [data-param]").count() == 0
    # Explainer "none" shows just the image: no second copy, no opacity slider, no overlay download, no legend.
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-explainer='none'][data-ready='1']")
    card = page.locator(".result").first
    assert card.locator("img.original").count() == 1 and card.locator("canvas").count() == 0
    assert card.locator("input.opacity, a.download, .legend").count() == 0


def test_a_heatmap_has_a_legend_and_a_caution_for_an_unlikely_class(server, new_page, tmp_path):
    default_model(server)
    image = _phantom_png(tmp_path, "malignant", 3)
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded='1']")
    page.set_input_files("#files", [str(image)])
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1']")
    result = page.evaluate("() => window.busiLastDiagnosis.results[0]")
    card = page.locator(".result").first
    assert card.locator(".legend .legend-bar").count() == 1
    assert "not a probability" in card.locator(".legend").inner_text()
    # Explain the least likely class: under 20% the card says what such a map means.
    unlikely = min(result["probabilities"], key=result["probabilities"].get)
    page.select_option("#target", unlikely)
    page.click("#diagnose-submit")
    page.wait_for_selector(f".result[data-ready='1'] >> text=class “{unlikely}”")
    result = page.evaluate("() => window.busiLastDiagnosis.results[0]")
    caution = page.locator(".result .caution")
    if result["probabilities"][unlikely] < 0.2:
        assert caution.count() == 1 and f"explains {unlikely}" in caution.inner_text()
    else:
        assert caution.count() == 0
    shot(page, "diagnose_caution")


def test_admin_cancels_a_running_run(server, new_page):
    page = new_page()
    login(page, server, ADMIN, "/train")
    fill_train_form(page, server, name="to be cancelled", epochs="300")
    run_id = submit_train_form(page)
    page.wait_for_function("() => window.busiRun && window.busiRun.status === 'running' && "
                           "window.busiRun.epochsDone >= 1", timeout=90_000)
    page.wait_for_selector("#cancel-run")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-run")
    page.wait_for_function("() => window.busiRun.status === 'cancelled'", timeout=45_000)
    assert page.inner_text("#run-status") == "cancelled"
    page.wait_for_selector("#run-actions[data-status='cancelled']")
    assert page.locator("#cancel-run").count() == 0
    shot(page, "run_cancelled")
    run = server.api(f"/api/runs/{run_id}")
    assert run["status"] == "cancelled" and 1 <= run["epochs_done"] < 300


def test_history_filters_and_compares_two_runs(server, new_page):
    wait_runs(server, 2)
    page = new_page()
    login(page, server, ADMIN, "/runs")
    assert page.locator("#runs-table tbody tr").count() >= 2
    page.select_option("#filter-status", "finished")
    page.wait_for_url(re.compile(r"status=finished"))
    statuses = page.locator("#runs-table tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.status)")
    assert len(statuses) >= 2 and set(statuses) == {"finished"}
    assert page.is_disabled("#compare-selected")
    boxes = page.locator(".select-run")
    ids = [boxes.nth(0).get_attribute("value"), boxes.nth(1).get_attribute("value")]
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/runs/compare\?ids="))
    page.wait_for_selector("#compare[data-loaded='1']")
    counts = page.evaluate("""() => Object.fromEntries(window.busiCharts.compare_loss.data.datasets
                                  .map((d) => [d.busiKey, d.data.length]))""")
    for run_id in ids:
        assert counts[f"{run_id}:val_loss"] == 2 and counts[f"{run_id}:train_loss"] == 2, counts
    headers = page.locator("#compare-table thead th[data-run-id]").evaluate_all("t => t.map((h) => h.dataset.runId)")
    assert headers == ids
    assert page.locator("#compare-table tr[data-metric='test_macro_f1'] td").count() == 2
    shot(page, "compare")


def test_mammography_model_takes_a_click_and_explains_the_crop(server, new_page, tmp_path):
    """A mammography model (trained on ROI crops) asks for one full mammogram and a click; the heatmap is of the
    crop around the click. The model is chosen under its modality, mammography."""
    root = synthetic_mias(tmp_path / "all-mias", pairs=10)
    run = server.api("/api/runs", {
        "backbone": "mammo_cnn", "dataset": "mias", "data_dir": str(root), "name": "mammo tiny",
        "backbone_params": {"dense": 16}, "dataset_params": {"crop_size": 32},
        "train": {"epochs": 1, "batch_size": 16, "input_size": 32, "resize": 32, "hflip": False, "rotation": 0,
                  "val_frac": 0.2, "test_frac": 0.2, "device": "cpu", "workers": 0, "seed": 1}})
    deadline = time.time() + 150
    while (state := server.api(f"/api/runs/{run['id']}"))["status"] in ("queued", "running"):
        assert time.time() < deadline, "the mammography run did not finish"
        time.sleep(0.5)
    assert state["status"] == "finished", state["error"]
    default_model(server, run["id"])  # the default of mammography, its own modality

    x, y, r = 70, 130, 6
    col, row = mias_to_pixel(x, y, SIDE)
    path = tmp_path / "mammogram.png"
    Image.fromarray(scan(99, [(x, y, r)])).save(path)
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded]")
    page.select_option("#modality", "mammography")
    assert page.eval_on_selector("#model", "s => s.selectedOptions[0].dataset.run") == str(run["id"])
    page.set_input_files("#files", [str(path)])
    page.wait_for_selector("#roi-image")
    page.wait_for_function("() => document.querySelector('#roi-image').naturalWidth > 0")
    # Without a click the page says what is missing instead of sending the whole mammogram.
    page.click("#diagnose-submit")
    page.wait_for_selector("#diagnose-error:not([hidden])")
    assert "click the centre" in page.inner_text("#diagnose-error")
    box = page.locator("#roi-image").bounding_box()
    assert (box["width"], box["height"]) == (SIDE, SIDE)  # shown at its own size
    # Mouse events carry whole CSS pixels: aim at a whole coordinate inside the target pixel.
    page.mouse.click(math.ceil(box["x"] + col) + 0.25, math.ceil(box["y"] + row) + 0.25)
    assert f"Centre ({col}, {row})" in page.inner_text("#roi-info")
    assert page.locator(".roi-box").is_visible()
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1']")
    card = page.locator(".result").first
    assert answered(card) in {"benign", "malignant"}
    assert card.locator(".prob-row").count() == 2
    assert "32 px square centred at" in card.inner_text()
    result = page.evaluate("() => window.busiLastDiagnosis.results[0]")
    assert result["roi"]["x"] == col and result["roi"]["y"] == row
    assert (result["width"], result["height"]) == (32, 32)  # the heatmap is drawn on the crop
    shot(page, "diagnose_mammogram_roi")
