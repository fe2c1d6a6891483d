"""The per-site report, the operating point, scanner provenance and external validations, on numbers worked out
by hand (and against scikit-learn where it has the same metric)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from busi_web.diagnosis.scanner import UNKNOWN, UNSEEN, scanner_check
from busi_web.evaluation.sites import binary_auc, bootstrap_intervals, per_site, site_metrics
from busi_web.model.operating_point import fit_operating_point, verdict

CLASSES = ["benign", "malignant", "normal"]


def test_binary_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=200), 1)  # many ties
    positive = rng.uniform(size=200) < 0.3
    assert binary_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert binary_auc(scores, np.zeros(200, bool)) is None


def test_site_metrics_count_only_the_classes_a_site_has():
    # A BUS-BRA-like site: benign and malignant only.
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[.8, .1, .1], [.3, .2, .5], [.6, .3, .1], [.2, .7, .1], [.5, .4, .1], [.1, .8, .1]])
    m = site_metrics(y, probs, CLASSES, flagged=[False, True, False, False, True, False], threshold=0.35)
    pred = probs.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))
    assert m["classes_present"] == ["benign", "malignant"] and m["sensitivity"]["normal"] is None
    assert m["lesions_called_normal"] == pytest.approx(1 / 6)  # the second benign went to normal
    assert m["auc_bm"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    op = m["operating_point"]
    assert op["sensitivity"] == pytest.approx(1.0) and op["specificity"] == pytest.approx(1.0)  # .1 .2 .3 < .35 <= .4
    assert m["ood_flagged_share"] == pytest.approx(2 / 6)
    assert m["wrong_flagged_share"] == pytest.approx(2 / 2)  # both wrong answers (images 1 and 4) were flagged


def test_per_site_splits_by_site_and_resamples_patients():
    rng = np.random.default_rng(1)
    n = 120
    y = rng.integers(0, 2, n)
    probs = np.column_stack([1 - y * .6 - rng.uniform(0, .3, n), y * .6 + rng.uniform(0, .3, n), np.full(n, .05)])
    probs /= probs.sum(1, keepdims=True)
    sites = ["a"] * 60 + ["b"] * 60
    groups = [None] * 60 + [f"case {i // 2}" for i in range(60)]
    out = per_site(y, probs, CLASSES, sites, groups, ["dev1"] * 60 + ["dev2"] * 30 + ["dev3"] * 30,
                   threshold=0.5, replicates=200)
    assert list(out) == ["a", "b"] and out["a"]["n"] == 60
    assert out["a"]["ci_resamples"] == "images" and out["b"]["ci_resamples"] == "patients"
    assert out["b"]["devices"] == {"dev2": 30, "dev3": 30}
    low, high = out["b"]["ci"]["auc_bm"]
    assert low <= out["b"]["auc_bm"] <= high
    # Resampling patients keeps both views of a patient together: every replicate has an even count of images.
    assert bootstrap_intervals(y[60:], probs[60:], CLASSES, groups[60:], 0.5, replicates=50)["accuracy"] is not None


def test_the_operating_point_keeps_the_target_sensitivity():
    p = np.array([.95, .9, .8, .7, .6, .4, .3, .2, .1, .05])
    positive = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 0], bool)  # malignant at .95 .9 .7 .6 .3
    point = fit_operating_point(p, positive, 0.8)
    assert point["threshold"] == pytest.approx(0.6) and point["sensitivity"] == pytest.approx(0.8)
    assert point["specificity"] == pytest.approx(4 / 5)
    assert fit_operating_point(p, positive, 1.0)["threshold"] == pytest.approx(0.3)
    assert fit_operating_point(p, np.zeros(10, bool), 0.9) is None
    with pytest.raises(ValueError):
        fit_operating_point(p, positive, 0.0)
    assert verdict({"malignant": 0.61, "benign": 0.39}, point)["suspicious"] is True
    assert verdict({"malignant": 0.59, "benign": 0.41}, point)["text"] == "below the biopsy threshold"
    assert verdict({"abnormal": 0.9, "normal": 0.1}, point) is None and verdict({"malignant": .9}, None) is None


def test_scanner_provenance():
    devices = ["GE Logiq 7", "GE Logiq 5", "Toshiba Aplio 300"]
    assert scanner_check("GE Healthcare", "LOGIQ7", devices)["seen"] is True
    unseen = scanner_check("SIEMENS", "ACUSON S2000", devices)
    assert unseen["seen"] is False and unseen["message"] == UNSEEN
    assert scanner_check("GE", "", devices) is None
    assert scanner_check("GE", "LOGIQ E9", [])["message"] == UNKNOWN


def test_external_validations_are_kept_and_can_become_the_acceptance_set(app, tmp_path):
    from tests.helpers import finished_run, write_busi_folder

    services = app.extensions["busi_web"]
    run = finished_run(services.store)
    folder = write_busi_folder(tmp_path / "other", ["benign", "malignant", "normal"], per_class=3)
    sites = {"busi": site_metrics([0, 1, 2], np.eye(3), CLASSES) | {"ci": {}, "devices": {"GE LOGIQ E9": 3}}}
    report = {"external": True, "dataset": "busi", "data_dir": str(folder), "sites": sites,
              "classification": {"n": 3}, "folder": str(tmp_path / "evaluations" / "x")}
    row = services.record_validation(run["id"], report, by="admin")
    assert row["run_id"] == run["id"] and row["metrics"]["busi"]["n"] == 3 and row["created_by"] == "admin"
    assert services.record_validation(run["id"], {**report, "external": False}, by="admin") is None
    assert [v["id"] for v in services.store.validations(run["id"])] == [row["id"]]
    from busi_web.evaluation.card import build_card, card_markdown

    card = build_card(services.store, services.registry, run["id"])
    assert [v["id"] for v in card["results"]["external_validations"]] == [row["id"]]
    assert f"External validation {row['id']} on busi" in card_markdown(card)
    accepted = services.acceptance_from_validation(row["id"], by="admin", modality="ultrasound")
    assert accepted["images"] == 9 and accepted["source"] == "folder"
    with pytest.raises(Exception, match="mammography"):
        services.acceptance_from_validation(row["id"], by="admin", modality="mammography")
