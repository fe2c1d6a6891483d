"""The trainer: trains one stored run to its end and records everything about it.

``python -m busi_web.training.trainer --db DB --runs-dir DIR --run-id N`` is
what the job runner starts (one process per run); ``busi-web train`` calls
:func:`run_training` in the foreground. Either way the run's row in the
store is the source of truth: status, live metrics, epochs done, the best
metric, the error of a failed run.

Stopping: SIGTERM (or ``should_stop()``, or the run's ``cancel_requested``
flag in the store) stops after the current batch, saves ``last.pt`` and
records the run as cancelled. Resuming: a run whose folder holds ``last.pt``
continues from the epoch after it, with the same split (see
:mod:`busi_web.training.resume`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from busi_web.errors import UserError
from busi_web.plugins import PluginRegistry, load_plugins
from busi_web.store import JobStore
from busi_web.store.db import private_dir
from busi_web.store.run_files import LOG_TXT
from busi_web.training.finish import after_run
from busi_web.training.loop import TrainingDiverged
from busi_web.training.run import StopRequested, TrainingRun
from busi_web.training.run_log import RunLog

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


def run_training(store: JobStore, run_id: int, registry: PluginRegistry, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train run ``run_id`` to its end and return the final run row.

    The run must be ``queued`` (this call moves it to ``running``, as the CLI
    needs) or already ``running`` (claimed by the job runner). Any error is
    stored as the run's ``error`` with the run marked ``failed``; it is not
    raised. ``progress`` receives ``{"type": "start"|"batch"|"epoch"|"status"|"log", ...}``
    events; ``should_stop()`` is asked after every batch.
    """
    run = store.get_run(run_id)
    if run["status"] == "queued":
        run = store.transition(run_id, "running", pid=os.getpid())
    elif run["status"] != "running":
        raise UserError(f"run {run_id} is {run['status']}; only a queued or running run can be trained "
                        "(resume an interrupted run first)", 409)
    run_dir = Path(run["run_dir"])
    private_dir(run_dir)
    echo = None if progress is None else (lambda line: progress({"type": "log", "line": line}))
    run_log = RunLog(run_dir / LOG_TXT, echo=echo)
    job = TrainingRun(store, run, registry, progress, should_stop, run_log)
    try:
        outcome, fields = job.execute()
    except (StopRequested, KeyboardInterrupt):
        job.save_last(partial=True)
        where = f"after epoch {job.epoch}" if job.epoch else "before the first epoch ended"
        outcome, fields = "cancelled", {"error": f"cancelled {where}; last.pt holds the model as it was"}
    except Exception as exc:
        outcome, fields = "failed", {"error": _failure_message(exc, job, run_log)}
    except BaseException:  # SystemExit and the like: record the run, then let it go on
        _finish(store, run_id, "failed", {"error": "the trainer process was stopped abruptly"}, run_log)
        raise
    _finish(store, run_id, outcome, fields, run_log)
    if outcome == "finished":
        after_run(store, registry, store.get_run(run_id), run_log)
    if progress is not None:
        progress({"type": "status", "status": outcome})
    return store.get_run(run_id)


def _failure_message(exc: Exception, job: Any, run_log: Callable[[str], None]) -> str:
    """The message stored on a failed run: what went wrong and what to do about it."""
    if _is_oom(exc):
        p = job.train or {}
        message = (f"out of memory on {job.device_name} with batch_size {p.get('batch_size')} and input_size "
                   f"{p.get('input_size')}: lower batch_size (or input_size) and start a new run")
    elif isinstance(exc, TrainingDiverged):
        message = f"{exc}; lower the learning rate (lr) and start a new run"
    elif isinstance(exc, UserError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    run_log(f"FAILED: {message}")
    # The traceback is for administrators: the trainer's stderr (trainer_stderr.txt), not the run's log that
    # every user can read.
    log.info("run failed:\n%s", traceback.format_exc().rstrip())
    return message


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _finish(store: JobStore, run_id: int, outcome: str, fields: dict[str, Any],
            run_log: Callable[[str], None]) -> None:
    try:
        store.transition(run_id, outcome, **fields)
    except UserError as exc:  # e.g. the runner already marked it: keep its verdict
        run_log(f"could not record the run as {outcome}: {exc}")
        return
    run_log(f"run {outcome}" + (f": {fields['error']}" if fields.get("error") else ""))


class ClaimCheck:
    """Whether a worker's trainer still holds its run: asked after every batch, read from the store at most every
    :attr:`every_s` seconds. A trainer whose claim was taken back (its worker stopped beating and another worker
    took the run) exits at once and writes nothing more: not ``last.pt``, not the run's state, which belong to
    the trainer that resumed it."""

    every_s = 5.0
    EXIT_LOST = 75

    def __init__(self, store: JobStore, run_id: int, worker: str):
        self.store, self.run_id, self.worker = store, run_id, worker
        self._checked = time.monotonic()

    def lost(self) -> bool:
        if time.monotonic() - self._checked >= self.every_s:
            self._checked = time.monotonic()
            run = self.store.get_run(self.run_id)
            if run["status"] != "running" or run.get("worker") != self.worker:
                log.warning("run %s is no longer held by worker %s (%s, held by %s): exiting without writing",
                            self.run_id, self.worker, run["status"], run.get("worker"))
                logging.shutdown()
                os._exit(self.EXIT_LOST)
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trainer process; returns 0 when the run finished or was cancelled, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m busi_web.training.trainer", description="Train one stored run.")
    parser.add_argument("--db", required=True, help="the job store: a SQLite file or a postgresql:// URL")
    parser.add_argument("--runs-dir", required=True, help="the folder holding the run folders")
    parser.add_argument("--run-id", required=True, type=int)
    parser.add_argument("--worker", default=None,
                        help="the trainer worker holding the run: stop when the claim is no longer this worker's")
    parser.add_argument("--allowed-plugins", default=None,
                        help="comma-separated plugin names to load (the ALLOWED_PLUGINS setting); default: all")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True
        log.warning("signal %s: stopping after the current batch", signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    allowed = None if args.allowed_plugins is None else [a for a in args.allowed_plugins.split(",") if a]
    registry = load_plugins(allowed)
    store = JobStore(args.db, args.runs_dir)
    claim = None if args.worker is None else ClaimCheck(store, args.run_id, args.worker)
    try:
        final = run_training(store, args.run_id, registry,
                             should_stop=lambda: stop["flag"] or (claim is not None and claim.lost()))
    except UserError as exc:  # not a trainable run: nothing was changed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if final["status"] in ("finished", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
