"""Against a real gunicorn: every trainer that dies is resumable, whoever started it, and so is a cancelled run.

The trainers are killed with SIGKILL (as the OOM killer does) while the server
runs; the run must become ``interrupted`` and resume from ``last.pt`` to
``finished``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser_steps import TINY_RUN
from tests.helpers import wait_for
from tests.servers import served

pytestmark = pytest.mark.slow

# Long enough to be killed after its first epoch, short enough for the suite.
SLOW_RUN = {**TINY_RUN, "name": "to be killed",
            "train": {**TINY_RUN["train"], "epochs": 4}, "dataset_params": {"size": 48, "per_class": 40, "seed": 2}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("served")) as srv:
        yield srv


def run_of(server, run_id: int) -> dict:
    return server.api(f"/api/runs/{run_id}")


def run_file(server, run_id: int, name: str) -> Path:
    """A file of the run's folder, found on disk (the API does not show server paths)."""
    folders = list((server.instance / "runs").glob(f"*_{run_id}"))
    return (folders[0] if folders else server.instance / "runs" / "not yet") / name


def wait_status(server, run_id: int, states: set[str], timeout: float = 180) -> dict:
    return wait_for(lambda: (r := run_of(server, run_id))["status"] in states and r, timeout=timeout,
                    what=f"run {run_id} to become {'/'.join(sorted(states))}", interval=0.2)


def kill_after_first_epoch(server, run_id: int) -> dict:
    """SIGKILL the run's trainer (and its process group) once it has saved an epoch."""
    run = wait_for(lambda: run_file(server, run_id, "last.pt").exists()
                   and (r := run_of(server, run_id))["status"] == "running" and r,
                   timeout=180, what="the first epoch's last.pt", interval=0.1)
    os.killpg(run["pid"], signal.SIGKILL)
    return run


def test_a_trainer_killed_while_the_server_runs_is_interrupted_and_resumes_to_finished(server):
    run_id = server.api("/api/runs", SLOW_RUN)["id"]
    killed = kill_after_first_epoch(server, run_id)
    run = wait_status(server, run_id, {"interrupted", "failed", "finished"}, timeout=30)
    assert run["status"] == "interrupted", run
    assert "killed by SIGKILL" in run["error"] and "resume continues from the last saved epoch" in run["error"]

    resumed = server.api(f"/api/runs/{run_id}/resume", {})
    assert resumed["status"] == "queued"
    final = wait_status(server, run_id, {"finished", "failed", "interrupted"})
    assert final["status"] == "finished", final
    assert final["epochs_done"] == 4 and final["pid"] != killed["pid"]
    log = run_file(server, run_id, "training_log.txt").read_text()
    assert "resuming after epoch" in log


def test_a_cancelled_run_resumes_from_its_last_epoch(server):
    run_id = server.api("/api/runs", SLOW_RUN)["id"]
    wait_for(lambda: run_file(server, run_id, "last.pt").exists(), timeout=180, what="the first epoch's last.pt",
             interval=0.1)
    server.api(f"/api/runs/{run_id}/cancel", {})
    cancelled = wait_status(server, run_id, {"cancelled", "finished", "failed"}, timeout=60)
    assert cancelled["status"] == "cancelled", cancelled
    server.api(f"/api/runs/{run_id}/resume", {})
    final = wait_status(server, run_id, {"finished", "failed", "interrupted", "cancelled"})
    assert final["status"] == "finished" and final["epochs_done"] == 4, final
    assert "resuming after epoch" in run_file(server, run_id, "training_log.txt").read_text()


def test_a_trainer_the_server_did_not_start_is_found_dead_and_resumed(server, tmp_path: Path):
    """A `busi-web train` in a terminal, killed: the serving process sees its run's pid gone and interrupts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update({"BUSI_WEB_INSTANCE_PATH": str(server.instance), "BUSI_WEB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    exe = Path(sys.executable).with_name("busi-web")
    before = {r["id"] for r in server.api("/api/runs")["runs"]}
    proc = subprocess.Popen([str(exe), "train", "--backbone", "tiny_cnn", "--dataset", "phantom", "--epochs", "4",
                             "--batch-size", "8", "--param", "input_size=32", "--param", "resize=36",
                             "--param", "workers=0", "--param", "size=48", "--param", "per_class=40",
                             "--name", "terminal run"], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = wait_for(lambda: {r["id"] for r in server.api("/api/runs")["runs"]} - before, timeout=60,
                          what="the terminal's run").pop()
        killed = kill_after_first_epoch(server, run_id)
        assert killed["pid"] == proc.pid
        proc.wait(30)
        run = wait_status(server, run_id, {"interrupted", "failed", "finished"}, timeout=30)
        assert run["status"] == "interrupted", run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    server.api(f"/api/runs/{run_id}/resume", {})
    final = wait_status(server, run_id, {"finished", "failed", "interrupted"})
    assert final["status"] == "finished" and final["epochs_done"] == 4, final
