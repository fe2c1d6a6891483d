"""The job runner with real trainer processes: one run at a time, in order; recovery after a restart; cancel.

Killing a trainer with SIGKILL and resuming from ``last.pt`` is tested in
test_trainer.py; here the runner's own part is tested: what it launches,
when, and what it does with signals and with runs whose process is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busi_web.training.runner import JobRunner, pid_is_trainer
from tests.helpers import new_run, wait_for

TERMINAL = {"finished", "failed", "cancelled"}
TRAINER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def make_runner(store):
    """JobRunners on the test's store, shut down at the end (their trainer processes are waited for)."""
    runners: list[JobRunner] = []

    def make(**kwargs) -> JobRunner:
        runner = JobRunner(store, poll_seconds=0.1, env=TRAINER_ENV, **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown()
        for proc in list(runner._procs.values()):  # never leave a trainer behind a failed test
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the trainer and its workers
                proc.wait(30)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_queued_runs_run_one_at_a_time_in_submission_order(registry, store, make_runner):
    first = new_run(store, registry, train={"epochs": 1})
    dropped = new_run(store, registry, train={"epochs": 1})
    second = new_run(store, registry, train={"epochs": 1})
    runner = make_runner()
    for run in (first, dropped, second):
        runner.submit(run["id"])
    assert runner.cancel(dropped["id"])["status"] == "cancelled"  # while the first one trains
    ids = (first["id"], second["id"])
    trace: list[tuple[str, str]] = []

    def both_done() -> bool:
        states = tuple(store.get_run(i)["status"] for i in ids)
        if not trace or trace[-1] != states:
            trace.append(states)
        return all(s in TERMINAL for s in states)

    wait_for(both_done, timeout=240, what=f"both runs to end; states so far {trace}")
    assert ("running", "running") not in trace, trace
    # The first ran while the second waited in the queue; then the second ran after the first was done.
    assert ("running", "queued") in trace and ("finished", "running") in trace, trace
    a, b = store.get_run(first["id"]), store.get_run(second["id"])
    assert (a["status"], b["status"]) == ("finished", "finished"), (a["error"], b["error"])
    assert a["started_at"] <= a["finished_at"] <= b["started_at"] <= b["finished_at"]
    assert a["pid"] != b["pid"] and not pid_is_trainer(a["pid"])
    wait_for(lambda: not pid_is_trainer(b["pid"]), timeout=30, what="the second trainer to exit")
    skipped = store.get_run(dropped["id"])
    assert skipped["status"] == "cancelled" and skipped["started_at"] is None and skipped["pid"] is None
    assert skipped["error"] == "cancelled before it ran"
    for run in (a, b):
        assert (Path(run["run_dir"]) / "best_model.pt").is_file()


@pytest.mark.slow
def test_recover_marks_runs_whose_trainer_is_gone_as_interrupted_and_resume_requeues(registry, store, make_runner):
    dead = new_run(store, registry, train={"epochs": 1})
    store.transition(dead["id"], "running", pid=dead_pid())
    never_started = store.create_run("tiny_cnn", "phantom", {})
    store.transition(never_started["id"], "running")  # claimed, then the web process died before the launch
    recycled = store.create_run("tiny_cnn", "phantom", {})
    store.transition(recycled["id"], "running", pid=os.getpid())  # a live pid, but not a trainer's
    waiting = store.create_run("tiny_cnn", "phantom", {})
    done = store.create_run("tiny_cnn", "phantom", {})
    store.transition(done["id"], "running")
    store.transition(done["id"], "finished")

    runner = make_runner()
    assert sorted(runner.recover()) == [dead["id"], never_started["id"], recycled["id"]]
    for run_id in (dead["id"], never_started["id"], recycled["id"]):
        run = store.get_run(run_id)
        assert run["status"] == "interrupted" and "resume" in run["error"] and run["finished_at"]
    assert store.get_run(waiting["id"])["status"] == "queued"
    assert store.get_run(done["id"])["status"] == "finished"
    assert runner.recover() == []  # nothing is interrupted twice

    with pytest.raises(ValueError, match="only interrupted or cancelled runs"):
        runner.resume(done["id"])
    assert runner.cancel(recycled["id"])["status"] == "cancelled"
    assert runner.cancel(never_started["id"])["status"] == "cancelled"
    # Resuming puts the run back in the queue and the runner trains it (from scratch: it has no last.pt).
    store.transition(waiting["id"], "cancelled")
    resumed = runner.resume(dead["id"])
    assert resumed["status"] == "queued" and resumed["error"] is None and resumed["pid"] is None
    final = wait_for(lambda: (r := store.get_run(dead["id"]))["status"] in TERMINAL and r, timeout=120,
                     what="the resumed run")
    assert final["status"] == "finished", final["error"]
    assert final["pid"] != dead["pid"] and final["epochs_done"] == 1


def wait_until_training(store, run_id: int) -> dict:
    """Wait until the trainer is in its batch loop (its signal handler is installed; batch rows are written)."""
    wait_for(lambda: store.latest_metric_id(run_id) > 0, timeout=120, what="the first batch")
    run = store.get_run(run_id)
    assert run["status"] == "running" and pid_is_trainer(run["pid"])
    return run


@pytest.mark.slow
def test_cancel_of_a_running_run_stops_it_gracefully(registry, store, make_runner):
    run = new_run(store, registry, train={"epochs": 500})
    runner = make_runner(cancel_timeout=60)  # SIGKILL would come far too late to matter here
    runner.submit(run["id"])
    running = wait_until_training(store, run["id"])
    # A second web process starting now must leave the live trainer alone.
    assert make_runner().recover() == []
    asked = runner.cancel(run["id"], user="admin")
    assert asked["cancel_requested"] == 1
    final = wait_for(lambda: (r := store.get_run(run["id"]))["status"] in TERMINAL and r, timeout=60,
                     what="the cancel")
    # The trainer itself recorded the stop (after its batch, with last.pt saved), not the runner's reaper.
    assert final["status"] == "cancelled" and "last.pt holds the model" in final["error"], final["error"]
    assert (Path(final["run_dir"]) / "last.pt").is_file()
    assert final["epochs_done"] < 500
    wait_for(lambda: not pid_is_trainer(running["pid"]), timeout=30, what="the trainer to exit")
    with pytest.raises(ValueError, match="only queued, interrupted or running"):
        runner.cancel(run["id"])


@pytest.mark.slow
def test_cancel_kills_a_trainer_that_does_not_stop_within_the_timeout(registry, store, make_runner):
    run = new_run(store, registry, train={"epochs": 500})
    runner = make_runner(cancel_timeout=0)  # no grace at all: SIGKILL follows SIGTERM at once
    runner.submit(run["id"])
    running = wait_until_training(store, run["id"])
    runner.cancel(run["id"])
    final = wait_for(lambda: (r := store.get_run(run["id"]))["status"] in TERMINAL and r, timeout=60,
                     what="the forced cancel")
    assert not pid_is_trainer(running["pid"])
    # Killed before it could record anything: the runner's reaper recorded the cancel.
    assert final["status"] == "cancelled" and final["error"] == "cancelled (the trainer was stopped)"
    time.sleep(0.3)
    assert store.get_run(run["id"])["status"] == "cancelled"
