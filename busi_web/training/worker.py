"""``busi-web worker``: a trainer worker on any host that reaches the store's database and the run folders.

A worker claims queued runs from the store, one at a time per slot (one slot,
or one per GPU with ``--gpus``), and trains each in a trainer process of its
own (:mod:`busi_web.training.launch`). The claim is a write transaction on the
database (PostgreSQL: the store's advisory lock plus ``SELECT ... FOR UPDATE
SKIP LOCKED``), so two workers never claim one run; no queue library is
needed beside the database every host already shares.

While it trains, the worker beats: every ``heartbeat_s`` it stamps its runs
and its own row with the database's clock. A run whose worker stopped beating
for ``stale_s`` (its host died, it was killed with ``kill -9``) is taken back
by any other worker: marked interrupted, and queued again, so that the next
claim resumes it from ``last.pt``. A run taken back :data:`MAX_LOST` times is
left interrupted for an administrator (something kills every worker that
trains it). A trainer dies with its worker (Linux's parent-death signal), and
a trainer whose claim was taken back exits without writing.

Cancelling: the web host sets the run's ``cancel_requested``; the trainer
sees it after its batch, and the worker stops a trainer that has not stopped
within ``cancel_timeout``. A worker stopped with SIGTERM or Ctrl-C asks its
trainers to stop (they save ``last.pt``) and queues their runs again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from busi_web.errors import UserError
from busi_web.store import IllegalTransition, JobStore
from busi_web.store.workers import LOST
from busi_web.training.launch import launch, settle, signal_group

log = logging.getLogger(__name__)

MAX_LOST = 3


@dataclass
class Slot:
    """One place a run trains: a GPU (``CUDA_VISIBLE_DEVICES``), or ``None`` for whatever the host has."""

    gpu: str | None = None
    run_id: int | None = None
    proc: subprocess.Popen | None = None
    cancel_sent: float | None = None


def worker_name(given: str | None = None) -> str:
    """A worker's name: ``given``, else ``<host>-<pid>``."""
    return given or f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Claims, trains, beats and takes back stale runs until :meth:`stop`."""

    def __init__(self, store: JobStore, *, name: str | None = None, gpus: Sequence[str] = (),
                 allowed_plugins: list[str] | None = None, heartbeat_s: float = 5.0, stale_s: float = 30.0,
                 cancel_timeout: float = 30.0, env: Mapping[str, str] | None = None):
        if heartbeat_s <= 0 or stale_s <= 2 * heartbeat_s:
            raise UserError(f"WORKER_STALE_SECONDS ({stale_s:g}) must be more than twice WORKER_HEARTBEAT_SECONDS "
                            f"({heartbeat_s:g}, above 0): a worker that is only slow must not lose its runs", 400)
        self.store = store
        self.name = worker_name(name)
        self.slots = [Slot(gpu=g) for g in gpus] or [Slot()]
        self.allowed_plugins = allowed_plugins
        self.heartbeat_s, self.stale_s, self.cancel_timeout = heartbeat_s, stale_s, cancel_timeout
        self.env = dict(os.environ if env is None else env)
        self._stop = threading.Event()

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Work until :meth:`stop` (or SIGTERM/SIGINT through :func:`serve`)."""
        self.store.register_worker(self.name, host=socket.gethostname(), pid=os.getpid(), slots=len(self.slots))
        log.info("worker %s: %d slot(s)%s", self.name, len(self.slots),
                 "" if self.slots[0].gpu is None else f" on GPUs {', '.join(s.gpu for s in self.slots)}")
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # a database that is briefly away must not end the worker
                    log.exception("worker %s: this turn failed; trying again", self.name)
                self._stop.wait(self.heartbeat_s)
        finally:
            self._hand_back()
            self.store.stop_worker(self.name)

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """One turn: beat, reap finished trainers, pass on cancels, take back stale runs, claim new ones."""
        busy = [s for s in self.slots if s.run_id is not None]
        held = set(self.store.beat(self.name, [s.run_id for s in busy]))
        for slot in busy:
            self._follow(slot, slot.run_id in held)
        self._take_back_stale()
        for slot in self.slots:
            if slot.run_id is None and not self._stop.is_set() and not self._claim(slot):
                break

    # -- one slot ----------------------------------------------------------------------------------------
    def _claim(self, slot: Slot) -> bool:
        run = self.store.claim_next(worker=self.name, now=self.store.clock())
        if run is None:
            return False
        env = dict(self.env)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        try:
            proc = launch(self.store, run, allowed_plugins=self.allowed_plugins, env=env, worker=self.name)
        except OSError as exc:
            self.store.transition(run["id"], "failed", error=f"worker {self.name} could not start the trainer: "
                                                             f"{exc}")
            return True
        slot.run_id, slot.proc, slot.cancel_sent = run["id"], proc, None
        self.store.update_run(run["id"], pid=proc.pid)
        self.store.audit("run.claim", run_id=run["id"], worker=self.name, gpu=slot.gpu)
        log.info("worker %s: run %s started as pid %s", self.name, run["id"], proc.pid)
        return True

    def _follow(self, slot: Slot, still_held: bool) -> None:
        assert slot.proc is not None and slot.run_id is not None
        code = slot.proc.poll()
        if code is not None:
            if still_held or self.store.get_run(slot.run_id).get("worker") == self.name:
                settle(self.store, slot.run_id, code)
            slot.run_id, slot.proc = None, None
            return
        run = self.store.get_run(slot.run_id)
        if not still_held and run["status"] == "running":  # another worker took it back: this trainer must go
            log.warning("worker %s: run %s was taken back; stopping its trainer", self.name, slot.run_id)
            signal_group(slot.proc.pid, signal.SIGKILL)
            return
        if run.get("cancel_requested"):
            if slot.cancel_sent is None:
                slot.cancel_sent = time.monotonic()
                signal_group(slot.proc.pid, signal.SIGTERM)
            elif time.monotonic() - slot.cancel_sent > self.cancel_timeout:
                log.warning("run %s ignored SIGTERM for %.0fs; killing it", slot.run_id, self.cancel_timeout)
                signal_group(slot.proc.pid, signal.SIGKILL)

    # -- other workers' runs -------------------------------------------------------------------------------
    def _take_back_stale(self) -> None:
        for run in self.store.stale_runs(self.stale_s):
            if run.get("worker") == self.name:
                continue  # this worker's own runs are beaten for above
            age = self.store.clock() - float(run.get("heartbeat_at") or 0)
            try:
                self.store.transition(run["id"], "interrupted", error=(
                    f"worker {run['worker']} stopped answering ({age:.0f} s without a heartbeat); "
                    f"worker {self.name} took the run back"))
            except IllegalTransition:  # another worker was quicker, or it ended meanwhile
                continue
            self.store.audit(LOST, run_id=run["id"], worker=run["worker"], by=self.name)
            if self.store.times_lost(run["id"]) >= MAX_LOST:
                log.warning("run %s lost its worker %d times; left interrupted", run["id"], MAX_LOST)
                continue
            self.store.transition(run["id"], "queued", error=None, pid=None, cancel_requested=0)
            log.warning("worker %s: run %s of %s (silent %.0f s) is queued again, to resume from last.pt",
                        self.name, run["id"], run["worker"], age)

    def _hand_back(self) -> None:
        """Stopping: ask each trainer to stop (it saves ``last.pt`` and records the run cancelled), then queue
        the runs again for another worker, unless a user cancelled them."""
        busy = [s for s in self.slots if s.proc is not None]
        for slot in busy:
            signal_group(slot.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_timeout
        for slot in busy:
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(slot.proc.pid, signal.SIGKILL)
                slot.proc.wait()
            settle(self.store, slot.run_id, slot.proc.returncode)
            run = self.store.get_run(slot.run_id)
            if run["status"] in ("cancelled", "interrupted") and not run.get("cancel_requested"):
                self.store.transition(slot.run_id, "queued", error=None, pid=None, cancel_requested=0)
                log.info("worker %s stopping: run %s queued again", self.name, slot.run_id)


def serve(worker: Worker) -> None:
    """Run ``worker`` in the foreground until SIGTERM or SIGINT."""
    def on_signal(signum: int, _frame: object) -> None:
        log.info("worker %s: signal %s, stopping", worker.name, signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
