"""``busi-web train / runs / predict`` through the real console script, on a temporary instance folder.

One tiny run (tiny_cnn, 32 px phantoms, 6 per class, one epoch) is trained
once for the module; every call starts a real ``busi-web`` process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_web.store import JobStore
from tests.helpers import run_cli

CLASSES = ["benign", "malignant", "normal"]
TINY = ("--epochs", "1", "--batch-size", "8", "--param", "size=32", "--param", "dataset.per_class=6",
        "--param", "input_size=32", "--param", "train.resize=32", "--param", "workers=0",
        "--param", "backbone.width=4")


def cli(instance: Path, *args: str):
    return run_cli(*args, env={"BUSI_WEB_INSTANCE_PATH": str(instance), "OMP_NUM_THREADS": "1"})


def store_of(instance: Path) -> JobStore:
    return JobStore(instance / "busi.db", instance / "runs")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One finished run, trained by ``busi-web train``: its instance folder, output and id."""
    instance = tmp_path_factory.mktemp("cli") / "instance"
    result = cli(instance, "train", "--backbone", "tiny_cnn", "--dataset", "phantom", "--name", "cli run", *TINY)
    assert result.returncode == 0, result.stderr
    match = re.match(r"run (\d+): (\S+)$", result.stdout.splitlines()[0])
    assert match, result.stdout
    return {"instance": instance, "result": result, "run_id": int(match.group(1)), "run_dir": Path(match.group(2))}


@pytest.mark.slow
def test_train_prints_the_run_and_its_folder_and_records_it(trained):
    instance, out = trained["instance"], trained["result"].stdout
    run_dir = trained["run_dir"]
    assert run_dir.parent == instance / "runs" and run_dir.is_dir()
    assert re.fullmatch(rf"\d{{4}}-\d{{2}}-\d{{2}}_\d{{2}}-\d{{2}}-\d{{2}}_{trained['run_id']}", run_dir.name)
    assert f"run {trained['run_id']} finished: {run_dir}" in out and "test macro-F1" in out
    run = store_of(instance).get_run(trained["run_id"])
    assert (run["status"], run["backbone"], run["dataset"], run["name"]) == ("finished", "tiny_cnn", "phantom",
                                                                           "cli run")
    assert run["run_dir"] == str(run_dir) and run["epochs_done"] == 1
    # Bare and prefixed --param keys reached the right part of the parameters.
    p = run["params"]
    assert (p["train"]["epochs"], p["train"]["batch_size"], p["train"]["input_size"], p["train"]["resize"]) == (
        1, 8, 32, 32)
    assert (p["dataset"]["size"], p["dataset"]["per_class"], p["backbone"]["width"]) == (32, 6, 4)
    assert (run_dir / "best_model.pt").is_file() and (run_dir / "metrics.json").is_file()
    # The progress bar counts the run's batches (so it can show an ETA), not epochs.
    err = trained["result"].stderr
    assert re.search(r"\b(\d+)/\1 \[", err) and ("batch/s" in err or "s/batch" in err), err[-600:]


@pytest.mark.slow
def test_runs_lists_as_json_and_show_gives_one_run(trained):
    listed = cli(trained["instance"], "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [(r["id"], r["status"], r["name"]) for r in runs] == [(trained["run_id"], "finished", "cli run")]
    assert runs[0]["params"]["dataset"]["per_class"] == 6

    shown = cli(trained["instance"], "runs", "show", str(trained["run_id"]))
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.strip().split(": ", 1) for line in shown.stdout.splitlines() if ": " in line)
    assert fields["id"] == str(trained["run_id"]) and fields["status"] == "finished"
    assert fields["run_dir"] == str(trained["run_dir"]) and fields["epochs_done"] == "1"
    assert {"best_model.pt", "metrics.json", "split.json"} <= set(fields["artifacts"].split(", "))
    assert json.loads(fields["params"])["backbone"]["width"] == 4


