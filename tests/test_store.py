"""The job store on a real SQLite file: schema, run states, metrics, models, audit, and several processes at once.

The concurrency tests start real processes (multiprocessing with ``spawn``,
so each child opens the database afresh, as a trainer process does) and let
them write, read and claim at the same moment, released by a barrier.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import sqlite3
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import pytest

from busi_web.store import STATES, TERMINAL, TRANSITIONS, IllegalTransition, JobStore, RunNotFound

SPAWN = multiprocessing.get_context("spawn")
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


# -- several processes at once ---------------------------------------------------------------------------------


def _report(out, fn, *args) -> None:
    """Run ``fn`` in a child and send back its result, or its traceback (a child's exception is otherwise lost)."""
    try:
        out.put(("ok", fn(*args)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _write_metrics_for_own_run(db, runs_dir, barrier, name: str, batches: int) -> dict:
    barrier.wait()  # both processes open (and migrate) the fresh file at the same moment
    store = JobStore(db, runs_dir)
    run_id = store.create_run("tiny_cnn", "phantom", {}, name=name)["id"]
    written, deadline, saw_other = 0, time.monotonic() + 60, False
    # Write until the other process has written too (so the two really overlap), and at least `batches` times.
    while written < batches or not saw_other:
        store.add_metrics(run_id, [{"epoch": written, "step": i, "key": "loss", "value": written + i / 10}
                                   for i in range(4)])
        written += 1
        if not saw_other:
            count = store.db.execute("SELECT count(*) FROM metrics WHERE run_id != ?", [run_id]).fetchone()[0]
            saw_other = count > 0
        if time.monotonic() > deadline:
            raise AssertionError("the other writer never wrote")
    return {"name": name, "run_id": run_id, "batches": written}


def _write_batches(db, runs_dir, go, run_id: int, batches: int, per_batch: int) -> int:
    store = JobStore(db, runs_dir)
    go.wait(30)
    for b in range(batches):
        store.add_metrics(run_id, [{"epoch": 1, "step": b, "key": f"k{i}", "value": b} for i in range(per_batch)])
        time.sleep(0.001)  # let the readers in between
    return batches


def _claim_all(db, runs_dir, barrier) -> list[int]:
    store = JobStore(db, runs_dir)
    barrier.wait()
    claimed = []
    while (run := store.claim_next(pid=os.getpid())) is not None:
        claimed.append(run["id"])
        time.sleep(0.002)  # give the other process a turn, so that the two really race
    return claimed


def start_children(target, args_list: list[tuple]) -> tuple[list, queue.Queue]:
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_report, args=(out, target, *args)) for args in args_list]
    for p in procs:
        p.start()
    return procs, out


def results_of(procs, out, timeout: float = 90) -> list:
    results = []
    for _ in procs:
        kind, value = out.get(timeout=timeout)
        assert kind == "ok", value
        results.append(value)
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0
    return results


def test_two_processes_write_metrics_at_once_without_database_is_locked(tmp_path):
    db, runs_dir = tmp_path / "busi.db", tmp_path / "runs"  # a fresh file: the two also race to create it
    barrier = SPAWN.Barrier(2)
    procs, out = start_children(_write_metrics_for_own_run, [(db, runs_dir, barrier, n, 150) for n in "ab"])
    results = results_of(procs, out)
    store = JobStore(db, runs_dir)
    assert store.schema_version() == ["m001_initial"]
    ids = {}
    for r in results:
        rows = store.metrics(r["run_id"])
        assert len(rows) == 4 * r["batches"] >= 4 * 150
        assert [(x["epoch"], x["step"], x["value"]) for x in rows] == [
            (b, i, pytest.approx(b + i / 10)) for b in range(r["batches"]) for i in range(4)]
        ids[r["name"]] = [x["id"] for x in rows]
    # The writes interleaved: each run's rows straddle the other's.
    assert min(ids["a"]) < max(ids["b"]) and min(ids["b"]) < max(ids["a"])
    assert {r["name"] for r in store.list_runs()} == {"a", "b"}


def test_readers_in_threads_see_whole_transactions_while_another_process_writes(store):
    run_id = store.create_run("tiny_cnn", "phantom", {})["id"]
    batches, per_batch = 300, 5
    go = SPAWN.Event()
    procs, out = start_children(_write_batches, [(store.db_path, store.runs_dir, go, run_id, batches, per_batch)])
    seen: dict[int, list[int]] = {}
    reads: dict[int, int] = {}
    errors: list[str] = []

    def tail(reader: int) -> None:
        cursor, got, nonempty = 0, [], 0
        deadline = time.monotonic() + 90
        try:
            while len(got) < batches * per_batch and time.monotonic() < deadline:
                rows = store.metrics(run_id, after_id=cursor)
                if rows:
                    nonempty += 1
                    # One add_metrics is one transaction: a reader gets all of a batch or none of it.
                    steps = [r["step"] for r in rows]
                    assert len(rows) % per_batch == 0 and all(steps.count(s) == per_batch for s in set(steps))
                    cursor = rows[-1]["id"]
                    got += [r["id"] for r in rows]
                store.get_run(run_id)  # other reads in between, as the web pages do
        except Exception:
            errors.append(traceback.format_exc())
        seen[reader], reads[reader] = got, nonempty

    threads = [threading.Thread(target=tail, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    go.set()
    assert results_of(procs, out) == [batches]
    for t in threads:
        t.join(90)
    assert not errors, errors[0]
    everything = [r["id"] for r in store.metrics(run_id)]
    assert len(everything) == batches * per_batch
    for reader, got in seen.items():
        assert got == everything, f"reader {reader} missed or repeated rows"
    assert max(reads.values()) > 1  # the readers did read while the writer was writing


def test_two_processes_racing_claim_next_never_claim_the_same_run(store):
    queued = [store.create_run("tiny_cnn", "phantom", {})["id"] for _ in range(30)]
    barrier = SPAWN.Barrier(2)
    procs, out = start_children(_claim_all, [(store.db_path, store.runs_dir, barrier)] * 2)
    first, second = results_of(procs, out)
    assert first and second, "one process claimed everything: there was no race"
    assert not set(first) & set(second)
    assert sorted(first + second) == queued
    assert first == sorted(first) and second == sorted(second)  # each took the oldest one left
    pids = {run["pid"] for run in store.list_runs()}
    assert len(pids) == 2 and all(r["status"] == "running" for r in store.list_runs())
    by_pid = {pid: sorted(r["id"] for r in store.list_runs() if r["pid"] == pid) for pid in pids}
    assert sorted(by_pid.values()) == sorted([sorted(first), sorted(second)])


def test_many_connections_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL takes it exclusively and SQLite answers "database is locked" at once (no busy
    wait) to the loser of that race; opening must retry. Threads with their own stores race tightly on purpose."""
    failures = []
    for rep in range(60):
        db = tmp_path / f"race{rep}.db"
        barrier = threading.Barrier(4)

        def open_store(db=db, barrier=barrier, rep=rep):
            barrier.wait()
            try:
                JobStore(db, tmp_path / "runs").create_run("tiny_cnn", "phantom", {})
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(f"{rep}: {exc}")

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures
        assert len(JobStore(db, tmp_path / "runs").list_runs()) == 4
