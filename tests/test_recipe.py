"""The recommended BUSI recipe: declared on the dataset spec, served to the Train form, valid as a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from busi_web.plugins import load_plugins
from busi_web.train_params import prepare_run_params

from . import browser_support
from .browser_support import login
from .conftest import ADMIN
from .test_evaluate import write_busi_folder

chromium_path, server, browser, new_page = (browser_support.chromium_path, browser_support.server,
                                            browser_support.browser, browser_support.new_page)


def test_busi_declares_a_recipe_and_the_specs_api_serves_it(admin_client):
    specs = admin_client.get("/api/specs").get_json()
    by_name = {d["name"]: d for d in specs["datasets"]}
    rec = by_name["busi"]["recommended"]
    assert rec["backbone"] in {b["name"] for b in specs["backbones"]}
    train_names = {p["name"] for p in specs["train"]}
    assert set(rec["train"]) <= train_names and {"epochs", "lr", "input_size", "balance"} <= set(rec["train"])
    assert by_name["phantom"]["recommended"] is None
    assert "README" in rec["note"]


def test_the_recipe_is_a_valid_run_as_it_stands(tmp_path: Path):
    registry = load_plugins()
    rec = registry.dataset("busi").recommended
    data = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"])
    params = prepare_run_params(registry, rec["backbone"], "busi", train=rec["train"],
                                backbone_params=rec["backbone_params"], data_dir=str(data))
    assert params["train"]["input_size"] == rec["train"]["input_size"]
    assert params["backbone"] == {**params["backbone"], **rec["backbone_params"]}
    assert params["backbone"]["output_stride"] == 16


@pytest.mark.browser
def test_the_train_form_fills_in_the_recipe_when_busi_is_chosen(server, new_page):
    """In a real browser: choosing busi fills the form with its recipe; going back restores the defaults."""
    rec = load_plugins().dataset("busi").recommended
    page = new_page()
    login(page, server, ADMIN, "/train")
    page.wait_for_selector("#train[data-ready='1']")
    assert page.input_value("#f-train-epochs") == "20" and page.is_hidden("#recipe-note")
    page.select_option("#f-dataset", "busi")
    assert page.input_value("#f-backbone") == rec["backbone"]
    for key in ("epochs", "lr", "input_size", "resize", "optimizer", "scheduler", "balance", "crop_scale", "ema",
                "lesion_loss", "intensity"):
        got, want = page.input_value(f"#f-train-{key}"), rec["train"][key]
        assert (float(got) == want) if isinstance(want, float) else got == str(want), (key, got, want)
    assert float(page.input_value("#f-backbone_params-dropout")) == rec["backbone_params"]["dropout"]
    assert page.input_value("#f-backbone_params-output_stride") == str(rec["backbone_params"]["output_stride"])
    assert page.is_visible("#recipe-note") and "README" in page.inner_text("#recipe-note")
    page.select_option("#f-dataset", "phantom")
    assert page.input_value("#f-train-epochs") == "20" and page.input_value("#f-train-input_size") == "224"
    assert page.input_value("#f-backbone_params-output_stride") == "32"
    assert page.is_hidden("#recipe-note")
