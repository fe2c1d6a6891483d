"""In a real browser: the Train form fills in the BUSI recipe when busi is chosen, and restores the defaults."""

from __future__ import annotations

import pytest

from busi_web.plugins import load_plugins
from tests.browser_steps import browser_login as login
from tests.helpers import ADMIN

pytestmark = pytest.mark.browser


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
    assert page.is_visible("#recipe-note") and "docs/quality.md" in page.inner_text("#recipe-note")
    page.select_option("#f-dataset", "phantom")
    assert page.input_value("#f-train-epochs") == "20" and page.input_value("#f-train-input_size") == "224"
    assert page.input_value("#f-backbone_params-output_stride") == "32"
    assert page.is_hidden("#recipe-note")
