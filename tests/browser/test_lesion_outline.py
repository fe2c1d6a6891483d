"""The Diagnose page with a segmenting model, in a real browser: the outline over the image, sizes and descriptors.

The model is trained through the API by the server's own trainer process (segmenting_resnet on 64 px phantoms,
a 32 px first look), then chosen on the Diagnose page by a clinician.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.browser_steps import browser_login as login
from tests.browser_steps import default_model, shot
from tests.helpers import CLINICIAN

pytestmark = pytest.mark.browser

GREEN_PIXELS = """(canvas) => {
  const ctx = canvas.getContext("2d");
  const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 40 && d[i + 1] > 220 && d[i + 2] > 70 && d[i + 2] < 140) n++;
  return n;
}"""


def test_the_result_card_outlines_the_lesion_and_lists_its_size_and_descriptors(server, new_page, tmp_path):
    run = server.api("/api/runs", {
        "backbone": "segmenting_resnet", "dataset": "phantom", "name": "outline",
        "backbone_params": {"look_size": 32, "crop_size": 32}, "dataset_params": {"size": 64, "per_class": 40},
        "train": {"epochs": 8, "batch_size": 16, "input_size": 64, "resize": 64, "lr": 0.002, "optimizer": "adamw",
                  "lesion_loss": 1.0, "hflip": False, "rotation": 0, "device": "cpu", "workers": 0, "seed": 1}})
    deadline = time.time() + 240
    while (state := server.api(f"/api/runs/{run['id']}"))["status"] in ("queued", "running"):
        assert time.time() < deadline, "the segmenting run did not finish"
        time.sleep(0.5)
    assert state["status"] == "finished", state["error"]
    default_model(server, run["id"])

    from busi_web_plugins.phantom import CLASSES, render_phantom

    paths = []
    for k in range(4):
        image, _mask = render_phantom("malignant", 64, 7, CLASSES.index("malignant"), k, 1.0)
        paths.append(tmp_path / f"malignant_{k}.png")
        Image.fromarray(image).save(paths[-1])
    page = new_page()
    login(page, server, CLINICIAN, "/diagnose")
    page.wait_for_selector("#diagnose[data-model-loaded='1']")
    assert page.eval_on_selector("#model", "s => s.selectedOptions[0].dataset.run") == str(run["id"])
    page.set_input_files("#files", [str(p) for p in paths])
    page.fill("#pixel-spacing", "0.2")
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-ready='1'] >> nth=3")
    results = page.evaluate("() => window.busiLastDiagnosis.results")
    found = [k for k, r in enumerate(results) if r["lesion"]["found"]]
    assert found, [r["lesion"]["statement"] for r in results]
    for k, result in enumerate(results):
        card = page.locator(".result").nth(k)
        box = card.locator(".lesion")
        assert box.count() == 1 and result["lesion"]["statement"] in box.inner_text()
        if k not in found:
            assert box.get_attribute("data-found") == "0"
            continue
        assert box.get_attribute("data-found") == "1"
        text = box.inner_text()
        m = result["lesion"]["measurements"]
        assert m["long_axis_mm"] == pytest.approx(0.2 * m["long_axis_px"], abs=0.06)
        assert f"{m['long_axis_mm']:.1f} mm" in text
        for name in ("shape", "orientation", "margin"):
            assert box.locator(f"[data-descriptor='{name}']").inner_text() == \
                result["lesion"]["descriptors"][name]["value"]
        # The outline is drawn over the overlay, and stays at every opacity.
        canvas = card.locator("canvas.overlay")
        assert canvas.evaluate(GREEN_PIXELS) > 10
        card.locator("input.opacity").fill("0")
        assert canvas.evaluate(GREEN_PIXELS) > 10
    shot(page, "diagnose_lesion_outline")
    # Without a heatmap the image still carries the outline.
    page.select_option("#explainer", "none")
    page.click("#diagnose-submit")
    page.wait_for_selector(".result[data-explainer='none'][data-ready='1'] >> nth=3")
    assert page.locator(".result").nth(found[0]).locator("canvas.outlined").evaluate(GREEN_PIXELS) > 10
