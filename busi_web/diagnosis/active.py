"""Which checkpoint serves predictions: the active model in the store, or a chosen run's best model.

The store is asked on every request, and the model cache
(:class:`~busi_web.diagnosis.cache.PredictorCache`) reloads when the answer
(path or file) changes: promoting a run takes effect on the next request
with no restart (hot reload).
"""

from __future__ import annotations

from pathlib import Path

from busi_web.errors import UserError
from busi_web.store import JobStore
from busi_web.store.run_files import BEST_PT


class NoModel(UserError, LookupError):
    """There is no model to predict with yet (409)."""

    status = 409


def checkpoint_for(store: JobStore, run_id: int | None = None, dataset: str | None = None) -> str:
    """The checkpoint of run ``run_id``, or of the active model; raises :class:`NoModel` with the fix."""
    if run_id is not None:
        run = store.get_run(run_id)
        path = Path(run["run_dir"]) / BEST_PT
        if not path.exists():
            raise NoModel(f"run {run_id} ({run['status']}) has no {BEST_PT}; pick a finished run")
        return str(path)
    active = store.active_model(dataset)
    if active is None:
        raise NoModel("there is no active model yet: train one (Train page or `busi-web train`) or promote a "
                      "finished run")
    path = Path(active.get("checkpoint") or Path(store.get_run(active["run_id"])["run_dir"]) / BEST_PT)
    if not path.exists():
        raise NoModel(f"the active model's checkpoint {path} is missing; promote another run")
    return str(path)
