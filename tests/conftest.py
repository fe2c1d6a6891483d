"""Shared fixtures: a fresh app per test on a temporary instance folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ADMIN, CLINICIAN, make_user_client

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
def make_app(app_config, tmp_path):
    """``make(**settings)``: apps with extra settings, each on a fresh instance with the admin account."""
    from busi_web import create_app

    made = []

    def make(**settings):
        made.append(1)
        app = create_app({**app_config, "INSTANCE_PATH": str(tmp_path / f"instance{len(made)}"), **settings})
        app.extensions["busi_web"].store.add_user(ADMIN[0], "admin", ADMIN[1])
        return app

    return make


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


@pytest.fixture
def admin_client(app):
    """A test client logged in as an admin (user ``admin``)."""
    return make_user_client(app, *ADMIN, "admin")


@pytest.fixture
def clinician_client(app):
    """A test client logged in as a clinician (user ``clin``)."""
    return make_user_client(app, *CLINICIAN, "clinician")


@pytest.fixture(scope="session")
def pg_cluster():
    """Debian's PostgreSQL, one throwaway cluster for the session on 127.0.0.1 (``new_database()`` per test)."""
    from tests.servers import postgres

    with postgres() as cluster:
        yield cluster
