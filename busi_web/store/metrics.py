"""Metric rows of runs: appended by the trainer, read by the pages and the live channel through a cursor."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from busi_web.store.db import StoreBase


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
        with self.transaction() as db:
            db["metrics"].insert_all(records)
            return db.execute("SELECT max(id) FROM metrics WHERE run_id = ?", [int(run_id)]).fetchone()[0]

    def metrics(self, run_id: int, after_id: int = 0, keys: Iterable[str] | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run in insertion order, those with id > ``after_id`` (the live cursor)."""
        sql, args = "SELECT id, epoch, step, key, value, time FROM metrics WHERE run_id = ? AND id > ?", [
            int(run_id), int(after_id or 0)]
        if keys is not None:
            keys = list(keys)
            sql += f" AND key IN ({', '.join('?' * len(keys))})"
            args += keys
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [dict(r) for r in self._rows(sql, args)]

    def latest_metric_id(self, run_id: int) -> int:
        row = self.db.execute("SELECT max(id) FROM metrics WHERE run_id = ?", [int(run_id)]).fetchone()
        return int(row[0] or 0)

    def delete_metrics(self, run_id: int, from_epoch: int) -> int:
        """Drop rows of epochs >= ``from_epoch`` (a resumed run redoes them); returns how many went."""
        with self.transaction() as db:
            return db.execute("DELETE FROM metrics WHERE run_id = ? AND epoch >= ?",
                              [int(run_id), int(from_epoch)]).rowcount
