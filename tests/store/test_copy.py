"""Moving an instance from its SQLite file to PostgreSQL: ``busi-web db copy`` loses nothing, and the copy works."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from busi_web.errors import UserError
from busi_web.store import JobStore
from busi_web.store.copy import copy_store, table_counts
from busi_web.store.tables import COPY_ORDER
from tests.helpers import ADMIN, run_cli


def filled_store(path: Path) -> tuple[JobStore, str]:
    """A SQLite store with rows in every table; returns it and an API token of its admin."""
    store = JobStore(path / "busi.db", path / "runs")
    store.add_user(ADMIN[0], "admin", ADMIN[1])
    store.add_user("Nurse.Kim", "clinician", "velvet-cactus-17")
    token = store.create_token(ADMIN[0], "scripts")
    runs = [store.create_run("tiny_cnn", "phantom", {"train": {"epochs": i}}, name=f"r{i}") for i in range(3)]
    store.transition(runs[0]["id"], "running")
    store.add_metrics(runs[0]["id"], [{"epoch": e, "step": 0, "key": "loss", "value": 1 / (e + 1)} for e in range(5)])
    (Path(runs[0]["run_dir"]) / "best_model.pt").write_bytes(b"weights")
    store.transition(runs[0]["id"], "finished", test_macro_f1=0.7)
    store.set_default(runs[0]["id"], by="admin", reason="the first model", gate=False)
    store.update_modality_settings("ultrasound", by="admin", floors={"macro_f1": 0.5}, operating_sensitivity=0.92)
    accepted = store.add_acceptance_set("ultrasound", items=[{"key": "a.png", "label": "benign", "sha256": "00",
                                                               "phash": "ff"}], dataset="busi", source="folder",
                                        by="admin")
    store.record_acceptance(runs[0]["id"], accepted["id"], {"macro_f1": 0.8}, by="admin")
    store.add_validation(runs[0]["id"], dataset="busbra", data_dir="/data/busbra", dataset_params={},
                         sites={"busbra": {"auc_bm": 0.84}}, n=10, report=None, by="admin")
    store.audit("login", user=ADMIN[0])
    return store, token


def rows_of(store: JobStore) -> dict[str, list[dict]]:
    with store.transaction(immediate=False) as conn:
        return {t.name: [dict(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()]
                for t in COPY_ORDER}


def test_every_row_of_every_table_arrives_and_the_copy_works_as_the_original(tmp_path, pg_cluster):
    source, token = filled_store(tmp_path)
    url = pg_cluster.new_database()
    target = JobStore(url, tmp_path / "runs")
    copied = copy_store(source, target)
    assert copied == table_counts(source) and all(copied[t] for t in ("runs", "metrics", "users", "api_tokens",
                                                                       "audit", "defaults", "validations"))
    assert rows_of(target) == rows_of(source)
    # What the rows are for still works: the token, the password, the default, and new rows get new ids.
    assert target.user_for_token(token)["name"] == ADMIN[0]
    assert target.check_password("nurse.kim", "velvet-cactus-17")["name"] == "Nurse.Kim"
    assert target.default_model("ultrasound")["run_id"] == source.default_model("ultrasound")["run_id"]
    assert target.create_run("tiny_cnn", "phantom", {})["id"] == 4
    assert target.add_metrics(1, [{"epoch": 9, "key": "loss", "value": 0.1}]) > max(
        r["id"] for r in source.metrics(1))


def test_a_target_that_holds_rows_is_refused_and_left_alone(tmp_path, pg_cluster):
    source, _ = filled_store(tmp_path)
    target = JobStore(pg_cluster.new_database(), tmp_path / "runs")
    target.add_user("someone", "admin", "amber-otter-42-x")
    before = rows_of(target)
    with pytest.raises(UserError, match="is not empty .*1 users"):
        copy_store(source, target)
    assert rows_of(target) == before


@pytest.mark.slow
def test_the_documented_command_copies_the_instance_and_the_server_then_runs_on_postgresql(tmp_path, pg_cluster):
    instance = tmp_path / "instance"
    source, token = filled_store(instance)
    url = pg_cluster.new_database()
    done = run_cli("db", "copy", url, env={"BUSI_WEB_INSTANCE_PATH": str(instance)})
    assert done.returncode == 0, done.stderr
    assert "copied" in done.stdout and "5 metrics" in done.stdout
    status = run_cli("db", "status", env={"BUSI_WEB_INSTANCE_PATH": str(instance), "BUSI_WEB_DATABASE_URL": url})
    assert status.returncode == 0 and "(postgresql)" in status.stdout and "3 runs" in status.stdout, status.stdout
    again = run_cli("db", "copy", url, env={"BUSI_WEB_INSTANCE_PATH": str(instance)})
    assert again.returncode == 1 and "is not empty" in again.stderr and "Traceback" not in again.stderr
    unreachable = run_cli("db", "status", env={"BUSI_WEB_INSTANCE_PATH": str(instance),
                                               "BUSI_WEB_DATABASE_URL": "postgresql://busi@127.0.0.1:1/nothing"})
    assert unreachable.returncode != 0 and "cannot reach the store's database" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
