"""The store's tests run against both databases: a SQLite file and a real PostgreSQL cluster (Debian's
``postgresql``, started once for the session on 127.0.0.1; each test gets a new database)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> str:
    """Where a store of this test lives: a SQLite file, or a new PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return str(tmp_path / "busi.db")
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture
def store(database: str, tmp_path: Path):
    """A job store on each database in turn."""
    from busi_web.store import JobStore

    return JobStore(database, tmp_path / "runs")
