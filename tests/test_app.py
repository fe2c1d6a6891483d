"""The app factory, configuration, error pages, the CLI and a real gunicorn."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from busi_web import create_app
from busi_web.errors import UserError
from tests.helpers import ROOT, make_user_client, run_cli


def test_config_precedence_instance_file_then_env_then_argument(instance_path, monkeypatch):
    instance_path.mkdir(parents=True)
    (instance_path / "config.py").write_text("SECRET_KEY = 'from-file'\nMAX_UPLOAD_MB = 5\nDEVICE = 'cpu'\n")
    monkeypatch.setenv("BUSI_WEB_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("BUSI_WEB_DATA_DIRS", '{"busi": "/data/busi"}')
    app = create_app({"INSTANCE_PATH": str(instance_path), "DEVICE": "cuda"})
    assert app.config["SECRET_KEY"] == "from-file"
    assert app.config["MAX_UPLOAD_MB"] == 7 and app.config["MAX_CONTENT_LENGTH"] == 7 * 1024 * 1024
    assert app.config["DATA_DIRS"] == {"busi": "/data/busi"}
    assert app.config["DEVICE"] == "cuda"
    assert app.config["DATABASE"] == str(instance_path / "busi.db")
    assert Path(app.config["DATABASE"]).exists()


@pytest.mark.parametrize(("text", "message"), [
    ("SECRET_KEY = 'x'\nMAX_UPLOAD_MB = (\n", r"config.py, line 2: SyntaxError"),
    ("SECRET_KEY = 'x'\nDEVICE = cpu\n", r"config.py, line 2: NameError: name 'cpu' is not defined"),
])
def test_a_broken_config_file_is_one_line_naming_the_file_and_line(instance_path, text, message):
    instance_path.mkdir(parents=True)
    (instance_path / "config.py").write_text(text)
    with pytest.raises(UserError, match=message):
        create_app({"INSTANCE_PATH": str(instance_path)})
    result = run_cli("users", "list", env={"BUSI_WEB_INSTANCE_PATH": str(instance_path)})
    assert result.returncode == 1 and "Traceback" not in result.stderr and "line 2" in result.stderr, result.stderr


@pytest.mark.parametrize(("key", "value", "message"), [
    ("MAX_UPLOAD_MB", "lots", "MAX_UPLOAD_MB must be a number"),
    ("PROXY_FIX", "yes", "PROXY_FIX must be a number"),
    ("MAX_IMAGE_SIDE", -5, "MAX_IMAGE_SIDE must be 0 or more"),
    ("BATCH_WAIT_MS", [], "BATCH_WAIT_MS must be a number"),
])
def test_bad_config_value_names_the_key(instance_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        create_app({"INSTANCE_PATH": str(instance_path), key: value})


def test_socketio_runs_in_threading_mode_and_eventlet_is_absent(app):
    from busi_web.web.live import socketio

    assert socketio.async_mode == "threading"
    assert importlib.util.find_spec("eventlet") is None
    assert importlib.util.find_spec("gevent") is None


def test_errors_are_json_under_api_and_pages_elsewhere(clinician_client):
    client = clinician_client
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.is_json and r.get_json()["status"] == 404
    r = client.get("/nothing-here")
    assert r.status_code == 404 and b"<h1>404</h1>" in r.data


def test_a_bug_gives_a_500_with_an_error_id_not_a_traceback(app, caplog):
    @app.get("/api/boom")
    def boom():
        raise RuntimeError("secret internals")

    r = make_user_client(app, "boom", "maple-lantern-58", "clinician").get("/api/boom")
    assert r.status_code == 500
    body = r.get_json()
    assert "secret internals" not in r.get_data(as_text=True) and len(body["error_id"]) == 12
    assert body["error_id"] in caplog.text


@pytest.mark.slow
def test_init_writes_a_secret_key_once_and_creates_the_store(tmp_path):
    inst = tmp_path / "inst"
    env = {"BUSI_WEB_INSTANCE_PATH": str(inst), "BUSI_WEB_AUTO_FIRST_RUN": "false"}
    first = run_cli("init", env=env)
    assert first.returncode == 0, first.stderr
    config = (inst / "config.py").read_text()
    assert "SECRET_KEY = '" in config and oct((inst / "config.py").stat().st_mode)[-3:] == "600"
    assert (inst / "busi.db").exists() and (inst / "runs").is_dir()
    second = run_cli("init", env=env)
    assert second.returncode == 0 and (inst / "config.py").read_text() == config


@pytest.mark.slow
def test_flask_cli_has_the_same_commands(tmp_path):
    flask = Path(sys.executable).with_name("flask")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env["BUSI_WEB_INSTANCE_PATH"] = str(tmp_path / "inst")
    out = subprocess.run([str(flask), "--app", "busi_web", "--help"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    mine = run_cli("--help", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "inst")})
    for command in ("init", "serve", "plugins", "datasets"):
        assert f"  {command} " in out.stdout and f"  {command} " in mine.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_runs_gunicorn_gthread_and_lists_plugins(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update({"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "inst"), "BUSI_WEB_AUTO_FIRST_RUN": "false"})
    from busi_web.store import JobStore

    store = JobStore(tmp_path / "inst" / "busi.db", tmp_path / "inst" / "runs")
    store.add_user("admin", "admin", "amber-otter-42")
    auth = {"Authorization": "Bearer " + store.create_token("admin")}

    def get(path: str, timeout: float):
        return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=auth),
                                      timeout=timeout)

    exe = Path(sys.executable).with_name("busi-web")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--threads", "4"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                body = get("/api/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("gunicorn did not come up") from None
                time.sleep(0.5)
        assert json.loads(body)["status"] == "ok"
        home = get("/", timeout=10).read().decode()
        assert "phantom" in home and "resnet50_cbam" in home
        # Socket.IO's handshake answers (threading mode inside gunicorn's gthread worker).
        sio = urllib.request.urlopen(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", timeout=10)
        assert b'"sid"' in sio.read()
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    assert "gthread" in log or "Using worker: gthread" in log, log[-2000:]
