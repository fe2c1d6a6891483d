"""``busi-web models``: defaults with reasons, the gate, acceptance sets and model cards from the command line,
through the real console script on a temporary instance folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from busi_web.store import JobStore
from tests.helpers import CLASSES, run_cli, write_busi_folder

TINY = ("--epochs", "1", "--batch-size", "8", "--param", "size=32", "--param", "dataset.per_class=6",
        "--param", "input_size=32", "--param", "train.resize=32", "--param", "workers=0",
        "--param", "backbone.width=4")


def cli(instance: Path, *args: str):
    return run_cli(*args, env={"BUSI_WEB_INSTANCE_PATH": str(instance), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_models_commands_set_defaults_define_the_gate_and_print_cards(tmp_path):
    instance = tmp_path / "instance"
    trained = cli(instance, "train", "--backbone", "tiny_cnn", "--dataset", "phantom", "--name", "cli model", *TINY)
    assert trained.returncode == 0, trained.stderr
    run_id = int(re.match(r"run (\d+):", trained.stdout).group(1))
    assert JobStore(instance / "busi.db", instance / "runs").list_defaults() == []  # not by itself
    no_reason = cli(instance, "models", "set-default", str(run_id))
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    done = cli(instance, "models", "set-default", str(run_id), "--reason", "tried on the command line")
    assert done.returncode == 0 and f"run {run_id} is now the default ultrasound model" in done.stdout
    listed = json.loads(cli(instance, "models", "list", "--json").stdout)
    ultrasound = next(m for m in listed["modalities"] if m["modality"] == "ultrasound")
    assert ultrasound["default"]["run_id"] == run_id and ultrasound["default"]["reason"] == "tried on the command line"
    assert listed["models"][0]["demo"] is True and listed["models"][0]["default"] is True
    # A gate: an acceptance set from a folder, floors, and a score that fails them.
    folder = write_busi_folder(tmp_path / "busi", CLASSES, per_class=3)
    defined = cli(instance, "models", "acceptance", "ultrasound", "--source", "folder", "--dataset", "busi",
                  "--data-dir", str(folder))
    assert defined.returncode == 0 and "acceptance set 1 for ultrasound: 9 images" in defined.stdout, defined.stderr
    bad_floor = cli(instance, "models", "settings", "ultrasound", "--floor", "macro_f1=high")
    assert bad_floor.returncode == 1 and "must be a number" in bad_floor.stderr
    settings = cli(instance, "models", "settings", "ultrasound", "--floor", "macro_f1=0.99", "--auto-promote")
    assert json.loads(settings.stdout)["floors"] == {"macro_f1": 0.99} and json.loads(settings.stdout)["auto_promote"]
    scored = cli(instance, "models", "evaluate", str(run_id))
    assert scored.returncode == 0 and "9 images" in scored.stdout and "95% CI" in scored.stdout
    assert "gate: macro_f1" in scored.stdout and "below the floor 0.99" in scored.stdout
    again = cli(instance, "models", "set-default", str(run_id), "--reason", "again")
    assert again.returncode == 1 and "does not pass the ultrasound acceptance gate" in again.stderr
    assert "Traceback" not in again.stderr
    cleared = cli(instance, "models", "clear-default", "ultrasound", "--reason", "failed our gate")
    assert cleared.returncode == 0 and JobStore(instance / "busi.db", instance / "runs").list_defaults() == []
    # The card, in JSON and in Markdown.
    card = json.loads(cli(instance, "models", "card", str(run_id)).stdout)
    assert card["results"]["acceptance"]["n"] == 9 and card["promotion"]["default_of"] is None
    assert [h["reason"] for h in card["promotion"]["history"]] == ["failed our gate", "tried on the command line"]
    md = cli(instance, "models", "card", str(run_id), "--markdown").stdout
    assert md.startswith(f"# Model card: run {run_id} — cli model") and "DEMO MODEL" in md and "95% CI" in md
