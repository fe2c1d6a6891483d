"""Server-rendered pages through the Flask test client, logged in as an admin or a clinician.

Runs come from the real store with real files in their folders (a real tiny checkpoint, metrics and report
written by :mod:`busi_web.artifacts`); the browser behaviour of the same pages is in ``test_browser.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from busi_web.evaluation.metrics import classification_metrics, classification_report_text
from busi_web.store import run_files as art
from tests.helpers import CLASSES, finished_run


def html(response) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def run_with_artifacts(store, *, promote: bool = False, seed: int = 0, name: str | None = None,
                       test: tuple[str, ...] = ("a.png", "b.png")) -> dict:
    """A finished run with a checkpoint, test metrics, report, log and two epochs of curves, tested on ``test``."""
    run = finished_run(store, promote=promote, seed=seed)
    if name:
        store.update_run(run["id"], name=name)
    folder = Path(run["run_dir"])
    art.write_json(folder / art.PARAMS_JSON, {"classes": CLASSES, "data_hash": "the same data"})
    art.write_json(folder / art.SPLIT_JSON, {"train": [], "val": [], "test": list(test)})
    y = [0, 0, 1, 1, 2, 2]
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, CLASSES)
    art.write_json(folder / art.METRICS_JSON, {"run_id": run["id"], "part": "test", "loss": 0.61 + seed, **m,
                                               "best_epoch": 2})
    art.write_atomic(folder / art.REPORT_TXT, classification_report_text(m, "test part"))
    art.write_atomic(folder / art.LOG_TXT, "run started\nepoch 1/2: train_loss 1.1\nepoch 2/2: train_loss 0.8\n")
    for epoch, (loss, acc) in enumerate([(1.1, 0.4), (0.8 - 0.1 * seed, 0.6 + 0.1 * seed)], start=1):
        store.add_metrics(run["id"], [{"epoch": epoch, "key": k, "value": v} for k, v in (
            ("train_loss", loss), ("val_loss", loss + 0.1), ("val_acc", acc), ("val_macro_f1", acc - 0.05))])
    # A stand-in for what the trainer records (test_api checks the real trainer writes test_accuracy).
    return store.update_run(run["id"], test_accuracy=m["accuracy"], best_metric=0.55, best_metric_name="val_macro_f1")


def test_nav_shows_the_user_and_logout_and_hides_admin_links_from_clinicians(admin_client, clinician_client):
    page = html(admin_client.get("/runs"))
    assert 'id="nav-train"' in page and 'id="nav-plugins"' in page
    assert re.search(r'<form method="post" action="/logout"[^>]*>\s*<input type="hidden" name="csrf_token"', page)
    assert "admin" in re.search(r'id="nav-user">(.*?)</div>', page, re.S).group(1)
    page = html(clinician_client.get("/runs"))
    assert 'id="nav-train"' not in page and 'id="nav-plugins"' not in page and 'href="/diagnose"' in page
    assert "clin" in re.search(r'id="nav-user">(.*?)</div>', page, re.S).group(1)
    assert "New run" not in page


@pytest.mark.parametrize("path", ["/train", "/plugins"])
def test_admin_pages_refuse_clinicians_with_a_reason(clinician_client, admin_client, path):
    r = clinician_client.get(path)
    assert r.status_code == 403 and "only an administrator" in r.get_data(as_text=True)
    assert admin_client.get(path).status_code == 200


def test_diagnose_without_any_model_says_so_and_links_to_training(admin_client, clinician_client):
    page = html(admin_client.get("/diagnose"))
    assert 'id="no-model"' in page and '<a href="/train" id="no-model-train">' in page
    assert re.search(r'id="diagnose-submit"\s+disabled', page)
    page = html(clinician_client.get("/diagnose"))
    assert "An administrator has to" in page and 'id="no-model"' in page
    home = html(clinician_client.get("/"))
    assert 'id="home-no-model"' in home and "An administrator has to train one and make it a" in home


def test_diagnose_offers_each_modalitys_default_its_accepted_models_and_the_notice(app, store, clinician_client,
                                                                                   admin_client):
    active = run_with_artifacts(store, promote=True)
    other = run_with_artifacts(store, seed=1, name="other model")
    store.create_run("tiny_cnn", "phantom", {})  # queued: not a model anyone can use
    page = html(clinician_client.get("/diagnose"))
    assert 'id="no-model"' not in page and 'id="no-active-model"' not in page
    assert "Decision support, not a diagnosis" in page.split('id="support-notice"')[1]
    modalities = re.findall(r'<option value="(\w+)"', page.split('id="modality"')[1].split("</select>")[0])
    assert modalities == ["ultrasound"]
    select = page.split('id="model"')[1].split("</select>")[0]
    options = re.findall(r'<option value="(\d*)"[^>]*>([^<]*)</option>', select)
    # A clinician is offered the accepted models only: the default, not the other one (no floors, no gate passed).
    assert [v for v, _ in options] == ["", str(active["id"])]
    assert options[0][1].startswith(f"Default ultrasound model — run {active['id']}") and "[demo]" in options[0][1]
    assert "default" in options[1][1]
    # An administrator may try every finished model, the ones that are not accepted marked so.
    admin_select = html(admin_client.get("/diagnose")).split('id="model"')[1].split("</select>")[0]
    admin_options = re.findall(r'<option value="(\d*)"[^>]*>([^<]*)</option>', admin_select)
    assert [v for v, _ in admin_options] == ["", str(other["id"]), str(active["id"])]
    assert "other model" in admin_options[1][1] and "NOT ACCEPTED" in admin_options[1][1]
    assert "NOT ACCEPTED" not in admin_options[2][1]
    explainers = page.split('id="explainer"')[1].split("</select>")[0]
    assert re.search(r'value="gradcam"\s+selected', explainers) and 'value="none"' in explainers
    assert 'value="gradcampp"' in explainers
    # The scripts are ours, served locally (no CDN on an intranet).
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts and all(s.startswith("/static/") for s in scripts)
    for s in scripts:
        assert clinician_client.get(s).status_code == 200, s


def test_run_model_api_gives_what_the_diagnose_form_needs(store, clinician_client):
    run = run_with_artifacts(store)
    body = clinician_client.get(f"/api/runs/{run['id']}/model").get_json()
    assert body["classes"] == CLASSES and body["backbone"] == "tiny_cnn" and body["modality"] == "ultrasound"
    assert body["target_layer"] in body["layers"] and body["input_size"] == 32
    r = clinician_client.get("/api/runs/999/model")
    assert r.status_code == 404 and "999" in r.get_json()["error"]
    queued = store.create_run("tiny_cnn", "phantom", {})
    r = clinician_client.get(f"/api/runs/{queued['id']}/model")
    assert r.status_code == 409 and "no best_model.pt" in r.get_json()["error"]


def test_runs_list_shows_status_metrics_duration_and_filters(store, clinician_client):
    done = run_with_artifacts(store, promote=True, name="finished one")
    queued = store.create_run("resnet18", "busi", {"train": {"epochs": 5}}, name="waiting one")
    page = html(clinician_client.get("/runs"))
    rows = re.findall(r'<tr data-run-id="(\d+)" data-status="(\w+)"', page)
    assert rows == [(str(queued["id"]), "queued"), (str(done["id"]), "finished")]
    done_row = page.split(f'data-run-id="{done["id"]}"')[1].split("</tr>")[0]
    assert "val_macro_f1 0.5500" in done_row and "tiny_cnn" in done_row and ">default ultrasound<" in done_row
    assert "0.500" in done_row  # test macro-F1 with 3 digits
    assert re.search(r"<td>\d+ s</td>", done_row)  # a duration
    assert "0/5" in page.split(f'data-run-id="{queued["id"]}"')[1].split("</tr>")[0]
    page = html(clinician_client.get("/runs?status=queued"))
    assert re.findall(r'<tr data-run-id="(\d+)"', page) == [str(queued["id"])]
    assert '<option value="queued" selected>' in page
    page = html(clinician_client.get("/runs?backbone=tiny_cnn&dataset=phantom"))
    assert re.findall(r'<tr data-run-id="(\d+)"', page) == [str(done["id"])]
    assert re.search(r'<option value="resnet18"\s*>', page)  # the filter still offers every backbone
    page = html(clinician_client.get("/runs?dataset=nothing"))
    assert 'id="no-runs"' in page and "match these filters" in page
    r = clinician_client.get("/runs?status=lost")
    assert r.status_code == 400 and "unknown status" in r.get_data(as_text=True)


def test_finished_run_page_has_report_matrix_log_params_files_and_promote(store, admin_client, clinician_client):
    run = run_with_artifacts(store)
    page = html(admin_client.get(f"/runs/{run['id']}"))
    assert 'data-status="finished"' in page and 'id="chart-loss"' in page and 'id="batch-log"' in page
    matrix = page.split('id="confusion-matrix"')[1].split("</table>")[0]
    cells = [int(n) for n in re.findall(r"<td[^>]*>(\d+)</td>", matrix)]
    assert cells == [1, 1, 0, 0, 2, 0, 1, 0, 1]  # rows: true class, columns: predicted
    assert "precision" in page.split('id="classification-report"')[1]
    assert "epoch 2/2: train_loss 0.8" in page
    assert re.search(r"<th>lr</th><td><code>0.003</code>", page)
    assert 'id="promote-run"' in page and 'id="cancel-run"' not in page
    for name in ("best_model.pt", "metrics.json", "classification_report.txt", "training_log.txt"):
        assert f'/api/runs/{run["id"]}/artifacts/{name}?download=1' in page
    assert 'id="test-accuracy">0.6667<' in page  # from metrics.json: 4 of 6 right
    page = html(clinician_client.get(f"/runs/{run['id']}"))
    assert "best_model.pt" not in page and 'data-action=' not in page and "classification_report.txt" in page
    # Promoting (the API) shows on the page; the details section alone is what the page swaps in live.
    assert admin_client.post(f"/api/runs/{run['id']}/promote", json={"reason": "page test"}).status_code == 200
    part = html(admin_client.get(f"/runs/{run['id']}?partial=details"))
    assert "<html" not in part and 'id="run-active"' in part and 'id="promote-run"' not in part
    # The model card is a section of the run page: the promotion with its reason, the limits, the export.
    card = part.split('id="model-card"')[1]
    assert "page test" in card.split('id="card-promotion"')[1] and 'id="card-demo"' in card
    assert "trained from scratch" in card.split('id="card-limits"')[1]
    assert f'href="/api/runs/{run["id"]}/card.md"' in card


def test_running_run_page_offers_cancel_to_admins_only(store, admin_client, clinician_client):
    run = store.create_run("tiny_cnn", "phantom", {"train": {"epochs": 7}})
    store.transition(run["id"], "running")
    page = html(admin_client.get(f"/runs/{run['id']}"))
    assert 'data-status="running"' in page and 'data-epochs="7"' in page
    assert 'id="cancel-run" data-action="cancel"' in page and 'id="run-eta">…<' in page
    assert "/static/vendor/socket.io/socket.io.min.js" in page and "/static/vendor/chartjs/chart.umd.min.js" in page
    assert 'id="cancel-run"' not in html(clinician_client.get(f"/runs/{run['id']}"))
    r = admin_client.get("/runs/4242")
    assert r.status_code == 404 and "there is no run 4242" in r.get_data(as_text=True)


def test_compare_page_tabulates_runs_and_marks_the_best(store, clinician_client):
    a = run_with_artifacts(store, seed=0, name="first")
    b = run_with_artifacts(store, seed=1, name="second")
    store.update_run(b["id"], params={"train": {**b["params"]["train"], "lr": 0.01}})
    page = html(clinician_client.get(f"/runs/compare?ids={b['id']},{a['id']}"))
    assert re.findall(r'<th scope="col" data-run-id="(\d+)"', page) == [str(b["id"]), str(a["id"])]
    assert f'data-ids="{b["id"]},{a["id"]}"' in page
    row = page.split('data-metric="min_val_loss"')[1].split("</tr>")[0]
    # Lowest val loss: run b reached 0.8 in epoch 2, run a only 0.9; lower is better.
    assert re.findall(r'<td class="(\w*)">([\d.]+)</td>', row) == [("best", "0.8000"), ("", "0.9000")]
    row = page.split('data-metric="test_loss"')[1].split("</tr>")[0]
    assert re.findall(r'<td class="(\w*)">([\d.]+)</td>', row) == [("", "1.6100"), ("best", "0.6100")]
    assert 'data-param="train.lr"' in page and 'data-param="train.epochs"' not in page
    assert 'data-metric="recall_benign"' in page and 'id="not-ranked"' not in page
    # A run tested on other images is shown but nothing is ranked.
    c = run_with_artifacts(store, seed=2, name="third", test=("c.png",))
    page = html(clinician_client.get(f"/runs/compare?ids={a['id']},{c['id']}"))
    assert 'id="not-ranked"' in page and 'class="best"' not in page
    for bad, words in [("1", "two or more runs"), ("", "two or more runs"), ("1,x", "run numbers separated by commas"),
                       (f"{a['id']},{a['id']}", "two or more runs")]:
        r = clinician_client.get(f"/runs/compare?ids={bad}")
        assert r.status_code == 400 and words in r.get_data(as_text=True), bad
    r = clinician_client.get(f"/runs/compare?ids={a['id']},999")
    assert r.status_code == 404 and "999" in r.get_data(as_text=True)


def test_train_page_is_a_form_shell_fed_by_the_specs_api(admin_client):
    page = html(admin_client.get("/train"))
    form = page.split('id="train-form"')[1].split("</form>")[0]
    assert 'name="csrf_token"' in form and '<details id="advanced">' in form and "novalidate" in page
    assert "/static/js/train.js" in page
    specs = admin_client.get("/api/specs").get_json()
    # What train.js reads: names, titles, params with type/default/limits/advanced, and the training params.
    phantom = next(d for d in specs["datasets"] if d["name"] == "phantom")
    assert {"size", "per_class"} <= {p["name"] for p in phantom["params"]} and phantom["needs_data_dir"] is False
    assert {p["name"] for p in specs["train"]} >= {"epochs", "batch_size", "lr", "input_size"}
    assert all({"type", "default", "minimum", "maximum", "advanced", "choices"} <= set(p) for p in specs["train"])
    assert any(b["name"] == "tiny_cnn" for b in specs["backbones"])


def test_home_and_plugins_pages(store, admin_client):
    run = run_with_artifacts(store, promote=True, name="served model")
    home = html(admin_client.get("/"))
    defaults = home.split('id="home-defaults"')[1].split("</ul>")[0]
    assert f'href="/runs/{run["id"]}"' in defaults and "served model" in defaults and "demo" in defaults
    assert "Recent runs" in home and 'class="plugins"' in home
    page = html(admin_client.get("/plugins"))
    assert 'data-plugin="phantom"' in page and 'id="specs-backbones"' in page
    assert "<code>per_class</code> (int, default 60)" in page


def test_every_page_script_and_stylesheet_is_served(admin_client):
    for path in ("/", "/diagnose", "/train", "/runs", "/plugins"):
        page = html(admin_client.get(path))
        for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            r = admin_client.get(url)
            assert r.status_code == 200 and r.data, url
