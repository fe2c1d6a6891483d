"""Which checkpoint serves predictions: the active model in the store, or a chosen run's best model.

The store is asked on every request, and the predictor cache reloads when
the answer (path or file) changes: promoting a run takes effect on the next
request with no restart (hot reload).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from .predictor import Predictor, PredictorCache

BEST = "best_model.pt"


class NoModel(LookupError):
    """There is no model to predict with yet."""


def checkpoint_for(store, run_id: int | None = None, dataset: str | None = None) -> str:
    """The checkpoint of run ``run_id``, or of the active model; raises :class:`NoModel` with the fix."""
    if run_id is not None:
        run = store.get_run(run_id)
        path = Path(run["run_dir"]) / BEST
        if not path.exists():
            raise NoModel(f"run {run_id} ({run['status']}) has no {BEST}; pick a finished run")
        return str(path)
    active = store.active_model(dataset)
    if active is None:
        raise NoModel("there is no active model yet: train one (Train page or `busi-web train`) or promote a "
                      "finished run")
    path = Path(active.get("checkpoint") or Path(store.get_run(active["run_id"])["run_dir"]) / BEST)
    if not path.exists():
        raise NoModel(f"the active model's checkpoint {path} is missing; promote another run")
    return str(path)


def predictor_for(app: Flask, run_id: int | None = None) -> Predictor:
    """A cached predictor for the active model (or a run), reloaded when the active model changes."""
    cache = app.extensions.get("busi_predictors")
    if cache is None:
        cache = app.extensions.setdefault("busi_predictors",
                                          PredictorCache(registry=app.extensions["busi_plugins"],
                                                         device=app.config["DEVICE"]))
    return cache.get(checkpoint_for(app.extensions["busi_store"], run_id))
