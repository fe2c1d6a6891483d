"""Active models: which finished run's checkpoint serves each dataset, and promotion (atomic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from busi_web.store.db import utc_now
from busi_web.store.run_files import BEST_PT
from busi_web.store.runs import IllegalTransition, RunsMixin


class ModelsMixin(RunsMixin):
    """Setting, reading and promoting active models."""

    def set_active_model(self, run_id: int, dataset: str | None = None, by: str | None = None) -> dict[str, Any]:
        """Make a finished run's best checkpoint the active model of its dataset (what the Predictor serves)."""
        with self.transaction():
            run = self.get_run(run_id)
            if run["status"] != "finished":
                raise IllegalTransition(f"run {run_id} is {run['status']}; only a finished run can be promoted")
            checkpoint = Path(run["run_dir"]) / BEST_PT
            if not checkpoint.exists():
                raise IllegalTransition(f"run {run_id} has no checkpoint at {checkpoint}; it cannot be promoted")
            dataset = dataset or run["dataset"]
            # Replace (delete + insert), not upsert: the new row gets the highest rowid, which breaks the tie when
            # two datasets' models are activated within the same second (active_model() with no dataset).
            self.db["models"].insert({"dataset": dataset, "run_id": int(run_id), "checkpoint": str(checkpoint),
                                      "activated_at": utc_now(), "activated_by": by}, pk="dataset", replace=True)
            self.audit("model.promote", user=by, run_id=int(run_id), dataset=dataset)
        return self.active_model(dataset)

    def promote_if_better(self, run_id: int, by: str = "auto") -> bool:
        """Promote a finished run when its test macro-F1 beats the active model of its dataset (or there is none).

        Read and write happen in one immediate transaction, so two trainers finishing at once cannot both win.
        """
        with self.transaction():
            run = self.get_run(run_id)
            mine = run.get("test_macro_f1")
            active = self.active_model(run["dataset"])
            if mine is None or (active is not None and active["run_id"] == int(run_id)):
                return False
            theirs = None if active is None else self.get_run(active["run_id"]).get("test_macro_f1")
            if theirs is not None and mine <= theirs:
                return False
            self.set_active_model(run_id, by=by)
            return True

    def active_model(self, dataset: str | None = None) -> dict[str, Any] | None:
        """The active model of ``dataset``, or the most recently activated one when no dataset is given."""
        if dataset is None:
            rows = self._rows("SELECT * FROM models ORDER BY activated_at DESC, rowid DESC LIMIT 1", [])
        else:
            rows = self._rows("SELECT * FROM models WHERE dataset = ?", [dataset])
        return dict(rows[0]) if rows else None

    def list_models(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows("SELECT * FROM models ORDER BY dataset", [])]
