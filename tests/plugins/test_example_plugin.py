"""The example distribution of docs/plugins.md, pip-installed: it lists, trains with lesion guidance, explains."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_web.plugins import load_plugins
from tests.helpers import ROOT, image_bytes, make_user_client, run_cli, upload, wait_for

EXAMPLE = ROOT / "examples" / "busi-web-example-plugin"
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "input_size": 32, "resize": 36, "seed": 1, "device": "cpu",
         "workers": 0, "lesion_loss": 0.5}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def example():
    """pip-install the example distribution for this module only."""
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(EXAMPLE))
    importlib.invalidate_caches()
    yield
    _pip("uninstall", "-y", "busi-web-example-plugin")
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m == "busi_example_plugin" or m.startswith("busi_example_plugin.")]:
        del sys.modules[name]


def csv_folder(root: Path, per_class: int = 8) -> Path:
    """Images with lesion masks, listed in labels.csv with their classes (the example's csvlist layout)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "mask"])
        for cls in ("benign", "malignant", "normal"):
            for i in range(per_class):
                img = rng.integers(0, 90, (40, 40), dtype=np.uint8)
                mask = np.zeros((40, 40), np.uint8)
                if cls != "normal":
                    mask[10:26, 12:28] = 255
                    img[mask > 0] = 200 if cls == "malignant" else 140
                Image.fromarray(img).save(root / f"{cls}_{i}.png")
                Image.fromarray(mask).save(root / f"{cls}_{i}_mask.png")
                out.writerow([f"{cls}_{i}.png", cls, f"{cls}_{i}_mask.png"])
    return root


def test_the_installed_example_registers_a_backbone_two_explainers_and_a_dataset(example):
    registry = load_plugins()
    info = next(p for p in registry.plugins if p.name == "example")
    assert info.status == "loaded" and not info.builtin, info.errors
    assert info.registers == {"backbones": ["mobilenet_v3_small"], "explainers": ["eigencam", "grad_x_input"],
                              "datasets": ["csvlist"]}
    assert [p.name for p in registry.explainer("eigencam").params] == ["center"]


@pytest.mark.slow
def test_installed_it_passes_plugins_check_and_its_own_tests(example, tmp_path):
    data = csv_folder(tmp_path / "listed")
    done = run_cli("plugins", "check", "example", "--data-dir", f"csvlist={data}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok     example:") == 4 and "24 samples" in done.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout[-3000:]


@pytest.mark.slow
def test_it_trains_with_lesion_guidance_and_explains_with_plain_maps(example, app_config, tmp_path):
    from busi_web import create_app

    app = create_app(app_config)
    admin = make_user_client(app, "admin", "amber-otter-42", "admin")
    data = csv_folder(tmp_path / "listed")
    # Lesion guidance teaches the backbone's declared target layer ("features"), not a guessed "layer4".
    r = admin.post("/api/runs", json={"backbone": "mobilenet_v3_small", "dataset": "csvlist", "data_dir": str(data),
                                      "train": TRAIN, "dataset_params": {"file": "labels.csv"}})
    assert r.status_code == 201, r.get_json()
    store = app.extensions["busi_web"].store
    try:
        run = wait_for(lambda: (lambda x: x if x["status"] in ("finished", "failed") else None)(
            store.get_run(r.get_json()["id"])), timeout=240, what="the example run to end")
    finally:
        app.extensions["busi_web"].runner.shutdown()
    assert run["status"] == "finished", run["error"]
    log = (Path(run["run_dir"]) / "training_log.txt").read_text()
    assert "lesion guidance on features" in log
    assert store.default_model("ultrasound") is None  # a run never makes itself the default
    promoted = admin.post(f"/api/runs/{run['id']}/promote", json={"reason": "the example plugin's model"})
    assert promoted.status_code == 200 and promoted.get_json()["default"]["modality"] == "ultrasound"

    image = image_bytes(hw=(40, 40))
    for explainer, params in (("eigencam", {"center": False}), ("grad_x_input", {"absolute": True})):
        answer = admin.post("/api/predict", data=upload((image, "scan.png"), explainer=explainer,
                                                         explainer_params=json.dumps(params)))
        assert answer.status_code == 200, answer.get_json()
        result = answer.get_json()["results"][0]
        assert result["explainer"] == explainer and result["heatmap_png"]
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    bad = admin.post("/api/predict", data=upload((image, "scan.png"), explainer="eigencam",
                                                 explainer_params=json.dumps({"centre": True})))
    assert bad.status_code == 400 and "centre" in bad.get_json()["error"]
    # CAM needs pooling and one Linear after the layer, which MobileNetV3 does not have: said, not a 500.
    cam = admin.post("/api/predict", data=upload((image, "scan.png"), explainer="cam"))
    assert cam.status_code == 400 and "CAM needs global average pooling" in cam.get_json()["error"]
