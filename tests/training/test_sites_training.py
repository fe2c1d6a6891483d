"""One run on two sites through the real trainer process: per-site split, sampling, reports and the operating point.

Site A is the phantom dataset (benign, malignant, normal); site B a BUS-BRA-layout folder of phantom lesions
(benign and malignant only: it lacks the normal class, as BUS-BRA does).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from busi_web.data.sites import sources_of
from busi_web.evaluation.card import build_card
from busi_web.model.checkpoint import read_checkpoint
from busi_web.specs import InvalidParameters
from busi_web.store import run_files as art
from busi_web.training.feeding import balanced_sampler, draw_weights, drawn_class_weights
from busi_web.training.params import prepare_run_params
from tests.helpers import TINY, run_cli, start_trainer, train_in_trainer, two_site_run, write_busi_folder
from tests.synthetic_data import write_busbra_folder


@pytest.fixture
def busbra(tmp_path: Path) -> Path:
    return write_busbra_folder(tmp_path / "BUSBRA", cases=30, size=40)


def test_a_run_on_two_sites_trains_and_reports_each_site(registry, store, busbra):
    run = two_site_run(store, registry, busbra, balance_sites=True, scanner=0.5, lesion_loss=1.0)
    run = train_in_trainer(store, run["id"])
    folder = Path(run["run_dir"])
    split = json.loads((folder / art.SPLIT_JSON).read_text())
    sites = split["sites"]
    assert set(sites.values()) == {"phantom", "busbra"}
    # A patient's views never sit on both sides of the split.
    part_of = {k: p for p in ("train", "val", "test") for k in split[p]}
    by_case: dict[str, set] = {}
    for key in part_of:
        if key.startswith("busbra:"):
            case = int(Path(key).stem.split("_")[1].split("-")[0])
            by_case.setdefault(case, set()).add(part_of[key])
    assert all(len(parts) == 1 for parts in by_case.values())
    params = json.loads((folder / art.PARAMS_JSON).read_text())
    assert params["classes"] == ["benign", "malignant", "normal"]
    assert params["sites"]["busbra"]["train"]["normal"] == 0 and params["sites"]["phantom"]["train"]["normal"] > 0
    assert sum(params["sites"]["busbra"]["devices"].values()) == 40  # every image keeps its device
    metrics = json.loads((folder / art.METRICS_JSON).read_text())
    per_site = metrics["sites"]
    assert set(per_site) == {"phantom", "busbra"}
    # BUS-BRA's macro-F1 averages its own two classes: normal has no images there.
    assert per_site["busbra"]["classes_present"] == ["benign", "malignant"]
    assert per_site["busbra"]["counts"]["normal"] == 0 and per_site["busbra"]["sensitivity"]["normal"] is None
    assert per_site["busbra"]["ci_resamples"] == "patients" and per_site["phantom"]["ci_resamples"] == "images"
    for m in per_site.values():
        assert 0 <= m["accuracy"] <= 1 and m["ece"] is not None and "ood_flagged_share" in m
        assert m["operating_point"]["threshold"] == metrics["operating_point"]["threshold"]
    point = metrics["operating_point"]
    assert point["target_sensitivity"] == 0.9 and point["sensitivity"] >= 0.9
    meta, _ = read_checkpoint(folder / art.BEST_PT)
    assert meta.extra["operating_point"] == point and [s["dataset"] for s in meta.extra["datasets"]] == [
        "phantom", "busbra"]
    card = build_card(store, registry, run["id"])
    assert card["data"]["sites"]["busbra"]["devices"] and card["results"]["sites"]["busbra"]["n"] > 0
    assert [s.dataset for s in sources_of(run)] == ["phantom", "busbra"]


def test_the_operating_point_follows_the_modalitys_target_sensitivity(registry, store, busbra):
    store.update_modality_settings("ultrasound", by="admin", operating_sensitivity=0.99)
    run = two_site_run(store, registry, busbra, epochs=1)
    proc = start_trainer(store, run["id"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    metrics = json.loads((Path(store.get_run(run["id"])["run_dir"]) / art.METRICS_JSON).read_text())
    assert metrics["operating_point"]["target_sensitivity"] == 0.99
    assert metrics["operating_point"]["sensitivity"] >= 0.99


def test_site_balancing_draws_each_site_equally_and_weights_the_classes_it_sees():
    labels = [0] * 90 + [1] * 10 + [0] * 5 + [1] * 5 + [2] * 10
    sites = ["big"] * 100 + ["small"] * 20
    w = draw_weights(labels, sites, classes=False)
    assert sum(w[:100]) == pytest.approx(0.5) and sum(w[100:]) == pytest.approx(0.5)
    both = draw_weights(labels, sites, classes=True)
    # Each class of each site equally often within its site: big has 2 classes, small 3.
    assert sum(both[90:100]) == pytest.approx(0.25) and sum(both[110:120]) == pytest.approx(1 / 6)
    drawn = Counter(int(i) for i in balanced_sampler(labels, 3, torch.Generator().manual_seed(0), sites,
                                                     classes=False))
    assert sum(n for i, n in drawn.items() if i >= 100) == pytest.approx(60, abs=20)
    # The loss weights follow the mix that is drawn, not the raw counts.
    cw = drawn_class_weights(labels, 3, w)
    mass = np.array([sum(x for x, y in zip(w, labels, strict=True) if y == c) for c in range(3)])
    np.testing.assert_allclose(cw.numpy(), mass.sum() / (3 * mass), rtol=1e-5)


def test_balancing_sites_needs_several(registry, busbra):
    with pytest.raises(InvalidParameters, match="balance_sites"):
        prepare_run_params(registry, "tiny_cnn", "busbra", data_dir=str(busbra), train={**TINY, "balance_sites": True})


def test_the_cli_trains_on_two_datasets_with_a_folder_each(tmp_path: Path, busbra):
    busi = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"], per_class=8)
    env = {"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance")}
    assert run_cli("init", env=env).returncode == 0
    r = run_cli("train", "--backbone", "tiny_cnn", "--dataset", "busi", "--dataset", "busbra",
                "--data-dir", str(busi), "--data-dir", str(busbra), "--epochs", "1", "--param", "input_size=32",
                "--param", "resize=36", "--param", "busbra.partition=5-fold:2", env=env)
    assert r.returncode == 0, r.stderr
    listed = run_cli("runs", "--json", env=env)
    run = json.loads(listed.stdout)[0]
    assert run["dataset"] == "busi+busbra" and run["status"] == "finished"
    wrong = run_cli("train", "--backbone", "tiny_cnn", "--dataset", "busi", "--dataset", "busbra",
                    "--data-dir", str(busi), "--epochs", "1", env=env)
    assert wrong.returncode != 0 and "one folder per dataset" in wrong.stderr
    ambiguous = run_cli("train", "--backbone", "tiny_cnn", "--dataset", "busi", "--dataset", "busbra",
                        "--data-dir", str(busi), "--data-dir", str(busbra), "--param", "dataset.classes=x", env=env)
    assert ambiguous.returncode != 0 and "name one" in ambiguous.stderr
