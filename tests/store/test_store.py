"""The job store on a real SQLite file and a real PostgreSQL database: schema, run states, metrics, models and
audit (the ``store`` fixture runs each test on both; see ``conftest.py``).

Several processes and threads at once: ``test_store_concurrency.py``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from busi_web.errors import UserError
from busi_web.store import STATES, TERMINAL, TRANSITIONS, IllegalTransition, JobStore, RunNotFound
from busi_web.store.models import GateRefused

LEGACY = ["m001_initial", "m002_modalities_defaults_acceptance", "m003_disabled_users", "m004_session_versions",
          "m005_account_source", "m006_sites", "m007_name_keys_and_credential_versions"]
HEAD = "r003"

# A legal path from a new (queued) run to each state.
PATH_TO = {"queued": [], "running": ["running"], "finished": ["running", "finished"], "failed": ["failed"],
           "cancelled": ["cancelled"], "interrupted": ["running", "interrupted"]}


def run_in(store: JobStore, state: str, **create) -> dict:
    run = store.create_run(create.pop("backbone", "tiny_cnn"), create.pop("dataset", "phantom"), {}, **create)
    for step in PATH_TO[state]:
        run = store.transition(run["id"], step)
    assert run["status"] == state
    return run


def finished_with_model(store: JobStore, f1: float | None, dataset: str = "phantom",
                        modality: str = "ultrasound") -> dict:
    """A finished run with a (placeholder) best_model.pt: the store only checks that the file is there."""
    run = run_in(store, "running", dataset=dataset, modality=modality)
    (Path(run["run_dir"]) / "best_model.pt").write_bytes(b"weights")
    return store.transition(run["id"], "finished", test_macro_f1=f1)


# -- schema ----------------------------------------------------------------------------------------------------


def test_the_schema_comes_from_the_migrations_is_applied_once_and_has_every_column_the_queries_use(
        store, database, tmp_path):
    from sqlalchemy import inspect

    from busi_web.store.tables import metadata

    assert store.schema_version() == HEAD
    with store.engine.connect() as conn:
        found = inspect(conn)
        for table in metadata.sorted_tables:
            assert {c.name for c in table.columns} <= {c["name"] for c in found.get_columns(table.name)}, table.name
    store.create_run("tiny_cnn", "phantom", {"train": {"epochs": 1}})
    again = JobStore(database, tmp_path / "runs")  # a second process starting on the same database
    assert again.schema_version() == HEAD
    assert [r["params"] for r in again.list_runs()] == [{"train": {"epochs": 1}}]


def test_a_sqlite_store_is_in_wal_mode_and_private(tmp_path):
    JobStore(tmp_path / "busi.db", tmp_path / "runs")
    # WAL is a property of the file: a plain connection that never heard of the store sees it.
    with sqlite3.connect(tmp_path / "busi.db") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "busi.db").stat().st_mode & 0o777 == 0o600


def _legacy_file(path: Path, upto: int) -> None:
    """A SQLite file as an earlier busi-web left it: its first ``upto`` sqlite-utils migrations applied."""
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from busi_web.store import legacy

    first = Migrations("busi_web")
    for name in LEGACY[:upto]:
        first()(getattr(legacy, name))
    db = Database(path)
    first.apply(db)
    return db


def test_a_store_of_the_first_schema_keeps_its_runs_and_its_active_models_become_defaults(tmp_path):
    """m002: the per-dataset active models of an existing instance become per-modality defaults (the latest
    activation of each modality), runs get their modality, and nothing else is lost; then Alembic takes over."""
    db = _legacy_file(tmp_path / "busi.db", 1)
    for i, (dataset, at) in enumerate([("phantom", "2026-01-01T00:00:00"), ("busi", "2026-01-02T00:00:00"),
                                       ("mias", "2026-01-03T00:00:00")], start=1):
        db["runs"].insert({"id": i, "name": f"r{i}", "status": "finished", "backbone": "tiny_cnn", "dataset": dataset,
                           "created_at": at, "run_dir": str(tmp_path / f"run{i}")})
        db["models"].insert({"dataset": dataset, "run_id": i, "checkpoint": "x", "activated_at": at,
                             "activated_by": "ana"})
    db.conn.close()
    store = JobStore(tmp_path / "busi.db", tmp_path / "runs")
    assert store.schema_version() == HEAD
    assert [(r["id"], r["modality"]) for r in store.list_runs(oldest_first=True)] == [
        (1, "ultrasound"), (2, "ultrasound"), (3, "mammography")]
    assert [(d["modality"], d["run_id"], d["set_by"]) for d in store.list_defaults()] == [
        ("mammography", 3, "ana"), ("ultrasound", 2, "ana")]
    assert "models" not in store.table_names()
    with sqlite3.connect(tmp_path / "busi.db") as plain:  # every old migration applied once, and recorded
        assert [r[0] for r in plain.execute("SELECT name FROM _sqlite_migrations ORDER BY id")] == LEGACY
    # The upgraded file works as a new one does: a run with the new columns.
    run = store.create_run("tiny_cnn", "phantom", {})
    assert store.claim_next(worker="w1", now=1.0)["worker"] == "w1" and run["id"] == 4


def test_a_store_of_the_last_legacy_schema_is_stamped_and_upgraded_without_losing_users(tmp_path):
    db = _legacy_file(tmp_path / "busi.db", len(LEGACY))
    db["users"].insert({"id": 1, "name": "ana", "name_key": "ana", "role": "admin", "password_hash": "x",
                        "created_at": "2026-01-01T00:00:00"})
    db.conn.close()
    store = JobStore(tmp_path / "busi.db", tmp_path / "runs")
    assert store.schema_version() == HEAD and store.get_user("ANA")["name"] == "ana"
    assert "workers" in store.table_names()


# -- run states ------------------------------------------------------------------------------------------------


def test_the_transition_table_keeps_finished_and_failed_final_and_lets_stopped_runs_resume():
    assert set(TRANSITIONS) == set(STATES)
    assert TRANSITIONS["finished"] == TRANSITIONS["failed"] == frozenset()
    assert "queued" in TRANSITIONS["interrupted"] and "queued" in TRANSITIONS["cancelled"]
    assert "finished" not in TRANSITIONS["queued"]  # a run has to run before it can finish


@pytest.mark.parametrize("source", STATES)
def test_every_legal_transition_is_allowed_and_every_other_is_refused(store, source):
    for target in STATES:
        run = run_in(store, source)
        if target in TRANSITIONS[source]:
            moved = store.transition(run["id"], target, error=f"{source}->{target}")
            assert (moved["status"], moved["error"]) == (target, f"{source}->{target}")
        else:
            with pytest.raises(IllegalTransition, match=f"is {source}"):
                store.transition(run["id"], target, error="must not be written")
            after = store.get_run(run["id"])
            assert after == run, f"a refused {source}->{target} changed the run"


def test_transitions_stamp_times_and_requeue_clears_the_stop(store):
    run = store.create_run("tiny_cnn", "phantom", {})
    assert run["started_at"] is None and run["finished_at"] is None
    running = store.transition(run["id"], "running", pid=4321)
    assert running["started_at"] and running["pid"] == 4321 and running["finished_at"] is None
    store.update_run(run["id"], cancel_requested=1)
    stopped = store.transition(run["id"], "interrupted")
    assert stopped["finished_at"] >= stopped["started_at"]
    requeued = store.transition(run["id"], "queued")
    assert requeued["finished_at"] is None and requeued["cancel_requested"] == 0
    for state in TERMINAL:
        done = run_in(store, state)
        assert done["finished_at"] is not None, state


def test_bad_states_fields_and_ids_are_refused(store):
    run = store.create_run("tiny_cnn", "phantom", {})
    with pytest.raises(IllegalTransition, match="unknown run state 'done'"):
        store.transition(run["id"], "done")
    with pytest.raises(ValueError, match="unknown run field.*status"):
        store.update_run(run["id"], status="finished")  # the state only moves through transition()
    with pytest.raises(RunNotFound, match="there is no run 999"):
        store.transition(999, "running")
    with pytest.raises(RunNotFound):
        store.get_run(999)
    assert store.get_run(run["id"])["status"] == "queued"


# -- runs ------------------------------------------------------------------------------------------------------


def test_each_run_gets_a_dated_folder_named_after_its_id(store, tmp_path):
    before = datetime.now().replace(microsecond=0)
    runs = [store.create_run("tiny_cnn", "phantom", {"train": {"epochs": i}}) for i in range(3)]
    after = datetime.now()
    for run in runs:
        folder = Path(run["run_dir"])
        assert folder.is_dir() and folder.parent == tmp_path / "runs"
        match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_(\d+)", folder.name)
        assert match, folder.name
        assert int(match.group(2)) == run["id"]
        assert before <= datetime.strptime(match.group(1), "%Y-%m-%d_%H-%M-%S") <= after
    assert len({r["run_dir"] for r in runs}) == 3  # same second, still one folder each


def test_list_and_count_runs_filter_and_order(store):
    a = run_in(store, "finished", dataset="phantom")
    b = run_in(store, "queued", dataset="busi", backbone="resnet18")
    c = run_in(store, "failed", dataset="phantom")
    assert [r["id"] for r in store.list_runs()] == [c["id"], b["id"], a["id"]]
    assert [r["id"] for r in store.list_runs(oldest_first=True, limit=2)] == [a["id"], b["id"]]
    assert [r["id"] for r in store.list_runs(status=["finished", "failed"])] == [c["id"], a["id"]]
    assert [r["id"] for r in store.list_runs(dataset="busi", backbone="resnet18")] == [b["id"]]
    assert store.list_runs(status="running") == []
    assert (store.count_runs(), store.count_runs("queued")) == (3, 1)


def test_claim_next_takes_the_oldest_queued_run(store):
    cancelled = run_in(store, "cancelled")
    first, second = run_in(store, "queued"), run_in(store, "queued")
    claimed = store.claim_next(pid=111)
    assert claimed["id"] == first["id"] and claimed["status"] == "running" and claimed["pid"] == 111
    assert claimed["started_at"]
    store.transition(cancelled["id"], "queued")  # resumed later: it keeps its place by id
    assert store.claim_next()["id"] == cancelled["id"]
    assert store.claim_next()["id"] == second["id"]
    assert store.claim_next() is None


# -- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_are_a_long_table_read_with_an_after_id_cursor(store):
    run, other = store.create_run("tiny_cnn", "phantom", {}), store.create_run("tiny_cnn", "phantom", {})
    assert store.latest_metric_id(run["id"]) == 0 and store.metrics(run["id"]) == []
    last = store.add_metrics(run["id"], [{"epoch": 1, "step": s, "key": k, "value": s}
                                         for s in (1, 2) for k in ("batch_loss", "batch_acc")])
    store.add_metrics(other["id"], [{"epoch": 1, "key": "batch_loss", "value": 9}])
    newest = store.add_metrics(run["id"], [{"epoch": 1, "step": 2, "key": "val_loss", "value": 0.5, "time": 12.5}])
    assert store.add_metrics(run["id"], []) == newest == store.latest_metric_id(run["id"])
    rows = store.metrics(run["id"])
    assert [(r["step"], r["key"], r["value"]) for r in rows] == [
        (1, "batch_loss", 1.0), (1, "batch_acc", 1.0), (2, "batch_loss", 2.0), (2, "batch_acc", 2.0),
        (2, "val_loss", 0.5)]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and rows[3]["id"] == last
    assert rows[-1]["time"] == 12.5 and rows[0]["time"] > 1e9
    # The cursor: exactly the rows after it, in order, and nothing of another run.
    assert store.metrics(run["id"], after_id=rows[1]["id"]) == rows[2:]
    assert store.metrics(run["id"], after_id=newest) == []
    assert [r["key"] for r in store.metrics(run["id"], keys=["val_loss"])] == ["val_loss"]
    assert store.metrics(run["id"], limit=2) == rows[:2]
    # A resumed run redoes its unfinished epoch: its rows go.
    store.add_metrics(run["id"], [{"epoch": 2, "key": "batch_loss", "value": 1}] * 3)
    assert store.delete_metrics(run["id"], from_epoch=2) == 3
    assert store.metrics(run["id"]) == rows
    with pytest.raises(IntegrityError):
        store.add_metrics(999, [{"key": "loss", "value": 1}])  # no rows for a run that does not exist


# -- models and audit ------------------------------------------------------------------------------------------


def test_only_a_finished_run_with_a_checkpoint_and_a_reason_can_be_a_default(store):
    running = run_in(store, "running")
    with pytest.raises(IllegalTransition, match="only a finished run"):
        store.set_default(running["id"], by="ana", reason="r")
    no_file = run_in(store, "finished")
    with pytest.raises(IllegalTransition, match="no best_model.pt"):
        store.set_default(no_file["id"], by="ana", reason="r")
    good = finished_with_model(store, 0.5)
    with pytest.raises(UserError, match="give a reason"):
        store.set_default(good["id"], by="ana", reason="  ")
    assert store.list_defaults() == []
    model = store.set_default(good["id"], by="ana", reason="best on our images")
    assert (model["run_id"], model["modality"], model["set_by"], model["reason"]) == (
        good["id"], "ultrasound", "ana", "best on our images")
    assert model["checkpoint"] == str(Path(good["run_dir"]) / "best_model.pt")
    audit = store.audit_log("model.default.set")
    assert [(a["user"], a["run_id"], a["detail"]) for a in audit] == [
        ("ana", good["id"], {"modality": "ultrasound", "reason": "best on our images", "previous_run_id": None})]


def test_one_default_per_modality_and_clearing_needs_a_reason(store):
    first, second = finished_with_model(store, 0.4), finished_with_model(store, 0.3)
    mammo = finished_with_model(store, 0.9, dataset="mias", modality="mammography")
    store.set_default(first["id"], by="a", reason="first")
    store.set_default(mammo["id"], by="a", reason="mammo")
    store.set_default(second["id"], by="a", reason="replaces first")
    assert [(d["modality"], d["run_id"]) for d in store.list_defaults()] == [("mammography", mammo["id"]),
                                                                             ("ultrasound", second["id"])]
    assert store.default_ids() == {mammo["id"]: "mammography", second["id"]: "ultrasound"}
    assert store.audit_log("model.default.set")[0]["detail"]["previous_run_id"] == first["id"]
    with pytest.raises(UserError, match="give a reason"):
        store.clear_default("mammography", by="a", reason="")
    store.clear_default("mammography", by="a", reason="withdrawn")
    assert store.default_model("mammography") is None
    with pytest.raises(UserError, match="no default model to clear"):
        store.clear_default("mammography", by="a", reason="again")
    assert store.audit_log("model.default.clear")[0]["detail"] == {"modality": "mammography", "reason": "withdrawn"}


ITEMS = [{"key": "a.png", "label": "benign", "sha256": "0" * 64, "phash": "0" * 16}]


def test_the_gate_needs_the_acceptance_set_the_evaluation_and_every_floor(store):
    weak, strong = finished_with_model(store, 0.3), finished_with_model(store, 0.8)
    assert store.gate_failures(weak["id"], "ultrasound") == []  # no floors: the admin's reason is the gate
    store.update_modality_settings("ultrasound", by="a", floors={"macro_f1": 0.7, "sensitivity_malignant": 0.8})
    assert store.gate_failures(weak["id"], "ultrasound") == ["ultrasound has floors but no acceptance set; define "
                                                             "one first"]
    accepted = store.add_acceptance_set("ultrasound", items=ITEMS, dataset="busi", source="share", by="a")
    assert "has not been evaluated" in store.gate_failures(weak["id"], "ultrasound")[0]
    store.record_acceptance(weak["id"], accepted["id"], {"macro_f1": 0.32, "sensitivity_malignant": 0.9}, by="t")
    store.record_acceptance(strong["id"], accepted["id"], {"macro_f1": 0.81, "sensitivity_malignant": 0.85}, by="t")
    assert store.gate_failures(weak["id"], "ultrasound") == ["macro_f1 0.320 is below the floor 0.7"]
    with pytest.raises(GateRefused, match="macro_f1 0.320 is below the floor 0.7"):
        store.set_default(weak["id"], by="a", reason="r")
    assert store.default_model("ultrasound") is None
    store.set_default(strong["id"], by="a", reason="passes")
    # An ECE floor is a ceiling.
    store.update_modality_settings("ultrasound", by="a", floors={"ece": 0.05})
    store.record_acceptance(strong["id"], accepted["id"], {"macro_f1": 0.81, "ece": 0.08}, by="t")
    assert store.gate_failures(strong["id"], "ultrasound") == ["ece 0.080 is above the ceiling 0.05"]
    with pytest.raises(UserError, match="unknown floor 'f2'"):
        store.update_modality_settings("ultrasound", by="a", floors={"f2": 0.5})
    with pytest.raises(UserError, match="a number from 0 to 1"):
        store.update_modality_settings("ultrasound", by="a", floors={"macro_f1": 7})


def test_auto_promotion_is_off_until_switched_on_and_then_needs_the_gate_and_a_better_score(store):
    first, tie, better = (finished_with_model(store, f) for f in (0.5, 0.5, 0.7))
    assert store.auto_promote(first["id"]) == (False, "auto-promotion is off for ultrasound; an admin sets "
                                                      "defaults on the Models page")
    store.update_modality_settings("ultrasound", by="a", auto_promote=True)
    assert store.auto_promote(first["id"])[1] == "auto-promotion needs floors for ultrasound; none are set"
    store.update_modality_settings("ultrasound", by="a", floors={"macro_f1": 0.4})
    accepted = store.add_acceptance_set("ultrasound", items=ITEMS, dataset="busi", source="share", by="a")
    for run, f1 in ((first, 0.6), (tie, 0.6), (better, 0.75)):
        store.record_acceptance(run["id"], accepted["id"], {"macro_f1": f1}, by="t")
    assert store.auto_promote(first["id"]) == (True, "passed the gate with acceptance macro-F1 0.6000")
    assert store.auto_promote(first["id"]) == (False, "it is the default already")
    promoted, why = store.auto_promote(tie["id"])
    assert not promoted and "does not beat the default's 0.6000" in why
    assert store.auto_promote(better["id"])[0] is True
    assert store.default_model("ultrasound")["run_id"] == better["id"]
    assert store.default_model("ultrasound")["set_by"] == "auto"


def test_a_new_acceptance_set_replaces_the_old_for_every_check(store):
    run = finished_with_model(store, 0.5)
    old = store.add_acceptance_set("ultrasound", items=ITEMS, dataset="busi", source="share", by="a", share=0.2)
    store.record_acceptance(run["id"], old["id"], {"macro_f1": 0.9}, by="t")
    new = store.add_acceptance_set("ultrasound", items=ITEMS * 2, dataset="busi", source="folder", by="a")
    assert store.acceptance_set("ultrasound")["id"] == new["id"] != old["id"]
    assert [(s["modality"], s["images"]) for s in store.acceptance_sets()] == [("ultrasound", 2)]
    store.update_modality_settings("ultrasound", by="a", floors={"macro_f1": 0.5})
    assert "has not been evaluated" in store.gate_failures(run["id"], "ultrasound")[0]
    with pytest.raises(UserError, match="source must be one of folder, share"):
        store.add_acceptance_set("ultrasound", items=ITEMS, dataset="busi", source="usb", by="a")
    with pytest.raises(UserError, match="lower-case name"):
        store.add_acceptance_set("Ultra Sound", items=ITEMS, dataset="busi", source="share", by="a")


def test_audit_rows_record_who_did_what_to_which_run_newest_first(store):
    run = store.create_run("tiny_cnn", "phantom", {})
    store.audit("run.start", user="admin", run_id=run["id"], backbone="tiny_cnn", when=datetime(2024, 1, 2))
    store.audit("login", user="ana")
    store.audit("run.cancel", user="admin", run_id=run["id"])
    log = store.audit_log()
    assert [a["action"] for a in log] == ["run.cancel", "login", "run.start"]
    start = store.audit_log("run.start")[0]
    assert (start["user"], start["run_id"]) == ("admin", run["id"])
    assert start["detail"] == {"backbone": "tiny_cnn", "when": "2024-01-02 00:00:00"}  # stored as JSON text
    assert start["time"].endswith("+00:00")
    assert [a["action"] for a in store.audit_log(limit=1)] == ["run.cancel"]


def test_the_database_its_wal_files_and_run_folders_are_private_whatever_the_umask(tmp_path):
    """They hold password hashes, checkpoints and logs: 0600 files and 0700 folders even under umask 000."""
    import os
    import stat

    from busi_web.store import run_files as art
    from busi_web.training.run_log import RunLog

    old = os.umask(0)
    try:
        store = JobStore(tmp_path / "inst" / "busi.db", tmp_path / "inst" / "runs")
        run = store.create_run("tiny_cnn", "phantom", {})
        store.add_user("ana", "clinician", "a-long-password-1")  # writes through the WAL
        run_dir = Path(run["run_dir"])
        art.write_json(run_dir / art.METRICS_JSON, {"a": 1})
        RunLog(run_dir / art.LOG_TXT)("a line")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    db = tmp_path / "inst" / "busi.db"
    for path in (db, db.with_name("busi.db-wal"), db.with_name("busi.db-shm"), run_dir / art.METRICS_JSON,
                 run_dir / art.LOG_TXT):
        assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))
    assert mode(tmp_path / "inst" / "runs") == 0o700 and mode(run_dir) == 0o700
