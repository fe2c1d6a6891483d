"""Shared fixtures: a fresh app per test on a temporary instance folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Keep the suite polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
for key in [k for k in os.environ if k.startswith("BUSI_WEB_")]:
    del os.environ[key]


@pytest.fixture
def instance_path(tmp_path: Path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def app_config(instance_path: Path) -> dict:
    return {"INSTANCE_PATH": str(instance_path), "SECRET_KEY": "test-secret", "TESTING": True,
            "AUTO_FIRST_RUN": False, "WTF_CSRF_ENABLED": False}


@pytest.fixture
def app(app_config):
    from busi_web import create_app

    return create_app(app_config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def registry():
    """The installed plugins, loaded once (tests that need the app's own registry use ``app``)."""
    from busi_web.plugins import load_plugins

    return load_plugins()


@pytest.fixture
def store(tmp_path: Path):
    """A job store on a real SQLite file in ``tmp_path`` (app tests override this with the app's store)."""
    from busi_web.store import JobStore

    return JobStore(tmp_path / "busi.db", tmp_path / "runs")


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``busi-web`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("busi-web")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, input=input,
                          timeout=timeout, cwd=cwd or ROOT)


ADMIN = ("admin", "admin-pass-1")
CLINICIAN = ("clin", "clin-pass-1")


def login(client, name: str, password: str, *, next_url: str | None = None):
    """Log ``client`` in through the real login form (with its CSRF token, so it also works when CSRF is on)."""
    import re

    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    data = {"username": name, "password": password, "csrf_token": match.group(1) if match else ""}
    if next_url:
        data["next"] = next_url
    return client.post("/login", data=data)


def make_user_client(app, name: str, password: str, role: str):
    """A test client logged in as a new (or existing) user ``name`` with ``role``."""
    store = app.extensions["busi_store"]
    if store.get_user(name) is None:
        store.add_user(name, role, password)
    client = app.test_client()
    r = login(client, name, password)
    assert r.status_code == 302, f"login as {name} failed: {r.status_code}"
    return client


@pytest.fixture
def admin_client(app):
    """A test client logged in as an admin (user ``admin``)."""
    return make_user_client(app, *ADMIN, "admin")


@pytest.fixture
def clinician_client(app):
    """A test client logged in as a clinician (user ``clin``)."""
    return make_user_client(app, *CLINICIAN, "clinician")
