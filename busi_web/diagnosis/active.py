"""Which checkpoint serves predictions: the default model of a modality, or a chosen run's best model.

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


def serving_modality(store: JobStore, modality: str | None, preferred: str = "ultrasound") -> str:
    """The modality a request is served for: the one asked for, else ``preferred`` when it has a default,
    else the only modality that has one. Raises :class:`NoModel` with the fix when that cannot be decided."""
    if modality:
        return modality
    defaults = store.list_defaults()
    names = [d["modality"] for d in defaults]
    if preferred in names or not names:
        return preferred
    if len(names) == 1:
        return names[0]
    raise NoModel(f"several modalities have a default model ({', '.join(names)}); say which one (modality)")


def serving_run(store: JobStore, run_id: int | None = None, modality: str | None = None) -> int:
    """The run whose model answers: ``run_id`` when chosen, else ``modality``'s default. Raises
    :class:`NoModel` with the fix when there is none."""
    if run_id is not None:
        return int(store.get_run(run_id)["id"])
    modality = serving_modality(store, modality)
    default = store.default_model(modality)
    if default is None:
        raise NoModel(f"there is no default {modality} model yet: an admin sets one on the Models page (or "
                      "`busi-web models set-default`), after training one (Train page or `busi-web train`)")
    return int(default["run_id"])


def checkpoint_for(store: JobStore, run_id: int | None = None, modality: str | None = None) -> str:
    """The checkpoint of run ``run_id``, or of ``modality``'s default; raises :class:`NoModel` with the fix."""
    chosen = run_id is not None
    run = store.get_run(serving_run(store, run_id, modality))
    path = Path(run["run_dir"]) / BEST_PT
    if not path.exists():
        if chosen:
            raise NoModel(f"run {run_id} ({run['status']}) has no {BEST_PT}; pick a finished run")
        raise NoModel(f"the default {run.get('modality')} model's checkpoint {path} is missing; set another default")
    return str(path)
