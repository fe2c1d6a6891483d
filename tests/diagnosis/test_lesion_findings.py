"""A segmenting model end to end: trained by ``busi-web train``, its outline in the API, the CLI, the audit, the
evaluation report.

One small run (segmenting_resnet, 64 px phantoms, a 32 px first look) is trained once for the module by the real
console script; the API is a real app on the same instance folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_web.store import JobStore
from tests.helpers import CLINICIAN, decode_png, make_user_client, run_cli, upload

TRAIN = ("--epochs", "8", "--batch-size", "16", "--param", "size=64", "--param", "dataset.per_class=40",
         "--param", "input_size=64", "--param", "train.resize=64", "--param", "workers=0", "--param", "lr=0.002",
         "--param", "optimizer=adamw", "--param", "lesion_loss=1", "--param", "backbone.look_size=32",
         "--param", "backbone.crop_size=32", "--param", "hflip=false", "--param", "rotation=0")


def cli(instance: Path, *args: str):
    return run_cli(*args, env={"BUSI_WEB_INSTANCE_PATH": str(instance), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    instance = tmp_path_factory.mktemp("seg") / "instance"
    result = cli(instance, "train", "--backbone", "segmenting_resnet", "--dataset", "phantom", "--name", "outline",
                 *TRAIN)
    assert result.returncode == 0, result.stderr
    run_id = int(re.match(r"run (\d+):", result.stdout.splitlines()[0]).group(1))
    store = JobStore(instance / "busi.db", instance / "runs")
    run = store.get_run(run_id)
    assert run["status"] == "finished", run["error"]
    assert "outlines the lesion: Dice + BCE" in (Path(run["run_dir"]) / "training_log.txt").read_text()
    images = {}
    from busi_web.plugins import load_plugins

    ds = load_plugins().dataset("phantom").build({"size": 64, "per_class": 4, "seed": 9})
    for i, sample in enumerate(ds.samples):
        name = f"{ds.classes[sample.label]}_{i}.png"
        path = instance.parent / name
        Image.fromarray(ds.load_image(i)).save(path)
        images[name] = (path, ds.load_mask(i))
    return {"instance": instance, "run_id": run_id, "store": store, "images": images}


def test_evaluate_reports_dice_iou_pointing_and_false_lesions(trained):
    result = cli(trained["instance"], "evaluate", "--run", str(trained["run_id"]), "--part", "test",
                 "--explainers", "gradcam,cam")
    assert result.returncode == 0, result.stderr
    assert re.search(r"outline +Dice \d\.\d{3} +IoU \d\.\d{3} +pointing \d\.\d{3} +\(\d+ lesions\); false lesions "
                     r"\d\.\d{3} of \d+ normal images \(\d\.\d{3} confident\)", result.stdout), result.stdout
    report_md = Path(result.stdout.strip().splitlines()[-1].split("report: ")[1])
    report = json.loads(report_md.with_name("report.json").read_text())
    seg = report["segmentation"]
    assert seg["n_lesion"] > 0 and seg["n_normal"] > 0
    lesions = report["segmentation_per_image"]["lesions"]
    assert len(lesions) == seg["n_lesion"]
    assert seg["dice"] == pytest.approx(np.mean([r["dice"] for r in lesions]))
    assert seg["dice"] > 0.3 and seg["pointing"] > 0.5  # eight epochs on phantoms: it has learned where they are
    assert "## Lesion outline" in report_md.read_text()
    # The CAM explainers keep working on this backbone, and are scored as before.
    assert report["localisation"]["gradcam"]["n"] == seg["n_lesion"]


def test_the_api_gives_the_outline_measurements_descriptors_and_audits_them(trained):
    from busi_web import create_app

    app = create_app({"INSTANCE_PATH": str(trained["instance"]), "SECRET_KEY": "t", "TESTING": True,
                      "AUTO_FIRST_RUN": False, "WTF_CSRF_ENABLED": False})
    store = app.extensions["busi_web"].store
    store.set_default(trained["run_id"], by="test", reason="outline test")
    client = make_user_client(app, *CLINICIAN, "clinician")
    files = [(path.read_bytes(), name) for name, (path, _mask) in trained["images"].items()]
    r = client.post("/api/predict", data=upload(*files, pixel_spacing="0.1", images="original,overlay,outline"))
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    found = [res for res in results if res["lesion"]["found"]]
    with_lesion = [res for res in results if not res["filename"].startswith("normal")]
    assert len([res for res in found if not res["filename"].startswith("normal")]) >= len(with_lesion) // 2
    for res in results:
        lesion = res["lesion"]
        assert lesion["statement"]
        if not lesion["found"]:
            assert lesion["statement"].startswith(("no lesion found", "no lesion outlined"))
            assert res["outline_png"] is None and "descriptors" not in lesion
            continue
        # Sizes and descriptors only for an answer that is a lesion, with a confident outline.
        assert res["label"] not in (None, "normal") and not lesion["low_confidence"]
        m = lesion["measurements"]
        assert m["long_axis_mm"] == pytest.approx(m["long_axis_px"] * 0.1, abs=0.06)
        assert m["area_mm2"] == pytest.approx(m["area_px"] * 0.01, abs=0.06)
        assert m["long_axis_px"] >= m["short_axis_px"] > 0
        assert {d["value"] for d in lesion["descriptors"].values()} <= {
            "oval", "round", "irregular", "parallel", "not parallel", "circumscribed", "not circumscribed"}
        xs, ys = zip(*lesion["outline"], strict=True)
        assert 0 <= min(xs) <= max(xs) < res["width"] and 0 <= min(ys) <= max(ys) < res["height"]
        # The outline is drawn in green over the original (and over the overlay).
        outlined = np.asarray(decode_png(res["outline_png"]).convert("RGB"), dtype=int)
        green = (outlined[..., 1] > 200) & (outlined[..., 0] < 60) & (outlined[..., 2] < 160)
        assert green.sum() > 10 and decode_png(res["overlay_png"]).size == (res["width"], res["height"])
    # Against the truth: an outlined phantom lesion overlaps its mask.
    for res in found:
        mask = trained["images"][res["filename"]][1]
        if mask is not None and mask.any():
            x0, y0, x1, y1 = res["lesion"]["box"]
            assert mask[y0:y1, x0:x1].any(), res["filename"]
    audit = store.audit_log("diagnose")
    from busi_web.dicom.privacy import keyed_digest

    by_file = {a["detail"]["file_digest"]: a["detail"] for a in audit}
    for res in results:
        assert by_file[keyed_digest(app.config["SECRET_KEY"], res["filename"])]["lesion"] == res["lesion"]
    # A DICOM file's own spacing sizes the lesion (its rows and columns 0.2 mm apart).
    from tests.dicom_phantoms import instance, to_bytes

    path = trained["images"][found[0]["filename"]][0]  # an image outlined above
    gray = np.asarray(Image.open(path).convert("L"))
    dicom = to_bytes(instance(gray, spacing=(0.2, 0.2)))
    r = client.post("/api/predict", data=upload((dicom, "case.dcm"), images="original"))
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    assert result["pixel_spacing_source"] == "PixelSpacing" and result["dicom"]["modality"] == "US"
    assert result["lesion"]["found"], result["lesion"]["statement"]  # gray, as the phantom is: the same outline
    m = result["lesion"]["measurements"]
    assert m["long_axis_mm"] == pytest.approx(m["long_axis_px"] * 0.2, abs=0.06)
    assert m["pixel_spacing_mm"] == [0.2, 0.2]
    # A bad pixel spacing is a 400 naming the field.
    r = client.post("/api/predict", data=upload(files[0], pixel_spacing="-1"))
    assert r.status_code == 400 and "pixel_spacing" in r.get_json()["error"]
    # The model's description says it segments.
    info = client.get(f"/api/runs/{trained['run_id']}/model").get_json()
    assert info["segments"] is True


def test_the_cli_prints_the_finding_and_draws_the_outline(trained, tmp_path):
    name, (path, mask) = next((n, v) for n, v in trained["images"].items() if n.startswith("malignant"))
    result = cli(trained["instance"], "predict", str(path), "--run", str(trained["run_id"]), "--out",
                 str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)["results"][0]
    assert answer["lesion"] is not None and answer["lesion"]["statement"]
    text = cli(trained["instance"], "predict", str(path), "--run", str(trained["run_id"]), "--out", str(tmp_path))
    assert answer["lesion"]["statement"] in text.stdout
