"""External validations: a model scored on data it never trained on, kept as a record.

A hospital validates a model on its own images before trusting it. Such an
evaluation (``busi-web evaluate`` on a dataset or folder the run did not
train on) is recorded with the site, its devices, the image count, the
per-site results, the date and who ran it. It is kept with the model and
shown on its card and the Models page; an administrator can make the same
data the modality's acceptance set.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from busi_web.store.audit import AuditMixin
from busi_web.store.db import utc_now
from busi_web.store.tables import validations


class ValidationsMixin(AuditMixin):
    """Recording and listing external validations."""

    def add_validation(self, run_id: int, *, dataset: str, data_dir: str | None, dataset_params: dict[str, Any],
                       sites: dict[str, Any], n: int, report: str | None, by: str | None) -> dict[str, Any]:
        """Record that run ``run_id``'s model was scored on ``dataset`` (from ``data_dir``): ``sites`` is the
        per-site result (:func:`busi_web.evaluation.sites.per_site`), ``report`` the report's folder name."""
        with self.transaction() as conn:
            vid = conn.execute(validations.insert().values(
                run_id=int(run_id), dataset=dataset, data_dir=data_dir,
                dataset_params=json.dumps(dataset_params or {}, sort_keys=True), sites=json.dumps(sorted(sites)),
                n=int(n), metrics=json.dumps(sites, sort_keys=True), report=report, created_at=utc_now(),
                created_by=by).returning(validations.c.id)).scalar_one()
            self.audit("model.validate", user=by, run_id=int(run_id), validation_id=vid, dataset=dataset, n=int(n))
        found = self.validation(vid)
        assert found is not None
        return found

    def validation(self, validation_id: int) -> dict[str, Any] | None:
        rows = self._rows(select(validations).where(validations.c.id == int(validation_id)))
        return self._decode_validation(rows[0]) if rows else None

    def validations(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """External validations, newest first (of one run, or all)."""
        query = select(validations).order_by(validations.c.id.desc())
        if run_id is not None:
            query = query.where(validations.c.run_id == int(run_id))
        return [self._decode_validation(r) for r in self._rows(query)]

    @staticmethod
    def _decode_validation(row: Any) -> dict[str, Any]:
        out = dict(row)
        for key in ("dataset_params", "sites", "metrics"):
            out[key] = json.loads(out[key] or "null")
        return out
