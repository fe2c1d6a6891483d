"""The acceptance gate cannot be fooled: a model is never scored on its own training images, floors name real
metrics of real classes, and a model of fewer classes is scored on the classes it has."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import TINY, finished_run, wait_for, write_busi_folder


def test_a_model_is_not_scored_on_the_images_it_trained_on(app, admin_client, tmp_path: Path):
    """Train on busi, then define the acceptance set from a share of the same folder, then score: refused, with
    the overlap counted by fingerprints (the file names of a copy do not matter)."""
    services = app.extensions["busi_web"]
    folder = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"], per_class=8)
    run = services.submit_run("tiny_cnn", "busi", train={**TINY, "epochs": 1}, data_dir=str(folder), user="admin")
    final = wait_for(lambda: (r := services.store.get_run(run["id"]))["status"] in ("finished", "failed") and r,
                     timeout=240, what="the trainer process")
    assert final["status"] == "finished", final["error"]
    r = admin_client.post("/api/modalities/ultrasound/acceptance",
                          json={"source": "share", "dataset": "busi", "data_dir": str(folder), "share": 0.3, "seed": 0})
    assert r.status_code == 201
    r = admin_client.post(f"/api/runs/{run['id']}/acceptance")
    body = r.get_json()
    assert r.status_code == 409 and "trained or validated on" in body["error"] and "identical" in body["error"]
    assert services.store.acceptance_result(run["id"], services.store.acceptance_set("ultrasound")["id"]) is None
    # With a floor set, a model without a valid score passes nothing.
    services.update_settings("ultrasound", by="admin", floors={"macro_f1": 0.1})
    assert services.store.gate_failures(run["id"], "ultrasound")
    # Renamed copies are still the same images.
    copy = tmp_path / "renamed"
    for path in folder.rglob("*.png"):
        target = copy / path.parent.name / path.name.replace("benign", "b").replace("malignant", "m")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    r = admin_client.post("/api/modalities/ultrasound/acceptance",
                          json={"source": "folder", "dataset": "imagefolder", "data_dir": str(copy)})
    assert r.status_code == 201
    r = admin_client.post(f"/api/runs/{run['id']}/acceptance")
    assert r.status_code == 409 and "trained or validated on" in r.get_json()["error"]


def test_floors_and_modalities_are_checked_with_the_valid_names(app, admin_client):
    store = app.extensions["busi_web"].store
    finished_run(store)  # a three-class ultrasound model: its classes are the modality's
    r = admin_client.put("/api/modalities/ultrasound/settings", json={"floors": {"sensitivity_malignent": 0.7}})
    body = r.get_json()
    assert r.status_code == 400 and "sensitivity_malignent" in body["error"]
    assert "sensitivity_malignant" in body["error"]
    assert store.modality_settings("ultrasound")["floors"] == {}
    r = admin_client.put("/api/modalities/ultrasond/settings", json={"floors": {"accuracy": 0.7}})
    assert r.status_code == 404 and "ultrasound" in r.get_json()["error"]
    r = admin_client.put("/api/modalities/ultrasound/settings", json={"floor": {"accuracy": 0.7}})
    assert r.status_code == 400 and "unknown setting" in r.get_json()["error"]
    r = admin_client.put("/api/modalities/ultrasound/settings", json={"operating_sensitivity": 1.5})
    assert r.status_code == 400 and "operating_sensitivity" in r.get_json()["error"]
    r = admin_client.put("/api/modalities/ultrasound/settings",
                         json={"floors": {"sensitivity_malignant": 0.7}, "operating_sensitivity": 0.95})
    assert r.status_code == 200 and r.get_json()["operating_sensitivity"] == 0.95


def test_a_two_class_model_is_scored_on_the_classes_it_has(app, admin_client, tmp_path: Path):
    import torch

    from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint

    services = app.extensions["busi_web"]
    run = finished_run(services.store)
    model = services.registry.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=3)
    torch.manual_seed(0)
    save_checkpoint(Path(run["run_dir"]) / "best_model.pt", model, CheckpointMeta(
        backbone="tiny_cnn", classes=["benign", "malignant"], backbone_params={"width": 8}, input_size=32, resize=36,
        extra={"run_id": run["id"]}))
    folder = write_busi_folder(tmp_path / "set", ["benign", "malignant", "normal"], per_class=4)
    assert admin_client.post("/api/modalities/ultrasound/acceptance",
                             json={"source": "folder", "dataset": "busi", "data_dir": str(folder)}).status_code == 201
    services.update_settings("ultrasound", by="admin", floors={"sensitivity_normal": 0.5})
    r = admin_client.post(f"/api/runs/{run['id']}/acceptance")
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["metrics"]["n"] == 8 and body["metrics"]["left_out"] == {
        "classes": ["normal"], "images": 4, "why": "the model has no class normal"}
    assert body["gate_failures"] == ["sensitivity_normal is not measured (floor 0.5)"]
