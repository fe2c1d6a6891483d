"""Starting a trainer process for a claimed run, and settling the run when the process is gone.

Both the web host's job runner (:mod:`busi_web.training.runner`) and a trainer
worker on another host (:mod:`busi_web.training.worker`) start trainers this
way: ``python -m busi_web.training.trainer`` in a session of its own (so that
a signal reaches its data-loader processes too), its stderr appended to the
run's admin-only ``trainer_stderr.txt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from busi_web.store import JobStore

log = logging.getLogger(__name__)

TRAINER_MODULE = "busi_web.training.trainer"
STDERR_TXT = "trainer_stderr.txt"
# The error of a run whose trainer died; its last output is in the admin-only trainer_stderr.txt.
INTERRUPTED = ("the trainer process stopped unexpectedly; resume continues from the last saved epoch (an "
               "administrator finds its last output in trainer_stderr.txt)")
PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def launch(store: JobStore, run: Mapping[str, Any], *, allowed_plugins: list[str] | None = None,
           env: Mapping[str, str] | None = None, worker: str | None = None) -> subprocess.Popen:
    """Start the trainer of the claimed run ``run``. With ``worker`` the trainer holds the run for that worker
    (it stops when the claim is taken from it) and dies with the worker process (Linux's parent-death signal),
    so a worker killed with ``kill -9`` leaves no trainer behind to race the one that resumes its run. Raises
    ``OSError`` when the process cannot be started."""
    cmd = [sys.executable, "-m", TRAINER_MODULE, "--db", store.url, "--runs-dir", str(store.runs_dir),
           "--run-id", str(run["id"])]
    if allowed_plugins is not None:
        cmd += ["--allowed-plugins", ",".join(allowed_plugins)]
    if worker is not None:
        cmd += ["--worker", worker]
    log_path = Path(run["run_dir"]) / STDERR_TXT
    # 0600: the trainer's output can hold server paths and tracebacks; only the server's user reads it.
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as err:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, env=None if env is None else dict(env),
                                preexec_fn=_die_with_parent if worker is not None else None)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl(
            PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the trainer's own claim check stops it instead
        pass


def settle(store: JobStore, run_id: int, code: int) -> str | None:
    """The trainer of ``run_id`` exited with ``code``. A trainer that died without recording an outcome (a
    crash, the OOM killer, SIGKILL) leaves its run running in the store: it becomes cancelled when a cancel
    was asked for, else interrupted (resumable). Returns the state it was given, or ``None`` when the trainer
    had recorded one."""
    run = store.get_run(run_id)
    if run["status"] != "running":
        return None
    if run.get("cancel_requested"):
        store.transition(run_id, "cancelled", error="cancelled (the trainer was stopped)")
        return "cancelled"
    log.warning("run %s: the trainer died (%s); the run is interrupted", run_id, exit_reason(code))
    store.transition(run_id, "interrupted", error=f"{INTERRUPTED} ({exit_reason(code)})")
    return "interrupted"


def signal_group(pid: int, sig: int) -> None:
    """Signal the trainer and its data-loader workers: its whole process group when it leads one (trainers are
    started in their own session), else only the process (a `busi-web train` shares its shell's group)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_reason(code: int) -> str:
    """A trainer's exit status in words: ``killed by SIGKILL`` or ``exit code 3``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
