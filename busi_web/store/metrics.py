"""Metric rows of runs: appended by the trainer, read by the pages and the live channel through a cursor."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select

from busi_web.store.db import StoreBase
from busi_web.store.tables import metrics


class MetricsMixin(StoreBase):
    """Appending and reading metric rows."""

    def add_metrics(self, run_id: int, rows: Iterable[dict[str, Any]]) -> int:
        """Append metric rows ``{epoch, step, key, value[, time]}``; returns the newest row id."""
        now = time.time()
        records = [{"run_id": int(run_id), "epoch": int(r.get("epoch", 0)), "step": int(r.get("step", 0)),
                    "key": str(r["key"]), "value": float(r["value"]), "time": float(r.get("time", now))}
                   for r in rows]
        if not records:
            return self.latest_metric_id(run_id)
        # A write transaction: ids are handed out in commit order, so a reader's cursor (id > last seen) never
        # skips a row that commits later with a smaller id.
        with self.transaction() as conn:
            conn.execute(metrics.insert(), records)
            return int(conn.execute(select(func.max(metrics.c.id)).where(metrics.c.run_id == int(run_id))).scalar())

    def metrics(self, run_id: int, after_id: int = 0, keys: Iterable[str] | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run in insertion order, those with id > ``after_id`` (the live cursor)."""
        c = metrics.c
        query = (select(c.id, c.epoch, c.step, c.key, c.value, c.time)
                 .where(c.run_id == int(run_id), c.id > int(after_id or 0)).order_by(c.id))
        if keys is not None:
            query = query.where(c.key.in_(list(keys)))
        if limit is not None:
            query = query.limit(int(limit))
        return self._rows(query)

    def latest_metric_id(self, run_id: int) -> int:
        return int(self._scalar(select(func.max(metrics.c.id)).where(metrics.c.run_id == int(run_id))) or 0)

    def delete_metrics(self, run_id: int, from_epoch: int) -> int:
        """Drop rows of epochs >= ``from_epoch`` (a resumed run redoes them); returns how many went."""
        with self.transaction() as conn:
            return conn.execute(delete(metrics).where(metrics.c.run_id == int(run_id),
                                                      metrics.c.epoch >= int(from_epoch))).rowcount
