"""``busi-web evaluate`` through real parts: a tiny trained run, the real console script, real report files.

One tiny run (tiny_cnn, 48 px phantoms, input 32) is trained once for the module in a temporary
instance; each CLI call is a subprocess with ``BUSI_WEB_INSTANCE_PATH`` pointing at it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from busi_web.model.calibration import apply_temperature, expected_calibration_error
from busi_web.plugins import load_plugins
from tests.helpers import make_user_client, run_cli, write_busi_folder

TINY = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "input_size": 32, "resize": 36, "seed": 3}
PHANTOM = {"size": 48, "per_class": 8, "seed": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A finished tiny phantom run in a fresh instance: ``{"instance", "app", "run"}``."""
    from busi_web import create_app
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training

    inst = tmp_path_factory.mktemp("eval") / "instance"
    app = create_app({"INSTANCE_PATH": str(inst), "SECRET_KEY": "t", "TESTING": True, "AUTO_FIRST_RUN": False,
                      "WTF_CSRF_ENABLED": False})
    store, registry = app.extensions["busi_web"].store, app.extensions["busi_web"].registry
    params = prepare_run_params(registry, "tiny_cnn", "phantom", train=TINY, dataset_params=PHANTOM)
    run = store.create_run("tiny_cnn", "phantom", params)
    final = run_training(store, run["id"], registry=registry)
    assert final["status"] == "finished", final.get("error")
    return {"instance": inst, "app": app, "run": final}


def cli(trained: dict, *args: str):
    """The real ``busi-web`` console script in a subprocess (a few seconds: it imports torch)."""
    env = {"BUSI_WEB_INSTANCE_PATH": str(trained["instance"]), "BUSI_WEB_AUTO_FIRST_RUN": "false",
           "OMP_NUM_THREADS": "1"}
    return run_cli("evaluate", *args, env=env, timeout=240)


def invoke(trained: dict, *args: str):
    """The same click command in this process (Flask's CLI runner): fast, for the many small cases."""
    result = trained["app"].test_cli_runner().invoke(args=["evaluate", *args])
    assert result.exit_code == 0 or result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception  # an uncaught exception would be a traceback for the user
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def report_folders(run: dict) -> list[Path]:
    return sorted((Path(run["run_dir"]) / "evaluations").glob("*"))


def new_report(run: dict, before: list[Path]) -> Path:
    """The one report folder added since ``before`` (names have one-second stamps: no ordering by name)."""
    (folder,) = set(report_folders(run)) - set(before)
    return folder


