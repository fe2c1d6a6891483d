"""``busi-web models``: defaults with reasons, the gate, acceptance sets and model cards from the command line."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CLASSES, finished_run, write_busi_folder


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args), catch_exceptions=False)

    return invoke


def test_models_commands_set_defaults_define_the_gate_and_print_cards(cli, store, tmp_path):
    run_id = finished_run(store)["id"]
    assert store.list_defaults() == []  # a run never makes itself the default
    no_reason = cli("models", "set-default", str(run_id))
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    done = cli("models", "set-default", str(run_id), "--reason", "tried on the command line")
    assert done.exit_code == 0 and f"run {run_id} is now the default ultrasound model" in done.output
    listed = json.loads(cli("models", "list", "--json").output)
    ultrasound = next(m for m in listed["modalities"] if m["modality"] == "ultrasound")
    assert ultrasound["default"]["run_id"] == run_id and ultrasound["default"]["reason"] == "tried on the command line"
    assert listed["models"][0]["demo"] is True and listed["models"][0]["default"] is True
    assert "ultrasound: default run" in cli("models", "list").output
    # A gate: an acceptance set from a folder, floors, and a score that fails them.
    folder = write_busi_folder(tmp_path / "busi", CLASSES, per_class=3)
    defined = cli("models", "acceptance", "ultrasound", "--source", "folder", "--dataset", "busi",
                  "--data-dir", str(folder))
    assert defined.exit_code == 0 and "acceptance set 1 for ultrasound: 9 images" in defined.output, defined.output
    bad_floor = cli("models", "settings", "ultrasound", "--floor", "macro_f1=high")
    assert bad_floor.exit_code == 1 and "must be a number" in bad_floor.output
    settings = json.loads(cli("models", "settings", "ultrasound", "--floor", "macro_f1=0.99", "--auto-promote").output)
    assert settings["floors"] == {"macro_f1": 0.99} and settings["auto_promote"] is True
    scored = cli("models", "evaluate", str(run_id))
    assert scored.exit_code == 0 and "9 images" in scored.output and "95% CI" in scored.output
    assert "gate: macro_f1" in scored.output and "below the floor 0.99" in scored.output
    again = cli("models", "set-default", str(run_id), "--reason", "again")
    assert again.exit_code == 1 and "does not pass the ultrasound acceptance gate" in again.output
    assert "Traceback" not in again.output
    cleared = cli("models", "clear-default", "ultrasound", "--reason", "failed our gate")
    assert cleared.exit_code == 0 and store.list_defaults() == []
    # The card, in JSON and in Markdown.
    card = json.loads(cli("models", "card", str(run_id)).output)
    assert card["results"]["acceptance"]["n"] == 9 and card["promotion"]["default_of"] is None
    assert [h["reason"] for h in card["promotion"]["history"]] == ["failed our gate", "tried on the command line"]
    md = cli("models", "card", str(run_id), "--markdown").output
    assert md.startswith(f"# Model card: run {run_id}") and "DEMO MODEL" in md and "95% CI" in md
