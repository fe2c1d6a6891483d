"""The per-app services and how the web and the command line reach them.

:func:`make_services` builds, once per app, the objects a serving process
shares between its threads: the plugin registry, the store, the job runner
(trainer processes), the model cache and the micro-batcher. Nothing starts
here: threads and processes start on first use, or in :func:`start_services`,
which a serving process (``wsgi.py``) calls once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from busi_web.diagnosis.active import checkpoint_for
from busi_web.diagnosis.batching import MicroBatcher
from busi_web.diagnosis.cache import PredictorCache
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry
from busi_web.store import JobStore
from busi_web.training.params import prepare_run_params
from busi_web.training.runner import JobRunner

log = logging.getLogger(__name__)

EXTENSION = "busi_web"

# The small default run a newcomer gets on first start: learns the phantoms in a couple of minutes on 2 CPU cores.
FIRST_RUN: dict[str, Any] = {
    "name": "first-start demo (phantom, tiny CNN)",
    "backbone": "tiny_cnn",
    "dataset": "phantom",
    "train": {"epochs": 8, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw", "input_size": 112, "resize": 128,
              "patience": 100},
    "backbone_params": {},
    "dataset_params": {"size": 128, "per_class": 60, "seed": 0},
}


@dataclass
class Services:
    """What one app's requests and commands share (one per app, in ``app.extensions["busi_web"]``)."""

    registry: PluginRegistry
    store: JobStore
    runner: JobRunner
    predictors: PredictorCache
    batcher: MicroBatcher

    def predictor(self, run_id: int | None = None) -> Predictor:
        """The loaded model of run ``run_id``, or of the active model (reloaded when that changes)."""
        return self.predictors.get(checkpoint_for(self.store, run_id))

    def submit_run(self, backbone: str, dataset: str, *, train: Mapping[str, Any] | None = None,
                   backbone_params: Mapping[str, Any] | None = None,
                   dataset_params: Mapping[str, Any] | None = None, data_dir: str | None = None,
                   name: str | None = None, user: str | None = None) -> dict[str, Any]:
        """Validate everything, insert a queued run and hand it to the runner. Raises on bad input, storing
        nothing (see :func:`~busi_web.training.params.prepare_run_params`)."""
        params = prepare_run_params(self.registry, backbone, dataset, train=train or {},
                                    backbone_params=backbone_params or {}, dataset_params=dataset_params or {},
                                    data_dir=data_dir)
        run = self.store.create_run(backbone, dataset, params, name=name, data_dir=data_dir, created_by=user)
        self.store.audit("run.start", user=user, run_id=run["id"], backbone=backbone, dataset=dataset)
        self.runner.submit(run["id"])
        return run


def make_services(config: Mapping[str, Any], registry: PluginRegistry) -> Services:
    """Build the services of an app from its finished configuration (nothing is started)."""
    store = JobStore(config["DATABASE"], config["RUNS_DIR"])
    runner = JobRunner(store, cancel_timeout=float(config["CANCEL_TIMEOUT_SECONDS"]),
                       allowed_plugins=registry.allowed_list())
    return Services(registry=registry, store=store, runner=runner,
                    predictors=PredictorCache(registry, device=config["DEVICE"]), batcher=MicroBatcher())


def services_of(app: Flask | None = None) -> Services:
    """The services of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


def start_services(app: Flask) -> None:
    """What a serving process (gunicorn via wsgi.py) does once at start: recover runs whose trainer died with a
    previous server, start the first-start demo run when there is no model yet, and start the job runner."""
    services = services_of(app)
    services.runner.recover()
    if app.config["AUTO_FIRST_RUN"] and services.store.active_model() is None \
            and not services.store.list_runs(limit=1):
        spec = dict(FIRST_RUN)
        try:
            run = services.submit_run(spec.pop("backbone"), spec.pop("dataset"), **spec)
            log.info("no model yet: started first-start run %s on the phantom dataset", run["id"])
        except Exception:
            log.exception("could not start the first-start run")
    services.runner.ensure_started()
