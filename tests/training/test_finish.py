"""What follows a finished run (``training/finish.py``), through real trainer runs: acceptance images left out
and scored, promotion only through the gate, and the first-start demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from busi_web.store import run_files as art
from busi_web.training.params import prepare_run_params
from busi_web.training.trainer import run_training
from tests.helpers import PHANTOM, TINY, new_run


@pytest.mark.slow
def test_runs_leave_the_acceptance_set_out_are_scored_on_it_and_promote_only_through_the_gate(registry, store):
    from busi_web.evaluation.acceptance import choose_images

    items, modality = choose_images(registry, "phantom", None, source="share", dataset_params=PHANTOM, share=0.3)
    accepted = store.add_acceptance_set(modality, items=items, dataset="phantom", source="share", by="admin",
                                        dataset_params=PHANTOM, share=0.3)
    first = new_run(store, registry, train={"epochs": 1})
    assert run_training(store, first["id"], registry)["status"] == "finished"
    run_dir = Path(first["run_dir"])
    # Left out of every part, and said so.
    params = json.loads((run_dir / art.PARAMS_JSON).read_text())
    assert params["acceptance_left_out"] == {"set_id": accepted["id"], "identical": len(items), "near_duplicates": 0,
                                             "images": len(items)}
    split = json.loads((run_dir / art.SPLIT_JSON).read_text())
    keys = {it["key"] for it in items}
    assert set(split["excluded"]) == keys and not keys & set(split["train"] + split["val"] + split["test"])
    log = (run_dir / art.LOG_TXT).read_text()
    assert f"left out {len(items)} images: copies of the ultrasound acceptance set {accepted['id']}" in log
    # Scored on exactly the set, with intervals; no default (auto-promotion is off).
    result = store.acceptance_result(first["id"], accepted["id"])["metrics"]
    assert result["n"] == len(items) and len(result["ci"]["macro_f1"]) == 2
    assert json.loads((run_dir / art.ACCEPTANCE_JSON).read_text())["macro_f1"] == result["macro_f1"]
    assert store.default_model("ultrasound") is None
    # Auto-promotion on, with a floor every run passes: the next run becomes the default.
    store.update_modality_settings("ultrasound", by="admin", auto_promote=True, floors={"macro_f1": 0.0})
    second = new_run(store, registry, train={"epochs": 1})
    run_training(store, second["id"], registry)
    assert store.default_model("ultrasound")["run_id"] == second["id"]
    assert store.default_model("ultrasound")["reason"].startswith("auto-promotion: passed the ultrasound gate")
    # A ceiling no model reaches (ECE 0): the gate refuses, the default stays.
    store.update_modality_settings("ultrasound", by="admin", floors={"ece": 0.0})
    third = new_run(store, registry, train={"epochs": 1})
    run_training(store, third["id"], registry)
    assert store.default_model("ultrasound")["run_id"] == second["id"]
    assert "not promoted: it does not pass the gate: ece" in Path(third["run_dir"], art.LOG_TXT).read_text()


def test_the_first_start_demo_becomes_the_default_of_an_empty_instance_labelled_as_a_demo(registry, store):
    from busi_web.training.finish import FIRST_START_REASON

    params = prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "epochs": 1}, dataset_params=PHANTOM)
    run = store.create_run("tiny_cnn", "phantom", {**params, "first_start": True})
    run_training(store, run["id"], registry)
    default = store.default_model("ultrasound")
    assert default["run_id"] == run["id"] and default["reason"] == FIRST_START_REASON and default["set_by"] == "system"
    card = json.loads(Path(run["run_dir"], art.MODEL_CARD_JSON).read_text())
    assert card["demo"] and card["promotion"]["default_of"] == "ultrasound"
