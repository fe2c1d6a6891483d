"""The settings of several processes and hosts: each refuses a wrong value with its name, and ``serve`` refuses
what would not work (several workers without the Redis they share)."""

from __future__ import annotations

import pytest

from busi_web import create_app
from busi_web.cli.instance import serving_tunables
from busi_web.config import load_settings
from busi_web.errors import UserError
from busi_web.store.db import database_url
from tests.helpers import run_cli


def test_trainers_must_be_local_or_remote(app_config):
    with pytest.raises(ValueError, match="TRAINERS must be local .* or remote"):
        create_app({**app_config, "TRAINERS": "elsewhere"})
    app = create_app({**app_config, "TRAINERS": "remote"})
    runner = app.extensions["busi_web"].runner
    runner.submit(1)
    assert not runner.local and runner._thread is None  # a web host with TRAINERS=remote starts no trainer


def test_redis_url_carries_the_login_counters_unless_another_store_is_named(tmp_path):
    settings = load_settings(str(tmp_path), {"REDIS_URL": "redis://10.0.0.5:6379/0"})
    assert settings["RATELIMIT_STORAGE_URI"] == "redis://10.0.0.5:6379/0"
    own = load_settings(str(tmp_path), {"REDIS_URL": "redis://a:6379/0", "RATELIMIT_STORAGE_URI": "redis://b:6379/1"})
    assert own["RATELIMIT_STORAGE_URI"] == "redis://b:6379/1"
    assert load_settings(str(tmp_path))["RATELIMIT_STORAGE_URI"] == "memory://"


def test_database_urls_are_postgresql_or_sqlite_and_say_so_otherwise(tmp_path):
    assert database_url("postgresql://u:p@db:5432/busi").startswith("postgresql+psycopg://u:p@db")
    assert database_url(tmp_path / "busi.db") == f"sqlite:///{tmp_path / 'busi.db'}"
    with pytest.raises(UserError, match="names a mysql database"):
        database_url("mysql://u:secret@db/busi")
    with pytest.raises(UserError) as refused:
        database_url("postgresql://u:secret@db:notaport/busi")
    assert "secret" not in str(refused.value)


def test_serving_processes_get_huge_pages_for_big_blocks_without_losing_other_tunables():
    assert serving_tunables(None) == "glibc.malloc.hugetlb=1"
    assert serving_tunables("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert serving_tunables("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # an operator's choice stays


def test_several_workers_without_redis_are_refused_with_the_fix(tmp_path):
    done = run_cli("serve", "--workers", "2", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance")})
    assert done.returncode != 0 and "2 workers need REDIS_URL" in done.stderr


def test_a_worker_whose_runs_would_go_stale_between_two_heartbeats_is_refused(tmp_path):
    done = run_cli("worker", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance"),
                                  "BUSI_WEB_WORKER_HEARTBEAT_SECONDS": "10", "BUSI_WEB_WORKER_STALE_SECONDS": "15"})
    assert done.returncode != 0 and "WORKER_STALE_SECONDS (15) must be more than twice" in done.stderr
    assert "Traceback" not in done.stderr
