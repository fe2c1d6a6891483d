"""The training engine through real parts: a real SQLite store, real trainer processes, real files.

Runs are tiny (tiny_cnn, 40 px phantoms, 12 per class, input 32): each takes
a second or two, plus the start of a Python process for the subprocess tests.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from busi_web.data.datasets import DatasetError
from busi_web.evaluation.metrics import classification_metrics, classification_report_text
from busi_web.plugins import UnknownPlugin
from busi_web.specs import InvalidParameters, Param
from busi_web.store import JobStore
from busi_web.store import run_files as art
from busi_web.training.params import TRAIN_PARAMS, prepare_run_params, validate_train_params
from busi_web.training.resume import load_state
from busi_web.training.trainer import run_training
from tests.helpers import PHANTOM, TINY, make_image_folder, new_run, start_trainer, wait_for

ROOT = Path(__file__).resolve().parent.parent
EPOCH_KEYS = {"train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_recall_benign",
              "val_recall_malignant", "val_recall_normal", "lr", "images_per_s", "epoch_time"}


def epoch_rows(store: JobStore, run_id: int) -> list[dict]:
    return [r for r in store.metrics(run_id) if r["key"] not in ("batch_loss", "batch_acc")
            and not r["key"].startswith("test_")]


def val_series(store: JobStore, run_id: int) -> dict[tuple[int, str], float]:
    return {(r["epoch"], r["key"]): r["value"] for r in epoch_rows(store, run_id) if r["key"].startswith("val_")}


# -- parameters ----------------------------------------------------------------------------------------------


def test_train_params_are_form_params_with_the_original_defaults():
    assert all(isinstance(p, Param) for p in TRAIN_PARAMS)
    d = validate_train_params({})
    assert (d["epochs"], d["batch_size"], d["lr"], d["optimizer"]) == (20, 16, 1e-4, "adam")
    assert (d["input_size"], d["resize"], d["hflip"], d["rotation"]) == (224, 256, True, 15.0)
    # Form values arrive as strings.
    typed = validate_train_params({"epochs": "3", "lr": "0.01", "hflip": "false", "balance": "oversample"})
    assert (typed["epochs"], typed["lr"], typed["hflip"], typed["balance"]) == (3, 0.01, False, "oversample")


def test_bad_training_values_are_refused_with_a_message_per_field():
    with pytest.raises(InvalidParameters) as exc:
        validate_train_params({"batch_size": 0, "optimizer": "rmsprop", "input_size": 300, "epochz": 3,
                               "val_frac": 0.5, "test_frac": 0.45, "device": "tpu"})
    errors = exc.value.errors
    assert set(errors) == {"batch_size", "optimizer", "resize", "epochz", "test_frac", "device"}
    assert "at least 1" in errors["batch_size"] and "adam" in errors["optimizer"]
    assert "input_size" in errors["resize"] and "unknown" in errors["epochz"]


def test_prepare_refuses_unknown_plugins_bad_values_and_missing_data(registry, store, tmp_path):
    with pytest.raises(UnknownPlugin, match="resnet51"):
        prepare_run_params(registry, "resnet51", "phantom")
    with pytest.raises(UnknownPlugin, match="nosuchset"):
        prepare_run_params(registry, "tiny_cnn", "nosuchset")
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "phantom", backbone_params={"width": 1})
    assert "width" in exc.value.errors
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetError, match=str(missing)):
        prepare_run_params(registry, "tiny_cnn", "imagefolder", data_dir=str(missing))
    with pytest.raises(DatasetError, match="data folder"):
        prepare_run_params(registry, "tiny_cnn", "imagefolder", data_dir=None)
    one_class = make_image_folder(tmp_path / "one", {"benign": 4})
    with pytest.raises(DatasetError, match="only one class"):
        prepare_run_params(registry, "tiny_cnn", "imagefolder", data_dir=str(one_class))
    assert store.list_runs() == []


# -- metrics and artifacts -----------------------------------------------------------------------------------


def test_classification_metrics_match_sklearn_and_skip_undefined_auc():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert np.array(m["confusion_matrix"]).sum() == 60
    only_two = classification_metrics([0, 1, 0, 1], probs[:4], ["a", "b", "c"])
    assert only_two["per_class"]["c"]["auc"] is None and only_two["auc"] is not None
    assert "n/a" in classification_report_text(only_two)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    art.write_json(target, {"a": 1})
    art.write_json(target, {"a": np.float32(2.5)})
    assert json.loads(target.read_text()) == {"a": 2.5}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


# -- whole runs ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_process_runs_to_finished_with_every_artifact(registry, store):
    from PIL import Image

    from busi_web.model.checkpoint import load_checkpoint
    from busi_web.model.predictor import Predictor

    run = new_run(store, registry)
    assert run["status"] == "queued"
    proc = start_trainer(store, run["id"])
    seen = [run["status"]]
    while proc.poll() is None:
        status = store.get_run(run["id"])["status"]
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.02)
    status = store.get_run(run["id"])["status"]
    if status != seen[-1]:
        seen.append(status)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert seen == ["queued", "running", "finished"]
    final = store.get_run(run["id"])
    assert final["error"] is None and final["epochs_done"] == 2
    assert final["best_metric_name"] == "val_macro_f1" and final["best_metric"] is not None
    run_dir = Path(final["run_dir"])
    for name in (art.BEST_PT, art.LAST_PT, art.HISTORY_PNG, art.CONFUSION_PNG, art.REPORT_TXT, art.LOG_TXT,
                 art.METRICS_JSON, art.SPLIT_JSON, art.PARAMS_JSON, art.RELIABILITY_PNG):
        assert (run_dir / name).is_file(), name
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    for png in (art.HISTORY_PNG, art.CONFUSION_PNG, art.RELIABILITY_PNG):
        with Image.open(run_dir / png) as im:
            im.load()
            assert im.size[0] > 200 and im.size[1] > 200
    model, meta = load_checkpoint(run_dir / art.BEST_PT, registry)
    assert meta.classes == ["benign", "malignant", "normal"] and meta.run_id == run["id"]
    assert (meta.input_size, meta.resize, meta.backbone) == (32, 36, "tiny_cnn")
    phantom = registry.dataset("phantom").build(PHANTOM)
    pred = Predictor.from_checkpoint(run_dir / art.BEST_PT, registry).predict(phantom.load_image(0), explainer=None)
    assert set(pred.probabilities) == set(meta.classes)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # The report and metrics.json count exactly the split's test part.
    split = json.loads((run_dir / art.SPLIT_JSON).read_text())
    test_counts = Counter(key.split("/")[1] for key in split["test"])
    metrics = json.loads((run_dir / art.METRICS_JSON).read_text())
    assert metrics["n"] == len(split["test"])
    assert {c: m["support"] for c, m in metrics["per_class"].items()} == dict(test_counts)
    report = (run_dir / art.REPORT_TXT).read_text()
    for cls, n in test_counts.items():
        line = next(ln for ln in report.splitlines() if ln.startswith(cls + " "))
        assert line.split()[-1] == str(n)
    assert final["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    # Calibrated on validation, reported on test; the temperature and the out-of-distribution reference travel
    # with the model, and the Predictor uses both.
    cal = metrics["calibration"]
    assert 1.0 <= cal["temperature"] <= 20 and cal["val"]["n"] == len(split["val"]) and cal["test"]["n"] == metrics["n"]
    assert cal["val"]["ece_after"] <= cal["val"]["ece_before"] + 1e-6  # fitted there: never worse
    assert meta.extra["temperature"] == pytest.approx(cal["temperature"])
    assert meta.extra["ood"]["threshold"] == pytest.approx(metrics["ood"]["threshold"])
    assert metrics["ood"]["threshold"] > 0
    predictor = Predictor.from_checkpoint(run_dir / art.BEST_PT, registry)
    assert predictor.temperature == pytest.approx(cal["temperature"]) and predictor.ood is not None
    blank = predictor.predict(np.zeros((40, 40), np.uint8), explainer="gradcam")
    assert blank.ood["out_of_distribution"] and blank.ood["score"] > blank.ood["threshold"]
    # Per-epoch metric rows, once each.
    rows = epoch_rows(store, run["id"])
    by_epoch = {e: {r["key"] for r in rows if r["epoch"] == e} for e in (1, 2)}
    assert all(keys >= EPOCH_KEYS for keys in by_epoch.values())
    assert len(rows) == len({(r["epoch"], r["key"]) for r in rows})
    assert "epoch 2/2" in (run_dir / art.LOG_TXT).read_text()
    # A run never makes itself a default: auto-promotion is off until an admin switches it on.
    assert store.default_model("ultrasound") is None
    assert "not promoted: auto-promotion is off for ultrasound" in (run_dir / art.LOG_TXT).read_text()
    # Its model card: the data, the training, the results (validation chose, test reported), the limits.
    card = json.loads((run_dir / art.MODEL_CARD_JSON).read_text())
    assert card["demo"] is True and card["model"]["modality"] == "ultrasound"
    assert card["data"]["split_sizes"] == {p: len(split[p]) for p in ("train", "val", "test")}
    assert len(card["data"]["data_hash"]) == 64 and card["training"]["hardware"]["device"] == "cpu"
    assert card["training"]["chosen_by"] == "val_macro_f1 on the validation part"
    assert card["results"]["test"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert card["results"]["validation"]["epoch"] == metrics["best_epoch"]
    assert any("synthetic" in limit for limit in card["intended_use"]["limits"])


@pytest.mark.slow
def test_sigterm_cancels_after_the_batch_and_saves_last_pt(registry, store):
    run = new_run(store, registry, train={"epochs": 500})
    proc = start_trainer(store, run["id"])
    wait_for(lambda: (store.get_run(run["id"])["epochs_done"] or 0) >= 1, what="the first epoch")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    final = store.get_run(run["id"])
    assert final["status"] == "cancelled" and "cancelled" in final["error"]
    state = load_state(Path(final["run_dir"]) / art.LAST_PT)
    assert state is not None and state["partial"] and state["epoch"] >= 1
    assert final["epochs_done"] < 500


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_last_pt_like_an_uninterrupted_run(registry, store):
    epochs = 8
    # With every augmentation, the weight average and lesion guidance on: resuming restores the average and the
    # guide's head too.
    train = {"epochs": epochs, "ema": 0.9, "crop_scale": 0.6, "intensity": 0.2, "label_smoothing": 0.1,
             "lesion_loss": 0.5}
    baseline = new_run(store, registry, train=train)
    assert run_training(store, baseline["id"], registry)["status"] == "finished"
    run = new_run(store, registry, train=train)
    proc = start_trainer(store, run["id"])
    wait_for(lambda: (store.get_run(run["id"])["epochs_done"] or 0) >= 2, what="two epochs")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed = store.get_run(run["id"])
    assert killed["status"] == "running" and killed["epochs_done"] < epochs
    # What the job runner does: mark it interrupted at start-up, then re-queue it on resume.
    store.transition(run["id"], "interrupted", error="the trainer process stopped unexpectedly")
    store.transition(run["id"], "queued", error=None, pid=None)
    resumed = start_trainer(store, run["id"])
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    final = store.get_run(run["id"])
    assert final["status"] == "finished" and final["epochs_done"] == epochs
    rows = epoch_rows(store, run["id"])
    assert len(rows) == len({(r["epoch"], r["key"]) for r in rows}), "duplicated metric rows"
    assert {r["epoch"] for r in rows} == set(range(1, epochs + 1))
    log_text = (Path(final["run_dir"]) / art.LOG_TXT).read_text()
    assert "resuming after epoch" in log_text
    # Every epoch draws its randomness from (seed, epoch): the resumed run retraces the uninterrupted one. The
    # baseline ran in this process and the resumed run in another, whose float32 kernels may sum in another order:
    # allow rounding noise, far below what a different seed or a restart from scratch changes.
    a, b = val_series(store, baseline["id"]), val_series(store, run["id"])
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4


def test_seeded_cpu_run_reproduces_its_metrics(registry, store):
    first, second = (new_run(store, registry, train={"balance": "oversample"}) for _ in range(2))
    for r in (first, second):
        assert run_training(store, r["id"], registry)["status"] == "finished"
    a, b = val_series(store, first["id"]), val_series(store, second["id"])
    assert len(a) >= 2 * 5 and a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 1e-6
    other = new_run(store, registry, train={"balance": "oversample", "seed": 8})
    run_training(store, other["id"], registry)
    assert val_series(store, other["id"]) != a


def test_monitor_last_keeps_the_final_weight_average_where_validation_picks_an_earlier_epoch(registry, store):
    from busi_web.model.checkpoint import read_checkpoint

    with pytest.raises(InvalidParameters) as exc:
        validate_train_params({"monitor": "last", "patience": 3})
    assert "patience" in exc.value.errors and "monitor" in exc.value.errors["patience"]
    train = {"epochs": 6, "lr": 0.03, "ema": 0.5, "patience": 0}
    picked, kept = new_run(store, registry, train=train), new_run(store, registry, train={**train, "monitor": "last"})
    for r in (picked, kept):
        assert run_training(store, r["id"], registry)["status"] == "finished"
    # The same seeded run: validation macro-F1 peaks before the end, so the two modes keep different models.
    assert json.loads((Path(store.get_run(picked["id"])["run_dir"]) / art.METRICS_JSON).read_text())["best_epoch"] < 6
    assert val_series(store, picked["id"]) == val_series(store, kept["id"])
    final = store.get_run(kept["id"])
    run_dir = Path(final["run_dir"])
    meta, weights = read_checkpoint(run_dir / art.BEST_PT)
    assert meta.extra["epoch"] == 6 and meta.extra["monitor"] == "last"
    average = load_state(run_dir / art.LAST_PT)["ema"]["model"]
    assert weights.keys() == average.keys() and all(torch.equal(weights[k], average[k]) for k in weights)
    metrics = json.loads((run_dir / art.METRICS_JSON).read_text())
    assert metrics["best_epoch"] == 6 and metrics["monitor"] == "last"
    assert final["best_metric_name"] == "val_macro_f1 (last epoch)"
    assert final["best_metric"] == pytest.approx(val_series(store, kept["id"])[(6, "val_macro_f1")])
    assert "model of the last epoch, 6" in (run_dir / art.REPORT_TXT).read_text()


def test_failures_are_stored_on_the_run_and_leave_other_runs_alone(registry, store, tmp_path):
    done = new_run(store, registry, train={"epochs": 1})
    run_training(store, done["id"], registry)
    store.set_default(done["id"], by="test", reason="the model the failures must leave alone")
    before = store.get_run(done["id"])
    # Data that was fine when the run was queued but lost a class folder before it ran.
    folder = make_image_folder(tmp_path / "data", {"benign": 6, "malignant": 6})
    gone = new_run(store, registry, dataset={}, dataset_name="imagefolder", data_dir=str(folder))
    for f in (folder / "malignant").iterdir():
        f.unlink()
    (folder / "malignant").rmdir()
    assert run_training(store, gone["id"], registry)["status"] == "failed"
    assert "only one class" in store.get_run(gone["id"])["error"]
    # Parameters stored without validation (an old or hand-edited row): refused by the trainer too.
    bad = store.create_run("tiny_cnn", "phantom", {"train": {"batch_size": 0}, "backbone": {}, "dataset": PHANTOM})
    assert run_training(store, bad["id"], registry)["status"] == "failed"
    assert "batch_size" in store.get_run(bad["id"])["error"]
    unknown = store.create_run("resnet51", "phantom", {"train": TINY, "backbone": {}, "dataset": PHANTOM})
    failed = run_training(store, unknown["id"], registry)
    assert failed["status"] == "failed" and "resnet51" in failed["error"]
    after = store.get_run(done["id"])
    assert after == before
    assert store.default_model("ultrasound")["run_id"] == done["id"]


def test_out_of_memory_message_says_to_lower_the_batch_size():
    from busi_web.training.trainer import _failure_message

    class Job:
        train = {"batch_size": 64, "input_size": 224}
        device_name = "cuda:0"

    lines: list[str] = []
    message = _failure_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Job(),
                               lines.append)
    assert "batch_size 64" in message and "lower batch_size" in message
    assert lines and "FAILED" in lines[0]


def test_weight_average_follows_the_recurrence_and_is_what_predict_runs():
    from busi_web.training.loop import Engine, WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    engine = Engine(model, opt, torch.nn.CrossEntropyLoss(), torch.device("cpu"), ema_decay=0.8)
    assert engine.eval_model is engine.ema.model and engine.eval_model is not model
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))) for _ in range(5)]
    for n, batch in enumerate(batches, start=1):
        engine.train_epoch([batch])
        w = 1 - min(0.8, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expected[k] = expected[k] + w * (v - expected[k]) if v.is_floating_point() else v.clone()
    for k, v in engine.ema.model.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert not torch.allclose(engine.ema.model[5].weight, model[5].weight)  # an average, not a copy
    assert not any(p.requires_grad for p in engine.ema.model.parameters())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    _labels, probs, _loss = engine.predict([(x, y)])
    engine.ema.model.eval()
    with torch.no_grad():
        assert np.allclose(probs, torch.softmax(engine.ema.model(x), 1).numpy(), atol=1e-6)
    state = engine.ema.state_dict()
    copy_ = WeightAverage(model, 0.8)
    copy_.load_state_dict(state)
    pairs = zip(copy_.model.state_dict().values(), engine.ema.model.state_dict().values(), strict=True)
    assert copy_.updates == 5 and all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(model, 1.0)
