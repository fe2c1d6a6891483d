"""Per-app services: the job runner and the live pusher, and what a serving process starts with."""

from __future__ import annotations

import logging

from flask import Flask

from .jobs import JobRunner

log = logging.getLogger(__name__)

# The small default run a newcomer gets on first start: learns the phantoms in a couple of minutes on 2 CPU cores.
FIRST_RUN = {
    "name": "first-start demo (phantom, tiny CNN)",
    "backbone": "tiny_cnn",
    "dataset": "phantom",
    "train": {"epochs": 8, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw", "input_size": 112, "resize": 128,
              "patience": 100},
    "backbone_params": {},
    "dataset_params": {"size": 128, "per_class": 60, "seed": 0},
}


def runner_of(app: Flask) -> JobRunner:
    runner = app.extensions.get("busi_runner")
    if runner is None:
        runner = app.extensions["busi_runner"] = JobRunner(
            app.extensions["busi_store"], cancel_timeout=float(app.config["CANCEL_TIMEOUT_SECONDS"]))
    return runner


def submit_run(app: Flask, backbone: str, dataset: str, *, train=None, backbone_params=None, dataset_params=None,
               data_dir: str | None = None, name: str | None = None, user: str | None = None) -> dict:
    """Validate everything, insert a queued run and hand it to the runner. Raises on bad input, storing nothing."""
    from .trainer import prepare_run_params

    registry = app.extensions["busi_plugins"]
    store = app.extensions["busi_store"]
    params = prepare_run_params(registry, backbone, dataset, train=train or {}, backbone_params=backbone_params or {},
                                dataset_params=dataset_params or {}, data_dir=data_dir)
    run = store.create_run(backbone, dataset, params, name=name, data_dir=data_dir)
    store.audit("run.start", user=user, run_id=run["id"], backbone=backbone, dataset=dataset)
    runner_of(app).submit(run["id"])
    return run


def start_services(app: Flask) -> None:
    """What a serving process (gunicorn via wsgi.py) does once at start."""
    store = app.extensions["busi_store"]
    runner = runner_of(app)
    runner.recover()
    if app.config["AUTO_FIRST_RUN"] and store.active_model() is None and not store.list_runs(limit=1):
        spec = dict(FIRST_RUN)
        try:
            run = submit_run(app, spec.pop("backbone"), spec.pop("dataset"), **spec)
            log.info("no model yet: started first-start run %s on the phantom dataset", run["id"])
        except Exception:
            log.exception("could not start the first-start run")
    runner.ensure_started()
