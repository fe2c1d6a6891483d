"""The diagnosis API (``/api/predict``) through the real app, store and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (
    CLASSES,
    decode_png,
    finished_run,
    image_bytes,
    make_user_client,
    upload,
)

torch.set_num_threads(1)


def test_predict_without_a_model_is_409_with_the_fix(clinician_client):
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png")))
    assert r.status_code == 409 and "no default ultrasound model yet" in r.get_json()["error"]


def test_predict_many_formats_gives_labels_probabilities_and_pngs_and_audits(app, store, clinician_client):
    run = finished_run(store, promote=True)
    files = [(image_bytes("PNG"), "a.png"), (image_bytes("JPEG", rgb=True, seed=1), "b.jpg"),
             (image_bytes("BMP", hw=(40, 40)), "c.bmp"), (image_bytes("TIFF", hw=(33, 70)), "d.tif")]
    r = clinician_client.post("/api/predict", data=upload(*files, alpha="0.3"))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["run_id"] == run["id"] and body["classes"] == CLASSES
    assert [x["filename"] for x in body["results"]] == ["a.png", "b.jpg", "c.bmp", "d.tif"]
    for res, hw in zip(body["results"], [(48, 64), (48, 64), (40, 40), (33, 70)], strict=True):
        assert set(res["probabilities"]) == set(CLASSES)
        assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert res["label"] == max(res["probabilities"], key=res["probabilities"].get)
        assert res["target"] == res["label"] and res["explainer"] == "gradcam"
        for key in ("overlay_png", "heatmap_png", "original_png"):
            assert decode_png(res[key]).size == (hw[1], hw[0]), key
        assert res["feature_maps_png"] is None
    audit = store.audit_log("diagnose")
    assert len(audit) == 4 and {a["user"] for a in audit} == {"clin"} and {a["run_id"] for a in audit} == {run["id"]}
    # A file's name may carry a patient's: the audit keeps its keyed digest, never the name.
    from busi_web.dicom.privacy import keyed_digest

    names = ("a.png", "b.jpg", "c.bmp", "d.tif")
    assert {a["detail"]["file_digest"] for a in audit} == {keyed_digest(app.config["SECRET_KEY"], n) for n in names}
    assert not any(n in json.dumps(a["detail"]) for a in audit for n in names)
    assert audit[0]["detail"]["probabilities"].keys() == set(CLASSES) and audit[0]["detail"]["label"] in CLASSES
    # Uploads are not kept unless STORE_UPLOADS says so.
    assert not (Path(app.instance_path) / "uploads").exists()


def test_predict_options_target_explainer_none_feature_maps_and_run_choice(store, clinician_client, admin_client):
    finished_run(store, promote=True)
    other = finished_run(store, seed=5, width=4)
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), target="normal",
                                                          layer="default", channels="4"))
    res = r.get_json()["results"][0]
    assert r.status_code == 200 and res["target"] == "normal" and res["target_index"] == 2
    assert res["feature_layer"] and decode_png(res["feature_maps_png"]).size[0] > 0
    # A model that has not passed the gate answers no clinician; an administrator may try it, marked so.
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), run_id=str(other["id"])))
    assert r.status_code == 403 and "only accepted models answer clinicians" in r.get_json()["error"]
    r = admin_client.post("/api/predict", data=upload((image_bytes(), "a.png"), target="1", explainer="none",
                                                      run_id=str(other["id"])))
    body = r.get_json()
    assert body["run_id"] == other["id"] and body["model"]["verdict"]["accepted"] is False
    res = body["results"][0]
    assert res["overlay_png"] is None and res["heatmap_png"] is None and res["explainer"] is None
    assert decode_png(res["original_png"]).size == (64, 48)
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), explainer="gradcampp"))
    assert r.status_code == 200 and r.get_json()["results"][0]["explainer"] == "gradcampp"
    # Only the pictures asked for (the Diagnose page blends original and heatmap itself).
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), images="heatmap, original"))
    res = r.get_json()["results"][0]
    assert res["overlay_png"] is None and decode_png(res["original_png"]).size == (64, 48)
    heat = decode_png(res["heatmap_png"])
    assert heat.size == (64, 48) and heat.mode == "P"  # a palette PNG: one byte per pixel
    assert np.asarray(heat.convert("RGB")).std(axis=(0, 1)).max() > 1  # and not blank


@pytest.mark.parametrize("fields, status, field", [
    ({"target": "cyst"}, 400, "target"),
    ({"target": "3"}, 400, "target"),
    ({"alpha": "1.5"}, 400, "alpha"),
    ({"alpha": "half"}, 400, "alpha"),
    ({"channels": "0"}, 400, "channels"),
    ({"layer": "layer99"}, 400, "layer"),
    ({"colormap": "nocolour"}, 400, "colormap"),
    ({"run_id": "abc"}, 400, "run_id"),
    ({"run_id": "999"}, 404, "run_id"),
    ({"explainer": "nosuchcam"}, 400, None),
    ({"images": "overlay,thumbnail"}, 400, "images"),
    ({"images": " , "}, 400, "images"),
])
def test_predict_bad_options_are_explained(store, clinician_client, fields, status, field):
    finished_run(store, promote=True)
    r = clinician_client.post("/api/predict", data=upload((image_bytes(), "a.png"), **fields))
    body = r.get_json()
    assert r.status_code == status, body
    assert body["error"] and (field is None or field in body.get("fields", {})), body
    if fields.get("explainer"):
        assert "gradcam" in body["error"]  # the message lists the explainers that exist


def test_store_uploads_keeps_the_files_privately(app_config, instance_path):
    from busi_web import create_app

    app = create_app({**app_config, "STORE_UPLOADS": True})
    finished_run(app.extensions["busi_web"].store, promote=True)
    client = make_user_client(app, "doc", "orchid-tunnel-64", "clinician")
    r = client.post("/api/predict", data=upload((image_bytes(), "../../scan 1.png")))
    assert r.status_code == 200
    stored = list((instance_path / "uploads").rglob("*"))
    files = [p for p in stored if p.is_file()]
    assert len(files) == 1 and files[0].name.endswith("scan_1.png") and oct(files[0].stat().st_mode)[-3:] == "600"
    assert files[0].read_bytes() == image_bytes()
    assert app.extensions["busi_web"].store.audit_log("diagnose")[0]["detail"]["stored"] == str(files[0])


def test_predict_tells_which_part_was_seen_gives_a_legend_and_cautions_on_an_unlikely_class(store, clinician_client):
    from busi_web.data.preprocess import PreprocessConfig, crop_pixels

    finished_run(store, promote=True)
    data = image_bytes(hw=(48, 64))
    r = clinician_client.post("/api/predict", data=upload((data, "a.png"), target="normal"))
    body = r.get_json()
    res = body["results"][0]
    region = crop_pixels((48, 64), PreprocessConfig(input_size=32, resize=36))
    assert res["analysed_region"] == list(region) == [11, 3, 53, 45]
    # Outside the region the overlay is the uploaded image itself: nothing is painted where the model saw nothing.
    original = np.asarray(decode_png(res["original_png"]).convert("RGB"))
    shown = np.asarray(decode_png(res["overlay_png"]).convert("RGB"))
    assert np.array_equal(shown[:, :11], original[:, :11]) and np.array_equal(shown[:, 53:], original[:, 53:])
    assert not np.array_equal(shown[10:40, 15:50], original[10:40, 15:50])
    heat = decode_png(res["heatmap_png"])
    assert heat.mode == "P" and np.asarray(heat.convert("RGBA"))[:, :11, 3].max() == 0
    assert body["legend"]["stops"][0] == "#000080" and "not a probability" in body["legend"]["meaning"]
    low = res["probabilities"]["normal"] < 0.2
    assert (res["caution"] is not None) == low
    r = clinician_client.post("/api/predict", data=upload((data, "a.png"), explainer="none"))
    assert r.get_json()["legend"] is None and r.get_json()["results"][0]["caution"] is None
