"""Job runner: one trainer subprocess at a time on the web host, cancel, recovery and resume.

The store is the source of truth: a run is claimed (queued -> running)
in the store before its process starts, the trainer process records its own
progress and final state, and this runner only launches, signals and reaps.
A trainer that dies without recording an outcome (a crash, ``kill -9``, the
OOM killer) leaves its run ``interrupted``, whether this runner started it
(seen when it is reaped) or not (a trainer of an earlier server or of the
command line: :meth:`JobRunner.recover` finds it, at start and on every
turn of the loop). Interrupted and cancelled runs resume from ``last.pt``.

With ``TRAINERS=remote`` the web host trains nothing: trainer workers on
other hosts (``busi-web worker``, :mod:`busi_web.training.worker`) claim the
queued runs, and this runner only queues, cancels (through the store: the
run's trainer sees ``cancel_requested``) and resumes. A run a worker holds is
never judged here by its pid, which lives on another host: its worker's
heartbeats say whether it is alive.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from busi_web.store import RESUMABLE, IllegalTransition, JobStore
from busi_web.training.launch import INTERRUPTED, TRAINER_MODULE, launch, settle, signal_group

log = logging.getLogger(__name__)


def pid_is_trainer(pid: int | None) -> bool:
    """True when ``pid`` is a live trainer process (not a recycled pid of something else)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal check
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie has finished
        return False
    if TRAINER_MODULE in args:
        return True
    # `busi-web train` / `busi-web resume` (or the flask CLI) train in the foreground of their own process.
    cli = any(Path(a).name in ("busi-web", "flask") for a in args)
    return cli and any(a in ("train", "resume") for a in args)


class JobRunner:
    """Launches queued runs as trainer subprocesses, one at a time, in submission order."""

    def __init__(self, store: JobStore, *, cancel_timeout: float = 30.0, poll_seconds: float = 1.0,
                 env: dict[str, str] | None = None, allowed_plugins: list[str] | None = None, local: bool = True):
        self.store = store
        self.local = local  # False (TRAINERS=remote): workers on other hosts train; this host starts nothing
        self.allowed_plugins = allowed_plugins  # passed on to the trainer processes (ALLOWED_PLUGINS)
        self.cancel_timeout = cancel_timeout
        self.poll_seconds = poll_seconds
        self.env = env
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- public API --------------------------------------------------------
    def submit(self, run_id: int) -> None:
        """A queued run exists in the store: make sure the runner will start it (or, remote, a worker will)."""
        self.ensure_started()
        self._wake.set()

    def ensure_started(self) -> None:
        if not self.local:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="busi-job-runner", daemon=True)
                self._thread.start()

    def cancel(self, run_id: int, user: str | None = None) -> dict[str, Any]:
        """Queued: cancelled at once. Running: SIGTERM (stop after the batch), then SIGKILL after a timeout."""
        run = self.store.get_run(run_id)
        if run["status"] in ("queued", "interrupted"):
            return self.store.transition(run_id, "cancelled", error="cancelled before it ran"
                                         if run["status"] == "queued" else run.get("error"))
        if run["status"] != "running":
            raise IllegalTransition(f"run {run_id} is {run['status']}; only queued, interrupted or running runs can be "
                             "cancelled")
        self.store.update_run(run_id, cancel_requested=1)
        if run.get("worker"):  # held by a worker on some host: its trainer sees the flag, its worker stops it
            return self.store.get_run(run_id)
        pid = run.get("pid")
        if pid and pid_is_trainer(pid):
            signal_group(pid, signal.SIGTERM)
            threading.Thread(target=self._force_kill_later, args=(run_id, pid), daemon=True,
                             name=f"busi-cancel-{run_id}").start()
        else:
            self.store.transition(run_id, "cancelled", error="cancelled; its trainer process was already gone")
        return self.store.get_run(run_id)

    def resume(self, run_id: int) -> dict[str, Any]:
        """Put an interrupted or cancelled run back in the queue; the trainer continues from ``last.pt``."""
        run = self.store.get_run(run_id)
        if run["status"] not in RESUMABLE:
            raise IllegalTransition(f"run {run_id} is {run['status']}; only interrupted or cancelled runs can be "
                                    "resumed (start a new run instead)")
        run = self.store.transition(run_id, "queued", error=None, pid=None, cancel_requested=0)
        self.submit(run_id)
        return run

    def recover(self, *, launched_only: bool = False) -> list[int]:
        """Mark runs recorded as running whose trainer process is gone as interrupted.

        ``launched_only`` skips runs without a pid (claimed, their process about to start): the loop's
        periodic check must not race another process's launch; the check at start takes them too.
        """
        lost = []
        for run in self.store.list_runs(status="running"):
            if run.get("worker"):  # a worker's: its heartbeats tell (busi_web.training.worker)
                continue
            if run["id"] in self._procs or pid_is_trainer(run.get("pid")) or (launched_only and not run.get("pid")):
                continue
            try:
                self.store.transition(run["id"], "interrupted", error=INTERRUPTED)
                lost.append(run["id"])
            except IllegalTransition:  # it finished between our read and write
                continue
        if lost:
            log.warning("runs %s were interrupted", lost)
        return lost

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- internals ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._reap()
                self.recover(launched_only=True)
                if not self._procs:
                    self._start_next()
            except Exception:  # never let the runner thread die
                log.exception("job runner iteration failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _start_next(self) -> None:
        if any(pid_is_trainer(r.get("pid")) for r in self.store.list_runs(status="running") if not r.get("worker")):
            return  # a trainer started elsewhere on this host (another web process) holds the device
        run = self.store.claim_next(pid=None)
        if run is None:
            return
        try:
            proc = launch(self.store, run, allowed_plugins=self.allowed_plugins, env=self.env)
        except OSError as exc:
            self.store.transition(run["id"], "failed", error=f"could not start the trainer: {exc}")
            return
        self._procs[run["id"]] = proc
        self.store.update_run(run["id"], pid=proc.pid)
        log.info("run %s started as pid %s", run["id"], proc.pid)

    def _reap(self) -> None:
        for run_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._procs[run_id]
            settle(self.store, run_id, code)

    def _force_kill_later(self, run_id: int, pid: int) -> None:
        deadline = time.monotonic() + self.cancel_timeout
        while time.monotonic() < deadline:
            if not pid_is_trainer(pid):
                return
            time.sleep(0.2)
        log.warning("run %s ignored SIGTERM for %.0fs; killing it", run_id, self.cancel_timeout)
        signal_group(pid, signal.SIGKILL)
        self._wake.set()
