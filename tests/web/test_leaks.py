"""Small holes the second attack found: server paths in a clinician's error, formulas in the audit's CSV, the
trainer's output readable by anyone on the host, and command-line diagnoses missing from the audit."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

from tests.helpers import ADMIN, finished_run, image_bytes, run_cli, upload, wait_for


def test_a_clinician_never_sees_the_checkpoints_server_path(app, clinician_client, admin_client):
    store = app.extensions["busi_web"].store
    run = finished_run(store, promote=True)
    checkpoint = Path(run["run_dir"]) / "best_model.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    for path, kwargs in (("/api/predict", {"data": upload((image_bytes(), "a.png"))}), ("/api/models/active", {}),
                         (f"/api/runs/{run['id']}/model", {})):
        r = clinician_client.post(path, **kwargs) if path == "/api/predict" else clinician_client.get(path)
        text = r.get_data(as_text=True)
        assert str(checkpoint.parent) not in text and "corrupt" in text, (path, text[:200])
    r = admin_client.get(f"/api/runs/{run['id']}/model")
    assert str(checkpoint) in r.get_json()["error"]  # administrators see where to look


def test_the_audit_csv_holds_no_formula(app, admin_client):
    from busi_web.store.audit import cell

    assert cell("\tx") == "'\tx" and cell("\rx") == "'\rx" and cell("ok") == "ok" and cell(None) == ""
    for name in ("=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2", "@SUM(A1)", "=cmd|' /C calc'!A0"):
        app.test_client().post("/login", data={"username": name, "password": "wrong-password-1"})
    text = admin_client.get("/api/audit.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    users = [r[2] for r in rows[1:] if r[3] == "login.failed"]
    assert len(users) == 5 and all(u.startswith("'") for u in users), users
    assert not any(cell.startswith(("=", "+", "-", "@", "\t")) for row in rows for cell in row)


def test_the_trainers_output_is_for_the_servers_user_only(app):
    services = app.extensions["busi_web"]
    run = services.submit_run("tiny_cnn", "phantom", train={"epochs": 1, "batch_size": 8, "input_size": 32,
                                                            "resize": 36}, dataset_params={"size": 40, "per_class": 8})
    path = Path(run["run_dir"]) / "trainer_stderr.txt"
    wait_for(lambda: services.store.get_run(run["id"])["status"] in ("finished", "failed"), timeout=120,
             what="the trainer")
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_command_line_diagnosis_is_audited_like_any_other(tmp_path):
    env = {"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance")}
    assert run_cli("init", env=env).returncode == 0
    trained = run_cli("train", "--backbone", "tiny_cnn", "--dataset", "phantom", "--epochs", "1", "--param",
                      "input_size=32", "--param", "resize=36", "--param", "size=40", "--param", "per_class=8", env=env)
    assert trained.returncode == 0, trained.stderr
    image = tmp_path / "patient-jane-doe.png"
    image.write_bytes(image_bytes())
    r = run_cli("predict", str(image), "--run", "1", "--out", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr
    audit = run_cli("audit", "--json", env=env)
    rows = [a for a in json.loads(audit.stdout) if a["action"] == "diagnose"]
    assert len(rows) == 1 and rows[0]["user"] == "cli" and rows[0]["detail"]["path"] == "cli"
    assert "jane" not in audit.stdout and rows[0]["detail"]["file_digest"]
    assert ADMIN  # the same audit, whatever path diagnosed