@pytest.mark.slow
def test_evaluate_cli_writes_a_report_that_agrees_with_sklearn(trained):
    run = trained["run"]
    before = report_folders(run)
    r = cli(trained, "--run", str(run["id"]))
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "report.md" in r.stdout
    folder = new_report(run, before)
    report = json.loads((folder / "report.json").read_text())
    classes = report["classes"]
    assert classes == ["benign", "malignant", "normal"] and report["part"] is None
    preds = report["predictions"]
    assert len(preds) == 24  # the whole generated set: 3 classes x 8
    y = [classes.index(p["true"]) for p in preds]
    yhat = [classes.index(p["pred"]) for p in preds]
    probs = np.array([[p["probabilities"][c] for c in classes] for p in preds])
    assert yhat == list(probs.argmax(axis=1))
    c = report["classification"]
    assert c["n"] == 24
    assert c["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert c["macro_f1"] == pytest.approx(f1_score(y, yhat, average="macro", labels=[0, 1, 2], zero_division=0))
    assert c["confusion_matrix"] == confusion_matrix(y, yhat, labels=[0, 1, 2]).tolist()
    prec = precision_score(y, yhat, average=None, labels=[0, 1, 2], zero_division=0)
    rec = recall_score(y, yhat, average=None, labels=[0, 1, 2], zero_division=0)
    for k, name in enumerate(classes):
        assert c["per_class"][name]["precision"] == pytest.approx(prec[k])
        assert c["per_class"][name]["recall"] == pytest.approx(rec[k])
        assert c["per_class"][name]["auc"] == pytest.approx(roc_auc_score(np.array(y) == k, probs[:, k]))

    # Localisation and the shortcut check for every registered explainer, beside their chance baselines.
    explainers = sorted(load_plugins().explainers)
    assert sorted(report["localisation"]) == explainers == sorted(report["shortcuts"])
    lesions = sum(p["has_lesion"] for p in preds)
    assert lesions == 16  # phantom: benign and malignant have a mass, normal has none
    for name in explainers:
        loc = report["localisation"][name]
        assert loc["n"] == lesions
        for key in ("pointing", "energy", "iou", "chance"):
            assert 0.0 <= loc[key] <= 1.0, (name, key, loc)
        per_image = report["localisation_per_image"][name]
        assert loc["chance"] == pytest.approx(np.mean([r["pointing_chance"] for r in per_image]))
        assert loc["pointing"] == pytest.approx(np.mean([r["pointing_hit"] for r in per_image]))
        assert {"flagged", "mark_energy", "mark_chance", "flagged_share"} <= set(report["shortcuts"][name])

    # The PNGs decode, and the Markdown names the numbers.
    assert {"confusion_matrix.png", "localisation.png", "examples_gradcam.png", "reliability.png"} <= set(
        report["pngs"])
    for png in report["pngs"]:
        with Image.open(folder / png) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50
    md = (folder / "report.md").read_text()
    assert f"macro-F1 {c['macro_f1']:.3f}" in md and "pointing game" in md and "Shortcut check" in md
    # Calibration before and after the model's temperature, on the same predictions: the raw probabilities
    # come back exactly from the calibrated ones.
    cal = report["calibration"]
    assert cal["n"] == c["n"] and cal["temperature"] > 0 and f"{cal['ece_before']:.3f} before" in md
    served = np.array([[p["probabilities"][k] for k in report["classes"]] for p in preds])
    assert cal["ece_after"] == pytest.approx(expected_calibration_error(served, np.array(y)), abs=1e-6)
    raw = apply_temperature(served, 1 / cal["temperature"])
    assert np.allclose(apply_temperature(raw, cal["temperature"]), served, atol=1e-5)


def test_evaluate_a_part_of_the_runs_split_and_some_explainers(trained):
    run = trained["run"]
    before = report_folders(run)
    r = invoke(trained, "--run", str(run["id"]), "--part", "test", "--explainers", "gradcam,cam")
    assert r.returncode == 0, r.stderr
    folder = new_report(run, before)
    assert folder.name.endswith("_phantom_test")
    report = json.loads((folder / "report.json").read_text())
    split = json.loads((Path(run["run_dir"]) / "split.json").read_text())
    assert sorted(p["key"] for p in report["predictions"]) == sorted(split["test"])
    assert sorted(report["localisation"]) == ["cam", "gradcam"]


def test_evaluate_on_a_busi_layout_folder(trained, tmp_path):
    """The hospital case: the phantom-trained model on a folder in the BUSI layout, read by the busi plugin."""
    data = write_busi_folder(tmp_path / "hospital", ["benign", "malignant", "normal"])
    before = report_folders(trained["run"])
    r = invoke(trained, "--run", str(trained["run"]["id"]), "--data-dir", str(data), "--dataset", "busi",
               "--explainers", "gradcam,scorecam", "--max-maps", "scorecam=2")
    assert r.returncode == 0, r.stderr
    folder = new_report(trained["run"], before)
    report = json.loads((folder / "report.json").read_text())
    assert report["dataset"] == "busi" and report["classification"]["n"] == 6
    assert report["localisation"]["gradcam"]["n"] == 4
    assert report["localisation"]["gradcam"]["chance"] == pytest.approx(15 * 18 / 1600)
    # Score-CAM capped: 2 of the 6 images mapped (the first and the last), every image still classified.
    assert report["mapped_images"] == {"gradcam": 6, "scorecam": 2}
    assert report["shortcuts"]["scorecam"]["n_maps"] == 2 and report["localisation"]["scorecam"]["n"] == 1
    assert "scorecam mapped 2 of 6 images" in (folder / "report.md").read_text()


@pytest.mark.parametrize("case", ["unknown run", "no checkpoint", "missing folder", "foreign classes",
                                  "unknown explainer", "bad max-maps"])
@pytest.mark.slow
def test_bad_input_exits_non_zero_with_a_message(trained, tmp_path, case):
    run = trained["run"]
    args = ["--run", str(run["id"])]
    if case == "unknown run":
        args = ["--run", "999"]
        expect = "no run 999"
    elif case == "no checkpoint":
        store = trained["app"].extensions["busi_web"].store
        empty = store.create_run("tiny_cnn", "phantom", run["params"])
        args = ["--run", str(empty["id"])]
        expect = "best_model.pt"
    elif case == "missing folder":
        args += ["--dataset", "busi", "--data-dir", str(tmp_path / "nowhere")]
        expect = "does not exist"
    elif case == "foreign classes":
        data = tmp_path / "other"
        for cls in ("cats", "dogs"):
            (data / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / cls / "a.png")
        args += ["--dataset", "imagefolder", "--data-dir", str(data)]
        expect = "does not know"
    elif case == "unknown explainer":
        args += ["--explainers", "nosuch"]
        expect = "unknown explainer"
    else:
        args += ["--max-maps", "scorecam=many"]
        expect = "--max-maps expects"
    # The real script for one case (no traceback reaches the user), the in-process runner for the rest.
    r = cli(trained, *args) if case == "foreign classes" else invoke(trained, *args)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_run_page_shows_the_report_and_serves_its_pngs(trained):
    run = trained["run"]
    before = report_folders(run)
    assert invoke(trained, "--run", str(run["id"]), "--explainers", "gradcam").returncode == 0
    folder = new_report(run, before)
    client = make_user_client(trained["app"], "doc", "orchid-tunnel-64", "clinician")
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'id="run-evaluations"' in page and folder.name in page
    assert "Heatmap localisation" in page and "Shortcut check" in page
    png = f"/api/runs/{run['id']}/artifacts/evaluations/{folder.name}/confusion_matrix.png"
    assert png in page
    r = client.get(png)
    assert r.status_code == 200
    Image.open(io.BytesIO(r.data)).load()
    assert client.get(f"/api/runs/{run['id']}/artifacts/evaluations/{folder.name}/../best_model.pt").status_code \
        == 404
