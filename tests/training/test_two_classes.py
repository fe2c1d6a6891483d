"""A benign/malignant dataset all the way through: the real trainer, metrics, card, gate, diagnosis and report.

The dataset is a BUS-BRA-layout folder (two classes, no normal). Nothing on the way may speak of a third class or
average one in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pypdf import PdfReader

from busi_web.evaluation.card import build_card
from busi_web.store import run_files as art
from busi_web.training.params import prepare_run_params
from tests.helpers import TINY, image_bytes, train_in_trainer, upload, write_busi_folder
from tests.synthetic_data import write_busbra_folder

pytestmark = pytest.mark.slow


def test_a_two_class_dataset_trains_answers_and_is_gated_on_its_own_classes(app, admin_client, tmp_path: Path):
    services = app.extensions["busi_web"]
    store, registry = services.store, services.registry
    folder = write_busbra_folder(tmp_path / "BUSBRA", cases=30, size=40)
    params = prepare_run_params(registry, "tiny_cnn", "busbra", train={**TINY, "epochs": 2},
                                data_dir=str(folder))
    run = store.create_run("tiny_cnn", "busbra", params, data_dir=str(folder), modality="ultrasound")
    run = train_in_trainer(store, run["id"])

    # Metrics: two classes, macro-F1 the mean of those two.
    metrics = json.loads((Path(run["run_dir"]) / art.METRICS_JSON).read_text())
    per_class = metrics["per_class"]
    assert set(per_class) == {"benign", "malignant"}
    assert metrics["macro_f1"] == pytest.approx((per_class["benign"]["f1"] + per_class["malignant"]["f1"]) / 2,
                                                abs=1e-6)

    # The card speaks of the model's own classes.
    card = build_card(store, registry, run["id"])
    assert "proposes benign or malignant " in card["intended_use"]["statement"]
    assert "normal" not in card["intended_use"]["statement"]
    markdown = admin_client.get(f"/api/runs/{run['id']}/card.md").get_data(as_text=True)
    assert "benign or malignant" in markdown

    # The gate scores it on a three-class set's benign and malignant images and says what it left out.
    acceptance = write_busi_folder(tmp_path / "set", ["benign", "malignant", "normal"], per_class=4)
    assert admin_client.post("/api/modalities/ultrasound/acceptance",
                             json={"source": "folder", "dataset": "busi", "data_dir": str(acceptance)}
                             ).status_code == 201
    services.update_settings("ultrasound", by="admin", floors={"sensitivity_malignant": 0.0, "macro_f1": 0.0,
                                                                "sensitivity_benign": 0.0, "accuracy": 0.0})
    gate = admin_client.post(f"/api/runs/{run['id']}/acceptance").get_json()
    assert gate["metrics"]["n"] == 8 and gate["metrics"]["left_out"]["classes"] == ["normal"], gate
    assert gate["gate_failures"] == [], gate["gate_failures"]
    promoted = admin_client.post(f"/api/runs/{run['id']}/promote", json={"reason": "two-class model"})
    assert promoted.status_code == 200, promoted.get_json()

    # A diagnosis gives two probabilities, and its report names no third class.
    answer = admin_client.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "scan.png")))
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()["results"][0]
    assert set(result["probabilities"]) == {"benign", "malignant"}
    assert result["label"] in ("benign", "malignant", None)
    page = admin_client.get(f"/reports/{result['report_id']}").get_data(as_text=True)
    assert "Malignant" in page or "malignant" in page
    pdf = admin_client.get(f"/reports/{result['report_id']}.pdf")
    assert pdf.status_code == 200
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.data)).pages).lower()
    assert "benign" in text and "malignant" in text and "normal" not in text.replace("abnormal", "")