@pytest.mark.slow
def test_predict_prints_probabilities_and_writes_overlays_that_decode(trained, tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for name, shape in (("scan_a.png", (40, 52)), ("scan_b.jpg", (36, 36, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / name)
        images.append(tmp_path / name)
    out_dir = tmp_path / "overlays"
    result = cli(trained["instance"], "predict", *map(str, images), "--run", str(trained["run_id"]),
                 "--out", str(out_dir), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    answers = answer["results"]
    assert [a["image"] for a in answers] == [str(p) for p in images]
    # Which model answered, and that it is decision support (a phantom model is a demo).
    assert answer["model"]["run_id"] == trained["run_id"] and answer["model"]["demo"] is True
    assert "not a diagnosis" in answer["notice"]
    for answer, (h, w) in zip(answers, [(40, 52), (36, 36)], strict=True):
        probs = answer["probabilities"]
        assert set(probs) == set(CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        # A random image is out of distribution for the model: its class is withheld, the probabilities stay.
        assert answer["label"] == (None if answer["withheld"] else max(probs, key=probs.get))
        overlay = Path(answer["overlay"])
        assert overlay.parent == out_dir and overlay.name.endswith("_gradcam.png")
        with Image.open(overlay) as im:
            im.load()
            assert im.format == "PNG" and im.size == (w, h) and im.mode == "RGB"
    assert sorted(p.name for p in out_dir.iterdir()) == ["scan_a_gradcam.png", "scan_b_gradcam.png"]
    # An explainer's own parameters are set with --explainer-param, checked as the API checks them.
    scored = cli(trained["instance"], "predict", str(images[0]), "--run", str(trained["run_id"]), "--out",
                 str(out_dir), "--explainer", "scorecam", "--explainer-param", "batch_size=4")
    assert scored.returncode == 0 and (out_dir / "scan_a_scorecam.png").is_file(), scored.stderr
    assert f"model: run {trained['run_id']} (cli run), ultrasound [DEMO: trained on synthetic images]" in scored.stdout
    assert "Decision support, not a diagnosis" in scored.stdout
    bad = cli(trained["instance"], "predict", str(images[0]), "--out", str(out_dir), "--explainer", "scorecam",
              "--explainer-param", "batch_size=0")
    assert bad.returncode == 1 and "batch_size: must be at least 1" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args, message", [
    (("--backbone", "resnet51"), "unknown backbone 'resnet51'; available: "),
    (("--backbone", "tiny_cnn", "--epochs", "0"), "epochs: must be at least 1 (got 0)"),
    (("--backbone", "tiny_cnn", "--param", "colour=red"), "--param colour: unknown parameter"),
    (("--backbone", "tiny_cnn", "--dataset", "busi", "--data-dir", "{missing}"), "data folder {missing} does not"),
])
@pytest.mark.slow
def test_bad_train_input_fails_with_a_clear_message_and_records_nothing(tmp_path, args, message):
    missing = str(tmp_path / "no-busi-here")
    instance = tmp_path / "instance"
    result = cli(instance, "train", *(a.format(missing=missing) for a in args))
    assert result.returncode != 0
    # Click's one-line error is the last thing written: an uncaught exception would end with its traceback.
    # (Earlier lines may hold the load report of a broken third-party plugin, which is not this command's doing.)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message.format(missing=missing) in last, result.stderr
    assert "Traceback" not in result.stdout
    assert store_of(instance).list_runs() == []


@pytest.mark.slow
def test_cancel_then_resume_a_foreground_cli_run(tmp_path):
    """`busi-web cancel` stops a `busi-web train` running in another process; `busi-web resume` finishes it."""
    import os
    import signal
    import subprocess
    import sys

    from busi_web.training.runner import pid_is_trainer
    from tests.helpers import wait_for

    instance = tmp_path / "instance"
    env = dict(os.environ, BUSI_WEB_INSTANCE_PATH=str(instance), OMP_NUM_THREADS="1")
    epochs = 12
    args = [*(a if a != "1" else str(epochs) for a in TINY), "--param", "patience=0"]  # no early stop
    exe = Path(sys.executable).with_name("busi-web")
    proc = subprocess.Popen([str(exe), "train", "--backbone", "tiny_cnn", "--dataset", "phantom", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (instance / "busi.db").exists(), timeout=60, what="the store")
        store = store_of(instance)
        run = wait_for(lambda: next((r for r in store.list_runs() if (r["epochs_done"] or 0) >= 1), None),
                       timeout=120, what="the first epoch")
        # Hold the trainer still so that it cannot finish before the cancel arrives, however fast the machine.
        os.kill(proc.pid, signal.SIGSTOP)
        run = store.get_run(run["id"])
        # The foreground CLI process counts as a live trainer: recovery in a web process must leave it alone.
        assert run["status"] == "running" and run["pid"] == proc.pid and pid_is_trainer(proc.pid)
        canceller = subprocess.Popen([str(exe), "cancel", str(run["id"])], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        wait_for(lambda: store.get_run(run["id"])["cancel_requested"], timeout=60, what="the cancel request")
        os.kill(proc.pid, signal.SIGCONT)
        out, err = canceller.communicate(timeout=60)
        assert canceller.returncode == 0, err
        assert f"run {run['id']} cancelled" in out
        assert proc.wait(timeout=60) != 0  # `train` reports a run that did not finish as an error
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = store.get_run(run["id"])
    assert stopped["status"] == "cancelled" and stopped["epochs_done"] < epochs
    assert (Path(stopped["run_dir"]) / "last.pt").is_file()

    resumed = cli(instance, "resume", str(run["id"]))
    assert resumed.returncode == 0, resumed.stderr
    final = store.get_run(run["id"])
    assert final["status"] == "finished" and final["epochs_done"] == epochs
    assert "resuming after epoch" in (Path(final["run_dir"]) / "training_log.txt").read_text()

    for command, message in ((("resume", str(run["id"])), "is finished"), (("cancel", "999"), "there is no run 999")):
        refused = cli(instance, *command)
        assert refused.returncode != 0 and message in refused.stderr.strip().splitlines()[-1], refused.stderr
