"""Runs: their rows, their states and the transitions between them, and their artifact folders."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from busi_web.errors import UserError
from busi_web.store.audit import AuditMixin
from busi_web.store.db import private_dir, utc_now
from busi_web.store.tables import runs

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
TERMINAL = frozenset({"finished", "failed", "cancelled"})
# The states a run can be resumed from (its trainer continues from last.pt when the run has one).
RESUMABLE = frozenset({"interrupted", "cancelled"})
# Which state may follow which. Resuming puts an interrupted or cancelled run back in the queue; a finished or
# failed run is final (start a new run instead).
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"finished", "failed", "cancelled", "interrupted"}),
    "interrupted": frozenset({"queued", "cancelled", "failed"}),
    "cancelled": frozenset({"queued"}),
    "finished": frozenset(),
    "failed": frozenset(),
}
# Columns a caller may set through update_run / transition.
RUN_FIELDS = frozenset({"name", "pid", "error", "cancel_requested", "epochs_done", "best_metric", "best_metric_name",
                        "test_macro_f1", "test_accuracy", "params", "data_dir", "created_by", "worker",
                        "heartbeat_at"})


class RunNotFound(UserError, KeyError):
    """No run has this id (404)."""

    status = 404


class IllegalTransition(UserError):
    """A run cannot move from its current state to the one asked for (409)."""

    status = 409


MAX_ID = 2**63 - 1  # the largest 64-bit integer (SQLite's, and PostgreSQL's BIGINT): the largest row id


def run_id_of(value: int | str) -> int:
    """A run id as the database can hold it; anything else names no run (:class:`RunNotFound`)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= MAX_ID:
        raise RunNotFound(f"there is no run {value}; run ids are whole numbers from 1 (`busi-web runs` lists them)")
    return number


class RunsMixin(AuditMixin):
    """Creating, reading and moving runs through their states."""

    def create_run(self, backbone: str, dataset: str, params: dict[str, Any], *, name: str | None = None,
                   data_dir: str | None = None, created_by: str | None = None,
                   modality: str = "ultrasound") -> dict[str, Any]:
        """Insert a queued run and create its artifact folder ``runs/<YYYY-MM-DD_HH-MM-SS>_<id>/``.

        ``modality`` is the dataset's (its plugin declares it): the model can only serve that modality.
        """
        now = utc_now()
        with self.transaction() as conn:
            run_id = conn.execute(runs.insert().values(
                name=name or f"{backbone} on {dataset}", status="queued", backbone=backbone, dataset=dataset,
                data_dir=data_dir, params=json.dumps(params, sort_keys=True), created_at=now, created_by=created_by,
                cancel_requested=0, epochs_done=0, modality=modality).returning(runs.c.id)).scalar_one()
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            run_dir = self.folders.new(f"{stamp}_{run_id}")
            conn.execute(update(runs).where(runs.c.id == run_id).values(run_dir=str(run_dir)))
        private_dir(run_dir)  # checkpoints and logs inside are written 0600 (tempfile + rename)
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> dict[str, Any]:
        rows = self._rows(select(runs).where(runs.c.id == run_id_of(run_id)))
        if not rows:
            raise RunNotFound(f"there is no run {run_id}; `busi-web runs` lists them")
        return self._decode(rows[0])

    def list_runs(self, status: str | Iterable[str] | None = None, dataset: str | None = None,
                  backbone: str | None = None, limit: int | None = None, oldest_first: bool = False
                  ) -> list[dict[str, Any]]:
        """Runs, newest first unless ``oldest_first``, filtered by status (one or several), dataset, backbone."""
        query = select(runs)
        if status is not None:
            query = query.where(runs.c.status.in_([status] if isinstance(status, str) else list(status)))
        if dataset is not None:
            query = query.where(runs.c.dataset == dataset)
        if backbone is not None:
            query = query.where(runs.c.backbone == backbone)
        query = query.order_by(runs.c.id if oldest_first else runs.c.id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        return [self._decode(row) for row in self._rows(query)]

    def count_runs(self, status: str | None = None) -> int:
        query = select(func.count()).select_from(runs)
        if status is not None:
            query = query.where(runs.c.status == status)
        return int(self._scalar(query))

    def update_run(self, run_id: int, **fields: Any) -> dict[str, Any]:
        """Set bookkeeping columns of a run (not its status: use :meth:`transition`)."""
        values = self._fields(fields)
        with self.transaction() as conn:
            number = run_id_of(run_id)
            if conn.execute(select(runs.c.id).where(runs.c.id == number)).first() is None:
                raise RunNotFound(f"there is no run {run_id}")
            if values:
                conn.execute(update(runs).where(runs.c.id == number).values(**values))
        return self.get_run(run_id)

    def transition(self, run_id: int, status: str, **fields: Any) -> dict[str, Any]:
        """Move a run to ``status`` (only along :data:`TRANSITIONS`), setting ``fields`` in the same transaction."""
        if status not in STATES:
            raise IllegalTransition(f"unknown run state {status!r}; states are {', '.join(STATES)}")
        values = self._fields(fields)
        now = utc_now()
        with self.transaction() as conn:
            number = run_id_of(run_id)
            current = conn.execute(select(runs.c.status).where(runs.c.id == number)).scalar()
            if current is None:
                raise RunNotFound(f"there is no run {run_id}")
            if status not in TRANSITIONS[current]:
                allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is final)"
                raise IllegalTransition(f"run {run_id} is {current}; it can only become {allowed}, not {status}")
            values["status"] = status
            if status == "running":
                values["started_at"] = now
            elif status == "queued":
                values.update(finished_at=None, cancel_requested=0)
            if status in TERMINAL or status == "interrupted":
                values["finished_at"] = now
            if status != "running":  # only a running run is held by a worker
                values.setdefault("worker", None)
                values.setdefault("heartbeat_at", None)
            conn.execute(update(runs).where(runs.c.id == number).values(**values))
        return self.get_run(run_id)

    def claim_next(self, pid: int | None = None, worker: str | None = None, now: float | None = None
                   ) -> dict[str, Any] | None:
        """Atomically move the oldest queued run to running and return it (None when the queue is empty). A
        ``worker`` (``busi-web worker``) holds the claim with heartbeats from ``now`` on."""
        with self.transaction() as conn:
            # The write transaction already serialises claims; SKIP LOCKED keeps a claim from waiting on a row
            # another transaction holds, should one ever lock runs without the store's lock.
            row = conn.execute(select(runs.c.id).where(runs.c.status == "queued").order_by(runs.c.id).limit(1)
                               .with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            held = {} if worker is None else {"worker": worker, "heartbeat_at": now}
            return self.transition(row[0], "running", pid=pid, **held)

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - RUN_FIELDS
        if unknown:
            raise ValueError(f"unknown run field(s) {', '.join(sorted(unknown))}; "
                             f"settable: {', '.join(sorted(RUN_FIELDS))}")
        values = dict(fields)
        if isinstance(values.get("params"), dict):
            values["params"] = json.dumps(values["params"], sort_keys=True)
        return values

    def _decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        run = dict(row)
        run["run_dir"] = self.folders.local(run.get("run_dir"))
        if isinstance(run.get("params"), str):
            run["params"] = json.loads(run["params"])
        return run
