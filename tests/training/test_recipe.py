"""The recommended BUSI recipe: declared on the dataset spec, served to the Train form, valid as a run."""

from __future__ import annotations

from pathlib import Path

from busi_web.plugins import load_plugins
from busi_web.training.params import prepare_run_params
from tests.helpers import write_busi_folder


def test_busi_declares_a_recipe_and_the_specs_api_serves_it(admin_client):
    specs = admin_client.get("/api/specs").get_json()
    by_name = {d["name"]: d for d in specs["datasets"]}
    rec = by_name["busi"]["recommended"]
    assert rec["backbone"] in {b["name"] for b in specs["backbones"]}
    train_names = {p["name"] for p in specs["train"]}
    assert set(rec["train"]) <= train_names and {"epochs", "lr", "input_size", "balance"} <= set(rec["train"])
    assert by_name["phantom"]["recommended"] is None
    assert "docs/quality.md" in rec["note"]


def test_the_recipe_is_a_valid_run_as_it_stands(tmp_path: Path):
    registry = load_plugins()
    rec = registry.dataset("busi").recommended
    data = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"])
    params = prepare_run_params(registry, rec["backbone"], "busi", train=rec["train"],
                                backbone_params=rec["backbone_params"], data_dir=str(data))
    assert params["train"]["input_size"] == rec["train"]["input_size"]
    assert params["backbone"] == {**params["backbone"], **rec["backbone_params"]}
    assert params["backbone"]["output_stride"] == 16
