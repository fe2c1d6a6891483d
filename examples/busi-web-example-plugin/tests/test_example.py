"""The example plugin's own tests, through busi-web's testing kit: they pass installed or not."""

import csv
import io

import busi_example_plugin
import numpy as np
import pytest
from PIL import Image

from busi_web.data.datasets import DatasetError
from busi_web.testing import check


def labelled_folder(root, per_class=6):
    """Images with lesion masks listed in labels.csv (the csvlist layout)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "mask"])
        for cls in ("benign", "malignant"):
            for i in range(per_class):
                image = rng.integers(0, 90, (40, 40), dtype=np.uint8)
                mask = np.zeros((40, 40), np.uint8)
                mask[10:26, 12:28] = 255
                image[mask > 0] = 200 if cls == "malignant" else 140
                Image.fromarray(image).save(root / f"{cls}_{i}.png")
                Image.fromarray(mask).save(root / f"{cls}_{i}_mask.png")
                out.writerow([f"{cls}_{i}.png", cls, f"{cls}_{i}_mask.png"])
    return root


def test_it_loads_and_declares_its_contract(busi_registry):
    registry = busi_registry(busi_example_plugin)
    assert "mobilenet_v3_small" in registry.backbones and "csvlist" in registry.datasets
    assert {"eigencam", "grad_x_input"} <= set(registry.explainers)
    assert busi_example_plugin.BUSI_WEB_CONTRACT.split(".")[0] == "1"


def test_every_spec_passes_busi_webs_check(tmp_path):
    report = check(busi_example_plugin, {"csvlist": str(labelled_folder(tmp_path / "listed"))})
    assert report.ok, [f.line() for f in report.findings]
    assert [f.name for f in report.findings] == ["mobilenet_v3_small", "eigencam", "grad_x_input", "csvlist"]


def test_a_missing_csv_is_named(busi_registry, tmp_path):
    registry = busi_registry(busi_example_plugin)
    with pytest.raises(DatasetError, match="labels.csv does not exist"):  # shown by busi-web as a 400
        registry.dataset("csvlist").build({}, root=str(tmp_path))


def test_it_trains_on_listed_images_and_explains(busi_app, busi_client_as, busi_train_tiny, tmp_path):
    app = busi_app(busi_example_plugin)
    data = labelled_folder(tmp_path / "listed")
    run_id = busi_train_tiny(app, "mobilenet_v3_small", "csvlist", data_dir=str(data))
    admin = busi_client_as(app, "admin")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)).save(png, "PNG")
    # At the tiny run's 32 px the last feature map is one pixel, which centring would zero: eigencam without it.
    for explainer, params in (("eigencam", '{"center": false}'), ("grad_x_input", "{}")):
        form = {"image": [(io.BytesIO(png.getvalue()), "scan.png")], "run_id": str(run_id), "explainer": explainer,
                "explainer_params": params}
        answer = admin.post("/api/predict", data=form)
        assert answer.status_code == 200, answer.get_json()
        result = answer.get_json()["results"][0]
        assert result["explainer"] == explainer and result["heatmap_png"], result.get("map_note")
