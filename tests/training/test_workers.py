"""Trainer workers on other hosts: the web server (TRAINERS=remote) and two ``busi-web worker`` processes, each a
process tree of its own with its own working folder, sharing only PostgreSQL, Redis and the run folders' path.

One worker is killed with ``kill -9`` in the middle of a run; the other takes the run back when its heartbeats
stop, and resumes it from ``last.pt`` to the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busi_web.store import JobStore
from tests.helpers import wait_for
from tests.servers import redis_server, served, stop

pytestmark = pytest.mark.slow

EPOCHS = 25
TRAIN = {"epochs": EPOCHS, "batch_size": 8, "lr": 3e-3, "input_size": 64, "resize": 72, "device": "cpu",
         "workers": 0, "patience": 0, "seed": 3}


def start_worker(home: Path, name: str, shared: dict[str, str]) -> subprocess.Popen:
    """``busi-web worker`` in a folder of its own (its own instance folder, its own cwd)."""
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update(shared, BUSI_WEB_INSTANCE_PATH=str(home / "instance"), OMP_NUM_THREADS="1",
               BUSI_WEB_WORKER_HEARTBEAT_SECONDS="1", BUSI_WEB_WORKER_STALE_SECONDS="4")
    out = open(home / "worker.log", "wb")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen([str(Path(sys.executable).with_name("busi-web")), "worker", "--name", name], cwd=home,
                            env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_killed_workers_run_is_resumed_by_another_worker_and_finishes(tmp_path, pg_cluster):
    url = pg_cluster.new_database()
    shared_runs = tmp_path / "shared-runs"  # the one path every host sees (NFS in a hospital)
    with redis_server(tmp_path / "redis") as redis:
        shared = {"BUSI_WEB_DATABASE_URL": url, "BUSI_WEB_RUNS_DIR": str(shared_runs), "BUSI_WEB_REDIS_URL": redis.url}
        with served(tmp_path / "web", env={**shared, "BUSI_WEB_TRAINERS": "remote"}) as web:
            run = web.api("/api/runs", {"backbone": "tiny_cnn", "dataset": "phantom", "name": "across hosts",
                                        "dataset_params": {"size": 72, "per_class": 60, "seed": 1}, "train": TRAIN})
            run_id = run["id"]
            time.sleep(1.5)
            assert web.api(f"/api/runs/{run_id}")["status"] == "queued"  # the web host trains nothing
            first = start_worker(tmp_path / "host-a", "worker-a", shared)
            second = None
            try:
                store = JobStore(url, tmp_path / "reader-runs")  # a reader on yet another "host"
                wait_for(lambda: store.get_run(run_id)["worker"] == "worker-a", timeout=120,
                         what="worker-a to claim the run")
                second = start_worker(tmp_path / "host-b", "worker-b", shared)
                wait_for(lambda: any(w["name"] == "worker-b" for w in store.list_workers()), timeout=60,
                         what="worker-b to register")

                def trained_two_epochs():
                    r = web.api(f"/api/runs/{run_id}")
                    assert r["status"] == "running", r
                    folder = shared_runs / Path(store.get_run(run_id)["run_dir"]).name
                    return r if r["epochs_done"] >= 2 and (folder / "last.pt").exists() else None

                wait_for(trained_two_epochs, timeout=240, what="worker-a to train two epochs", interval=0.2)
                held = store.get_run(run_id)
                assert held["worker"] == "worker-a" and held["status"] == "running"
                # Its metrics reach the web host live, through the shared store.
                live = web.api(f"/api/runs/{run_id}/metrics")
                assert any(r["key"] == "val_loss" for r in live["rows"])
                first.send_signal(signal.SIGKILL)  # the worker and, with it, its trainer
                first.wait(30)
                done = wait_for(lambda: (lambda r: r if r["status"] in ("finished", "failed") else None)(
                    web.api(f"/api/runs/{run_id}")), timeout=300, what="worker-b to finish the run", interval=0.5)
            finally:
                for proc in (first, second):
                    if proc is not None and proc.poll() is None:
                        stop(proc)
            log_b = (tmp_path / "host-b" / "worker.log").read_text()
            assert done["status"] == "finished", (done["error"], log_b[-3000:])
            assert done["epochs_done"] == EPOCHS
            audit = web.api("/api/audit?action=run.worker_lost")["rows"]
            assert [(a["run_id"], a["detail"]["worker"], a["detail"]["by"]) for a in audit] == [
                (run_id, "worker-a", "worker-b")]
            claims = [a["detail"]["worker"] for a in web.api("/api/audit?action=run.claim")["rows"]]
            assert sorted(claims) == ["worker-a", "worker-b"]
            folder = shared_runs / Path(store.get_run(run_id)["run_dir"]).name
            log = (folder / "training_log.txt").read_text()
            assert "resum" in log.lower(), log[-2000:]
            # Every epoch once in the metrics: the resumed trainer redid what the killed one had not saved.
            epochs = sorted({r["epoch"] for r in store.metrics(run_id) if r["key"] == "val_loss"})
            assert epochs == list(range(1, EPOCHS + 1))
            assert [r for r in store.metrics(run_id) if r["key"] == "val_loss"].__len__() == EPOCHS
            assert json.loads((folder / "metrics.json").read_text())["classes"]
            # No trainer of worker-a outlived it.
            assert not [w for w in store.list_workers() if w["name"] == "worker-b"]  # stopped cleanly: row gone


def _queued_run(store: JobStore, registry, epochs: int) -> int:
    from busi_web.training.params import prepare_run_params

    params = prepare_run_params(registry, "tiny_cnn", "phantom", train={**TRAIN, "epochs": epochs},
                                dataset_params={"size": 72, "per_class": 60, "seed": 1})
    return store.create_run("tiny_cnn", "phantom", params)["id"]


def test_a_cancel_reaches_a_workers_trainer_and_a_stopped_worker_hands_its_run_back(tmp_path, registry):
    from busi_web.training.runner import JobRunner

    instance = tmp_path / "web"
    store = JobStore(instance / "busi.db", instance / "runs")  # one host: SQLite serves a worker too
    shared = {"BUSI_WEB_DATABASE": str(instance / "busi.db"), "BUSI_WEB_RUNS_DIR": str(instance / "runs")}
    web_runner = JobRunner(store, local=False)  # what a web host with TRAINERS=remote does
    first = _queued_run(store, registry, 200)
    worker = start_worker(tmp_path / "host", "worker-c", shared)
    try:
        wait_for(lambda: store.get_run(first)["epochs_done"] >= 1, timeout=120, what="the worker to train")
        assert web_runner.cancel(first)["status"] == "running"  # asked: the worker's trainer stops it
        done = wait_for(lambda: (lambda r: r if r["status"] != "running" else None)(store.get_run(first)),
                        timeout=60, what="the cancel to reach the trainer")
        assert done["status"] == "cancelled" and done["worker"] is None
        second = _queued_run(store, registry, 200)
        wait_for(lambda: store.get_run(second)["epochs_done"] >= 1, timeout=120, what="the second run")
        worker.send_signal(signal.SIGTERM)  # the worker is stopped (a host going down for maintenance)
        assert worker.wait(90) == 0
    finally:
        if worker.poll() is None:
            stop(worker)
    back = store.get_run(second)
    assert back["status"] == "queued" and back["worker"] is None and not back["error"]  # for another worker
    assert (Path(back["run_dir"]) / "last.pt").exists()  # which resumes it from there
    assert store.list_workers() == []


def test_with_two_gpus_a_worker_trains_two_runs_at_once_each_on_its_own_device(tmp_path, registry):
    instance = tmp_path / "web"
    store = JobStore(instance / "busi.db", instance / "runs")
    shared = {"BUSI_WEB_DATABASE": str(instance / "busi.db"), "BUSI_WEB_RUNS_DIR": str(instance / "runs")}
    runs = [_queued_run(store, registry, 200) for _ in range(3)]
    home = tmp_path / "host"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update(shared, BUSI_WEB_INSTANCE_PATH=str(home / "instance"), OMP_NUM_THREADS="1",
               BUSI_WEB_WORKER_HEARTBEAT_SECONDS="1", BUSI_WEB_WORKER_STALE_SECONDS="4")
    with open(home / "worker.log", "wb") as out:
        worker = subprocess.Popen([str(Path(sys.executable).with_name("busi-web")), "worker", "--name", "gpu-host",
                                   "--gpus", "0,1"], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        both = wait_for(lambda: (lambda held: held if len(held) == 2 else None)(
            [r for r in store.list_runs(status="running") if r["worker"] == "gpu-host"]), timeout=120,
            what="two runs held at once")
        assert {r["id"] for r in both} == set(runs[:2]) and store.get_run(runs[2])["status"] == "queued"
        claims = wait_for(lambda: (lambda rows: rows if len(rows) == 2 else None)(store.audit_log("run.claim")),
                          timeout=30, what="both claims recorded")
        gpus = sorted(a["detail"]["gpu"] for a in claims)
        assert gpus == ["0", "1"]
        assert store.list_workers()[0]["slots"] == 2
    finally:
        stop(worker)
