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


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``busi-web`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("busi-web")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, input=input,
                          timeout=timeout, cwd=cwd or ROOT)
