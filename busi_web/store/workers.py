"""Trainer workers (``busi-web worker``) in the store: who they are, which runs they hold, and their heartbeats.

A worker claims a queued run (:meth:`~busi_web.store.runs.RunsMixin.claim_next`
with its name) and then beats for it: every few seconds it writes the
database's clock into the run's ``heartbeat_at``, and into its own row. A run
whose holder stopped beating (its host died, it was killed) is *stale*;
another worker marks it interrupted and puts it back in the queue, and the
next claim resumes it from ``last.pt``. Times are the database's clock, so
hosts whose clocks disagree still agree on what is stale.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, delete, func, select, text, update

from busi_web.store.db import utc_now
from busi_web.store.runs import RunsMixin
from busi_web.store.tables import audit, runs, workers

LOST = "run.worker_lost"  # the audit action of a run taken back from a worker that stopped beating


class WorkersMixin(RunsMixin):
    """Workers, heartbeats and stale claims."""

    def clock(self) -> float:
        """Now, in seconds since the epoch, by the database's clock (this host's for SQLite, which is local)."""
        if self.dialect == "postgresql":
            return float(self._scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
        return time.time()

    def register_worker(self, name: str, *, host: str, pid: int, slots: int) -> None:
        """Record worker ``name`` as running (a restarted worker of the same name takes its row over)."""
        with self.transaction() as conn:
            self._upsert(conn, workers, {"name": name, "host": host, "pid": pid, "slots": slots,
                                         "started_at": utc_now(), "seen_at": self.clock(), "state": "running"})
        self.audit("worker.start", worker=name, host=host, slots=slots)

    def beat(self, name: str, run_ids: list[int]) -> list[int]:
        """Worker ``name`` is alive and holds ``run_ids``: stamp them; returns those it still holds (a run another
        worker took back, or that ended, is not among them)."""
        now = self.clock()
        with self.transaction() as conn:
            conn.execute(update(workers).where(workers.c.name == name).values(seen_at=now, state="running"))
            held = []
            for run_id in run_ids:
                done = conn.execute(update(runs).where(runs.c.id == run_id, runs.c.worker == name,
                                                       runs.c.status == "running").values(heartbeat_at=now))
                if done.rowcount:
                    held.append(run_id)
        return held

    def stop_worker(self, name: str) -> None:
        """Worker ``name`` stopped cleanly: its row goes."""
        with self.transaction() as conn:
            conn.execute(delete(workers).where(workers.c.name == name))
        self.audit("worker.stop", worker=name)

    def stale_runs(self, after_s: float) -> list[dict[str, Any]]:
        """Running runs held by a worker whose last heartbeat is more than ``after_s`` seconds old."""
        cutoff = self.clock() - after_s
        return [self._decode(r) for r in self._rows(select(runs).where(
            runs.c.status == "running", runs.c.worker.is_not(None), runs.c.heartbeat_at < cutoff))]

    def times_lost(self, run_id: int) -> int:
        """How often run ``run_id`` was taken back from a worker that stopped beating."""
        return int(self._scalar(select(func.count()).select_from(audit).where(
            and_(audit.c.action == LOST, audit.c.run_id == int(run_id)))))

    def list_workers(self, stale_after_s: float | None = None) -> list[dict[str, Any]]:
        """Every registered worker, with ``age_s`` (seconds since it last beat) and, given ``stale_after_s``,
        ``stale``; and the runs each holds."""
        now = self.clock()
        out = []
        for row in self._rows(select(workers).order_by(workers.c.name)):
            row["age_s"] = round(now - float(row["seen_at"] or 0), 1)
            if stale_after_s is not None:
                row["stale"] = row["age_s"] > stale_after_s
            row["runs"] = [r["id"] for r in self._rows(select(runs.c.id).where(runs.c.worker == row["name"],
                                                                               runs.c.status == "running"))]
            out.append(row)
        return out
