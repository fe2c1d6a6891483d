"""The job store with several processes and threads at once, on a real SQLite file and a real PostgreSQL database.

The tests start real processes (multiprocessing with ``spawn``, so each child
opens the database afresh, as a trainer process does) and let them write,
read, claim and open a new database at the same moment, released by a barrier.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback

import pytest
from sqlalchemy import func, select

from busi_web.store import JobStore
from busi_web.store.tables import metrics

SPAWN = multiprocessing.get_context("spawn")


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
    # Write at least `batches` times, and at least once after seeing the other process's rows: then each
    # writer's last row comes after a row of the other, so the two runs' rows interleave, whatever the timing.
    while True:
        if not saw_other:
            saw_other = bool(store._scalar(select(func.count()).select_from(metrics).where(metrics.c.run_id != run_id)))
        store.add_metrics(run_id, [{"epoch": written, "step": i, "key": "loss", "value": written + i / 10}
                                   for i in range(4)])
        written += 1
        if written >= batches and saw_other:
            break
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


def test_two_processes_write_metrics_at_once_without_database_is_locked(database, tmp_path):
    db, runs_dir = database, tmp_path / "runs"  # a fresh database: the two also race to create its schema
    barrier = SPAWN.Barrier(2)
    procs, out = start_children(_write_metrics_for_own_run, [(db, runs_dir, barrier, n, 150) for n in "ab"])
    results = results_of(procs, out)
    store = JobStore(db, runs_dir)
    assert store.schema_version() == "r003"
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
    procs, out = start_children(_write_batches, [(store.url, store.runs_dir, go, run_id, batches, per_batch)])
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
    procs, out = start_children(_claim_all, [(store.url, store.runs_dir, barrier)] * 2)
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
