"""The job store on a real SQLite file: schema, run states, metrics, models and audit.

Several processes and threads at once: ``test_store_concurrency.py``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from busi_web.store import STATES, TERMINAL, TRANSITIONS, IllegalTransition, JobStore, RunNotFound

# A legal path from a new (queued) run to each state.
PATH_TO = {"queued": [], "running": ["running"], "finished": ["running", "finished"], "failed": ["failed"],
           "cancelled": ["cancelled"], "interrupted": ["running", "interrupted"]}


def run_in(store: JobStore, state: str, **create) -> dict:
    run = store.create_run(create.pop("backbone", "tiny_cnn"), create.pop("dataset", "phantom"), {}, **create)
    for step in PATH_TO[state]:
        run = store.transition(run["id"], step)
    assert run["status"] == state
    return run


def finished_with_model(store: JobStore, f1: float | None, dataset: str = "phantom") -> dict:
    """A finished run with a (placeholder) best_model.pt: the store only checks that the file is there."""
    run = run_in(store, "running", dataset=dataset)
    (Path(run["run_dir"]) / "best_model.pt").write_bytes(b"weights")
    return store.transition(run["id"], "finished", test_macro_f1=f1)


# -- schema ----------------------------------------------------------------------------------------------------


def test_schema_comes_from_the_migrations_in_wal_mode_and_is_applied_once(tmp_path):
    store = JobStore(tmp_path / "busi.db", tmp_path / "runs")
    assert store.schema_version() == ["m001_initial"]
    assert {"runs", "metrics", "models", "users", "api_tokens", "audit", "_sqlite_migrations"} <= set(
        store.db.table_names())
    # WAL is a property of the file: a plain connection that never heard of the store sees it.
    with sqlite3.connect(tmp_path / "busi.db") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.create_run("tiny_cnn", "phantom", {"train": {"epochs": 1}})
    again = JobStore(tmp_path / "busi.db", tmp_path / "runs")  # a second process starting on the same file
    assert again.schema_version() == ["m001_initial"]
    assert again.db["_sqlite_migrations"].count == 1
    assert [r["params"] for r in again.list_runs()] == [{"train": {"epochs": 1}}]


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
    with pytest.raises(sqlite3.IntegrityError):
        store.add_metrics(999, [{"key": "loss", "value": 1}])  # no rows for a run that does not exist


# -- models and audit ------------------------------------------------------------------------------------------


def test_only_a_finished_run_with_a_checkpoint_can_be_promoted(store):
    running = run_in(store, "running")
    with pytest.raises(IllegalTransition, match="only a finished run"):
        store.set_active_model(running["id"])
    no_file = run_in(store, "finished")
    with pytest.raises(IllegalTransition, match="no checkpoint"):
        store.set_active_model(no_file["id"])
    assert store.active_model() is None and store.list_models() == []
    good = finished_with_model(store, 0.5)
    model = store.set_active_model(good["id"], by="ana")
    assert model["run_id"] == good["id"] and model["dataset"] == "phantom" and model["activated_by"] == "ana"
    assert model["checkpoint"] == str(Path(good["run_dir"]) / "best_model.pt")
    audit = store.audit_log("model.promote")
    assert [(a["user"], a["run_id"], a["detail"]) for a in audit] == [("ana", good["id"], {"dataset": "phantom"})]


def test_one_active_model_per_dataset_and_the_newest_overall(store):
    first, second = finished_with_model(store, 0.4), finished_with_model(store, 0.3)
    busi = finished_with_model(store, 0.9, dataset="busi")
    store.set_active_model(first["id"])
    store.set_active_model(busi["id"])
    store.set_active_model(second["id"])  # replaces first: one model per dataset
    assert [(m["dataset"], m["run_id"]) for m in store.list_models()] == [("busi", busi["id"]),
                                                                           ("phantom", second["id"])]
    assert store.active_model("phantom")["run_id"] == second["id"]
    assert store.active_model()["run_id"] == second["id"]  # the most recently activated one
    assert store.active_model("imagefolder") is None


def test_promote_if_better_needs_a_strictly_better_test_macro_f1(store):
    first = finished_with_model(store, 0.5)
    assert store.promote_if_better(first["id"]) is True  # no model yet
    assert store.promote_if_better(first["id"]) is False  # already active
    assert store.promote_if_better(finished_with_model(store, 0.5)["id"]) is False  # a tie keeps the old one
    assert store.promote_if_better(finished_with_model(store, None)["id"]) is False  # never tested
    better = finished_with_model(store, 0.7)
    assert store.promote_if_better(better["id"], by="auto") is True
    assert store.active_model("phantom")["run_id"] == better["id"]
    assert [a["run_id"] for a in store.audit_log("model.promote")] == [better["id"], first["id"]]


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
