"""The runs and models API through the real app, store, checkpoints and (for starting runs) real trainer processes;
the diagnosis API is in ``test_api_predict.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint
from busi_web.plugins import load_plugins
from tests.helpers import (
    CLASSES,
    TINY_TRAIN,
    finished_run,
    image_bytes,
    set_modality,
    upload,
)

torch.set_num_threads(1)
TINY_PHANTOM = {"size": 40, "per_class": 8, "seed": 1}


def test_runs_list_detail_metrics_and_artifacts(store, clinician_client, admin_client):
    done = finished_run(store)
    queued = store.create_run("tiny_cnn", "phantom", {})
    runs = clinician_client.get("/api/runs").get_json()["runs"]
    assert [r["id"] for r in runs] == [queued["id"], done["id"]]
    assert clinician_client.get("/api/runs?status=finished").get_json()["runs"][0]["id"] == done["id"]
    assert clinician_client.get("/api/runs?status=queued,finished&backbone=tiny_cnn").get_json()["runs"]
    assert clinician_client.get("/api/runs?dataset=busi").get_json()["runs"] == []
    bad = clinician_client.get("/api/runs?status=done")
    assert bad.status_code == 400 and "status" in bad.get_json()["fields"]

    detail = clinician_client.get(f"/api/runs/{done['id']}").get_json()
    assert detail["status"] == "finished" and detail["test_metrics"] == {"test": {"macro_f1": 0.5}}
    assert {"metrics.json", "training_log.txt"} <= set(detail["artifacts"])
    assert "best_model.pt" not in detail["artifacts"]  # weights: listed and served to admins only
    assert "best_model.pt" in admin_client.get(f"/api/runs/{done['id']}").get_json()["artifacts"]
    assert detail["duration_s"] is not None and detail["active"] is False
    assert clinician_client.get("/api/runs/999").status_code == 404

    m = clinician_client.get(f"/api/runs/{done['id']}/metrics").get_json()
    assert len(m["rows"]) == 5 and m["last_id"] == m["rows"][-1]["id"]
    later = clinician_client.get(f"/api/runs/{done['id']}/metrics?after_id={m['rows'][2]['id']}").get_json()
    assert [r["id"] for r in later["rows"]] == [r["id"] for r in m["rows"][3:]]
    empty = clinician_client.get(f"/api/runs/{done['id']}/metrics?after_id={m['last_id']}").get_json()
    assert empty["rows"] == [] and empty["last_id"] == m["last_id"]
    assert clinician_client.get(f"/api/runs/{done['id']}/metrics?after_id=x").status_code == 400

    log = clinician_client.get(f"/api/runs/{done['id']}/artifacts/training_log.txt")
    assert log.status_code == 200 and log.data == b"epoch 1 done\n"
    # Model weights are for admins; nothing outside the run folder is ever served.
    assert clinician_client.get(f"/api/runs/{done['id']}/artifacts/best_model.pt").status_code == 403
    weights = admin_client.get(f"/api/runs/{done['id']}/artifacts/best_model.pt?download=1")
    assert weights.status_code == 200 and "attachment" in weights.headers["Content-Disposition"]
    for name in ("../../busi.db", "..%2F..%2Fbusi.db", "%2Fetc%2Fpasswd", "nothing.txt"):
        r = admin_client.get(f"/api/runs/{done['id']}/artifacts/{name}", follow_redirects=True)
        assert r.status_code == 404 and r.is_json, name


def test_defaults_are_set_and_cleared_with_a_reason_per_modality_and_audited(store, clinician_client, admin_client):
    r = clinician_client.get("/api/models/active")
    assert r.status_code == 404 and "no default ultrasound model" in r.get_json()["error"]
    first, second = finished_run(store), finished_run(store, seed=2)
    mammo = finished_run(store, dataset="mias")
    set_modality(store, mammo["id"], "mammography")
    r = admin_client.put("/api/modalities/ultrasound/default", json={"run_id": first["id"]})
    assert r.status_code == 400 and r.get_json()["fields"] == {"reason": "required"}
    r = admin_client.put("/api/modalities/ultrasound/default", json={"run_id": mammo["id"], "reason": "x"})
    assert r.status_code == 409 and "is a mammography model" in r.get_json()["error"]
    r = admin_client.put("/api/modalities/ultrasound/default", json={"run_id": first["id"], "reason": "our best"})
    assert r.status_code == 200 and r.get_json()["default"]["run_id"] == first["id"]
    active = clinician_client.get("/api/models/active").get_json()
    assert active["run_id"] == first["id"] and active["classes"] == CLASSES and active["target_layer"]
    assert active["target_layer"] in active["layers"] and active["model"]["modality"] == "ultrasound"
    assert "checkpoint" not in active and "run_dir" not in active["run"] and active["reason"] == "our best"
    assert admin_client.post(f"/api/runs/{second['id']}/promote", json={"reason": "newer"}).status_code == 200
    overview = clinician_client.get("/api/models").get_json()
    by_run = {m["id"]: m for m in overview["models"]}
    assert by_run[second["id"]]["default_of"] == "ultrasound" and by_run[first["id"]]["default_of"] is None
    assert by_run[second["id"]]["card"]["promotion"]["reason"] == "newer"  # every model with its card
    assert by_run[first["id"]]["card"]["data"]["data_dir"] is None  # no server paths for a clinician
    assert {m["modality"] for m in overview["modalities"]} >= {"ultrasound", "mammography"}
    # Promotion is hot: the next diagnosis uses the new model, and says which one it is.
    body = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"))).get_json()
    assert body["run_id"] == second["id"] and body["model"]["run_id"] == second["id"]
    assert body["model"]["demo"] is True and "not a diagnosis" in body["notice"]
    # Each modality has its own default; a request names its modality.
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), modality="mammography"))
    assert r.status_code == 409 and "no default mammography model" in r.get_json()["error"]
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), modality="Ultra Sound"))
    assert r.status_code == 400 and "lower-case" in r.get_json()["error"]
    r = admin_client.delete("/api/modalities/ultrasound/default", json={"reason": "withdrawn"})
    assert r.status_code == 200 and store.default_model("ultrasound") is None
    queued = store.create_run("tiny_cnn", "phantom", {})
    r = admin_client.post(f"/api/runs/{queued['id']}/promote", json={"reason": "x"})
    assert r.status_code == 409 and "only a finished run" in r.get_json()["error"]
    audit = [(a["action"], a["user"], a["detail"]["reason"]) for a in store.audit_log(("model.default.set",
                                                                                          "model.default.clear"))]
    assert audit == [("model.default.clear", "admin", "withdrawn"), ("model.default.set", "admin", "newer"),
                     ("model.default.set", "admin", "our best")]
    # The model card follows every change, on disk and in the API (JSON and Markdown).
    card = json.loads((Path(second["run_dir"]) / "model_card.json").read_text())
    assert [h["action"] for h in card["promotion"]["history"]] == ["model.default.clear", "model.default.set"]
    api_card = clinician_client.get(f"/api/runs/{second['id']}/card").get_json()
    assert api_card["data"]["data_dir"] is None and api_card["provenance"]["run_id"] == second["id"]
    md = clinician_client.get(f"/api/runs/{second['id']}/card.md")
    assert md.status_code == 200 and md.mimetype == "text/markdown" and b"DEMO MODEL" in md.data


def test_the_gate_refuses_a_weak_model_through_the_api_and_the_acceptance_set_scores_every_candidate(
        store, admin_client, tmp_path):
    from tests.helpers import write_busi_folder

    folder = write_busi_folder(tmp_path / "busi", CLASSES, per_class=4)
    weak, other = finished_run(store), finished_run(store, seed=3)
    r = admin_client.post(f"/api/runs/{weak['id']}/acceptance")
    assert r.status_code == 409 and "no acceptance set yet" in r.get_json()["error"]
    r = admin_client.post("/api/modalities/ultrasound/acceptance", json={"source": "usb", "dataset": "busi",
                                                                         "data_dir": str(folder)})
    assert r.status_code == 400 and "source must be one of folder, share" in r.get_json()["error"]
    r = admin_client.post("/api/modalities/mammography/acceptance", json={"source": "folder", "dataset": "busi",
                                                                          "data_dir": str(folder)})
    assert r.status_code == 400 and "holds ultrasound images" in r.get_json()["error"]
    r = admin_client.post("/api/modalities/ultrasound/acceptance", json={"source": "folder", "dataset": "busi",
                                                                         "data_dir": str(folder)})
    assert r.status_code == 201 and r.get_json()["images"] == 12
    r = admin_client.put("/api/modalities/ultrasound/settings", json={"floors": {"macro_f1": 0.99}})
    assert r.status_code == 200 and r.get_json()["floors"] == {"macro_f1": 0.99}
    assert admin_client.put("/api/modalities/ultrasound/settings", json={"auto_promote": "maybe"}).status_code == 400
    r = admin_client.put("/api/modalities/ultrasound/default", json={"run_id": weak["id"], "reason": "try"})
    assert r.status_code == 409 and "has not been evaluated" in r.get_json()["error"]
    scores = []
    for run in (weak, other):
        r = admin_client.post(f"/api/runs/{run['id']}/acceptance")
        body = r.get_json()
        assert r.status_code == 200 and body["metrics"]["n"] == 12 and len(body["metrics"]["ci"]["accuracy"]) == 2
        assert body["gate_failures"] and "below the floor 0.99" in body["gate_failures"][0]
        scores.append(body["metrics"]["macro_f1"])
    r = admin_client.put("/api/modalities/ultrasound/default", json={"run_id": weak["id"], "reason": "try"})
    assert r.status_code == 409 and "does not pass the ultrasound acceptance gate: macro_f1" in r.get_json()["error"]
    assert store.default_model("ultrasound") is None
    # Both were scored on the same images: the Models overview shows each with its gate result.
    listed = {m["id"]: m for m in admin_client.get("/api/models").get_json()["models"]}
    assert [listed[r["id"]]["acceptance"]["macro_f1"] for r in (weak, other)] == scores
    # A changed acceptance image is refused, not silently scored on something else.
    (folder / "benign" / "benign (1).png").write_bytes(image_bytes(hw=(40, 40), seed=99))
    r = admin_client.post(f"/api/runs/{weak['id']}/acceptance")
    assert r.status_code == 409 and "changed since the set was defined" in r.get_json()["error"]


def test_specs_plugins_me_health(clinician_client, admin_client):
    specs = clinician_client.get("/api/specs").get_json()
    assert {"tiny_cnn", "resnet50_cbam"} <= {s["name"] for s in specs["backbones"]}
    assert "gradcam" in {s["name"] for s in specs["explainers"]} and specs["default_explainer"] == "gradcam"
    assert "phantom" in {s["name"] for s in specs["datasets"]}
    assert {"epochs", "batch_size", "lr"} <= {p["name"] for p in specs["train"]}
    assert "plugins" in admin_client.get("/api/plugins").get_json()
    assert clinician_client.get("/api/plugins").status_code == 403  # like the plugins page: admins only
    me = clinician_client.get("/api/me").get_json()
    assert me == {"name": "clin", "role": "clinician", "is_admin": False, "auth": "session",
                  "must_change_password": False}
    assert clinician_client.get("/api/health").get_json()["status"] == "ok"


def test_start_run_validates_fields(admin_client, store):
    r = admin_client.post("/api/runs", json={"backbone": "tiny_cnn", "dataset": "phantom",
                                             "train": {"epochs": 0, "bogus": 1}, "dataset_params": {"size": -3}})
    body = r.get_json()
    assert r.status_code == 400 and {"train.epochs", "train.bogus"} <= set(body["fields"])
    r = admin_client.post("/api/runs", json={"backbone": "tiny_cnn", "dataset": "phantom",
                                             "dataset_params": {"size": -3}})
    assert r.status_code == 400 and "dataset_params.size" in r.get_json()["fields"]
    r = admin_client.post("/api/runs", json={"backbone": "nope", "dataset": "phantom"})
    assert r.status_code == 400 and "backbone" in r.get_json()["fields"]
    r = admin_client.post("/api/runs", json={"dataset": "imagefolder"})
    assert r.status_code == 400 and r.get_json()["fields"] == {"backbone": "required"}
    r = admin_client.post("/api/runs", json={"backbone": "tiny_cnn", "dataset": "imagefolder",
                                             "data_dir": "/no/such/folder"})
    assert r.status_code == 400 and "data_dir" in r.get_json()["fields"]
    r = admin_client.post("/api/runs", data="epochs=3", content_type="text/plain")
    assert r.status_code == 400 and "JSON" in r.get_json()["error"]
    assert store.count_runs() == 0  # nothing is stored for a refused run


def test_a_weights_file_that_does_not_fit_the_backbone_is_refused_before_the_run_exists(admin_client, store,
                                                                                       tmp_path):
    import torchvision
    from busi_web_plugins.backbones import build_resnet18

    from busi_web.training.params import prepare_run_params

    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    r = admin_client.post("/api/runs", json={"backbone": "resnet18", "dataset": "phantom",
                                             "backbone_params": {"pretrained_path": str(r50)},
                                             "dataset_params": TINY_PHANTOM})
    body = r.get_json()
    assert r.status_code == 400, body
    assert "do not fit this backbone" in body["fields"]["backbone_params.pretrained_path"]
    assert "r50.pth" in body["fields"]["backbone_params.pretrained_path"]
    assert store.count_runs() == 0
    # An earlier run's model file of the same backbone fits, whatever its classes.
    earlier = tmp_path / "best_model.pt"
    save_checkpoint(earlier, build_resnet18(num_classes=2), CheckpointMeta(
        backbone="resnet18", classes=["lesion", "normal"], input_size=32, resize=32, dataset="phantom"))
    params = prepare_run_params(load_plugins(), "resnet18", "phantom", train=TINY_TRAIN, dataset_params=TINY_PHANTOM,
                                backbone_params={"pretrained_path": str(earlier), "output_stride": 16})
    assert params["backbone"]["pretrained_path"] == str(earlier)


def test_cancel_and_resume_follow_the_run_states(admin_client, store):
    from busi_web.training.params import prepare_run_params

    params = prepare_run_params(load_plugins(), "tiny_cnn", "phantom", train=TINY_TRAIN,
                                dataset_params=TINY_PHANTOM)
    queued = store.create_run("tiny_cnn", "phantom", params)
    r = admin_client.post(f"/api/runs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    r = admin_client.post(f"/api/runs/{queued['id']}/cancel")
    assert r.status_code == 409 and "cancelled" in r.get_json()["error"]
    done = finished_run(store)  # a finished run is final (a cancelled one resumes: tests/web/test_served.py)
    r = admin_client.post(f"/api/runs/{done['id']}/resume")
    assert r.status_code == 409 and "only interrupted or cancelled runs" in r.get_json()["error"]
    assert admin_client.post("/api/runs/999/cancel").status_code == 404
    assert [a["run_id"] for a in store.audit_log("run.cancel")] == [queued["id"]]


def _wait_for(store, run_id: int, states: set[str], timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = store.get_run(run_id)
        if run["status"] in states:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} is still {store.get_run(run_id)['status']}")


@pytest.mark.slow
def test_start_train_promote_and_diagnose_end_to_end(app, admin_client, store):
    """POST /api/runs starts a real trainer process; its model is promoted and serves a diagnosis."""
    r = admin_client.post("/api/runs", json={"backbone": "tiny_cnn", "dataset": "phantom", "name": "api e2e",
                                             "train": TINY_TRAIN, "dataset_params": TINY_PHANTOM,
                                             "backbone_params": {"width": 4}})
    assert r.status_code == 201, r.get_json()
    run = r.get_json()
    assert run["status"] in ("queued", "running") and run["name"] == "api e2e" and run["created_by"] == "admin"
    try:
        done = _wait_for(store, run["id"], {"finished", "failed", "cancelled"})
    finally:
        app.extensions["busi_web"].runner.shutdown()
    assert done["status"] == "finished", done["error"]
    # The trainer records the test accuracy: the Runs list and the active model show the run page's number.
    tested = json.loads((Path(done["run_dir"]) / "metrics.json").read_text())
    listed = next(r for r in admin_client.get("/api/runs").get_json()["runs"] if r["id"] == run["id"])
    assert listed["test_accuracy"] == pytest.approx(tested["accuracy"]) and listed["test_accuracy"] is not None
    assert listed["test_macro_f1"] == pytest.approx(tested["macro_f1"])
    assert admin_client.post(f"/api/runs/{run['id']}/promote", json={"reason": "end to end"}).status_code == 200
    active = admin_client.get("/api/models/active").get_json()
    assert active["run"]["test_accuracy"] == pytest.approx(tested["accuracy"])
    r = admin_client.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "p.png")))
    assert r.status_code == 200 and r.get_json()["run_id"] == run["id"]
    assert r.get_json()["classes"] == ["benign", "malignant", "normal"]
