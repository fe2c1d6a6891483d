"""The job store: runs, their metrics, the active models, users and the audit trail in one SQLite file.

The store is the source of truth shared by the web process (many threads)
and trainer processes. How it stays correct with several of them:

* WAL journal: readers never block the writer and see committed rows only.
* Each thread (and each process) gets its own connection, opened lazily.
* Every write is one short transaction. Anything that reads and then writes
  (a state transition, claiming the next queued run, promoting a model)
  starts with ``BEGIN IMMEDIATE``, so it takes the write lock before reading
  and two processes can never both act on the same stale read.
* A busy timeout makes a second writer wait for the lock instead of failing
  with "database is locked". Threads of one process queue for it on a
  Python lock first, so that they wake as soon as it is free.

The schema is created and migrated with sqlite-utils' ``Migrations``; the
migrations themselves live in :mod:`busi_web.store_schema`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from .store_schema import MIGRATIONS
from .store_users import UsersMixin

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
TERMINAL = frozenset({"finished", "failed", "cancelled"})
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
                        "test_macro_f1", "test_accuracy", "params", "data_dir", "created_by"})
BUSY_TIMEOUT_S = 30.0


class RunNotFound(KeyError):
    """No run has this id."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else "run not found"


class IllegalTransition(ValueError):
    """A run cannot move from its current state to the one asked for."""


def utc_now() -> str:
    """Timestamps are ISO 8601 in UTC, to the second, so that they sort as text."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JobStore(UsersMixin):
    """All persistent state of busi-web. Safe to share between threads; open one per process."""

    def __init__(self, db_path: str | os.PathLike, runs_dir: str | os.PathLike):
        self.db_path = Path(db_path)
        self.runs_dir = Path(runs_dir)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Threads of one process take turns for the write lock here, on a Python lock that wakes the next one at
        # once; SQLite's busy handler (which sleeps and polls) is then left to waits on other processes.
        self._write_lock = threading.Lock()
        self._migrate()

    # -- connections and transactions --------------------------------------------------------------------
    @property
    def db(self) -> Database:
        """This thread's connection (a new one after a fork: SQLite connections must not cross processes)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            local.db, local.pid = Database(conn), os.getpid()
        return local.db

    @contextlib.contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[Database]:
        """One short transaction; ``immediate`` takes the write lock first (for read-then-write)."""
        db = self.db
        if db.conn.in_transaction:  # nested: ride on the outer transaction
            yield db
            return
        lock = self._write_lock if immediate else contextlib.nullcontext()
        with lock:
            db.conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield db
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")

    def _migrate(self) -> None:
        db = self.db
        self._ensure_wal(db)
        db.conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():  # two processes starting at once must not both migrate
            MIGRATIONS.apply(db)

    def _ensure_wal(self, db: Database) -> None:
        """Switch the file to WAL once. Switching needs the file to itself and SQLite does not wait for that
        (no busy handler), so processes opening a new database together retry until the first one has done it."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                mode = db.conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
                if mode != "wal":
                    mode = db.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.db_path} stayed locked for {BUSY_TIMEOUT_S:.0f} s while switching "
                                       "to WAL mode; stop the process that holds it") from exc
                time.sleep(0.02)
                continue
            if mode != "wal":
                raise RuntimeError(f"could not switch {self.db_path} to WAL mode; put the database on a local disk")
            return

    def schema_version(self) -> list[str]:
        """Names of the applied migrations, oldest first."""
        return [m.name for m in MIGRATIONS.applied(self.db)]

    # -- runs -------------------------------------------------------------------------------------------------
    def create_run(self, backbone: str, dataset: str, params: dict[str, Any], *, name: str | None = None,
                   data_dir: str | None = None, created_by: str | None = None) -> dict[str, Any]:
        """Insert a queued run and create its artifact folder ``runs/<YYYY-MM-DD_HH-MM-SS>_<id>/``."""
        now = utc_now()
        with self.transaction() as db:
            run_id = db["runs"].insert({
                "name": name or f"{backbone} on {dataset}", "status": "queued", "backbone": backbone,
                "dataset": dataset, "data_dir": data_dir, "params": json.dumps(params, sort_keys=True),
                "created_at": now, "created_by": created_by, "cancel_requested": 0, "epochs_done": 0,
            }).last_pk
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            run_dir = self.runs_dir / f"{stamp}_{run_id}"
            db["runs"].update(run_id, {"run_dir": str(run_dir)})
        run_dir.mkdir(parents=True, exist_ok=True)
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", [int(run_id)])
        if not rows:
            raise RunNotFound(f"there is no run {run_id}; `busi-web runs` lists them")
        return self._decode(rows[0])

    def list_runs(self, status: str | Iterable[str] | None = None, dataset: str | None = None,
                  backbone: str | None = None, limit: int | None = None, oldest_first: bool = False
                  ) -> list[dict[str, Any]]:
        """Runs, newest first unless ``oldest_first``, filtered by status (one or several), dataset, backbone."""
        where, args = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args += statuses
        for column, value in (("dataset", dataset), ("backbone", backbone)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id" + ("" if oldest_first else " DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._decode(row) for row in self._rows(sql, args)]

    def count_runs(self, status: str | None = None) -> int:
        if status is None:
            return self.db.execute("SELECT count(*) FROM runs").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM runs WHERE status = ?", [status]).fetchone()[0]

    def update_run(self, run_id: int, **fields: Any) -> dict[str, Any]:
        """Set bookkeeping columns of a run (not its status: use :meth:`transition`)."""
        values = self._fields(fields)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", [int(run_id)]).fetchone() is None:
                raise RunNotFound(f"there is no run {run_id}")
            if values:
                db["runs"].update(int(run_id), values)
        return self.get_run(run_id)

    def transition(self, run_id: int, status: str, **fields: Any) -> dict[str, Any]:
        """Move a run to ``status`` (only along :data:`TRANSITIONS`), setting ``fields`` in the same transaction."""
        if status not in STATES:
            raise IllegalTransition(f"unknown run state {status!r}; states are {', '.join(STATES)}")
        values = self._fields(fields)
        now = utc_now()
        with self.transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", [int(run_id)]).fetchone()
            if row is None:
                raise RunNotFound(f"there is no run {run_id}")
            current = row[0]
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
            db["runs"].update(int(run_id), values)
        return self.get_run(run_id)

    def claim_next(self, pid: int | None = None) -> dict[str, Any] | None:
        """Atomically move the oldest queued run to running and return it (None when the queue is empty)."""
        with self.transaction() as db:
            row = db.execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            return self.transition(row[0], "running", pid=pid)

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - RUN_FIELDS
        if unknown:
            raise ValueError(f"unknown run field(s) {', '.join(sorted(unknown))}; "
                             f"settable: {', '.join(sorted(RUN_FIELDS))}")
        values = dict(fields)
        if isinstance(values.get("params"), dict):
            values["params"] = json.dumps(values["params"], sort_keys=True)
        return values

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        if isinstance(run.get("params"), str):
            run["params"] = json.loads(run["params"])
        return run

    # -- metrics ------------------------------------------------------------------------------------------------
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

    def _rows(self, sql: str, args: list[Any]) -> list[sqlite3.Row]:
        cursor = self.db.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(sql, args).fetchall()

    # -- models -------------------------------------------------------------------------------------------------
    def set_active_model(self, run_id: int, dataset: str | None = None, by: str | None = None) -> dict[str, Any]:
        """Make a finished run's best checkpoint the active model of its dataset (what the Predictor serves)."""
        with self.transaction():
            run = self.get_run(run_id)
            if run["status"] != "finished":
                raise IllegalTransition(f"run {run_id} is {run['status']}; only a finished run can be promoted")
            checkpoint = Path(run["run_dir"]) / "best_model.pt"
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

    # -- audit --------------------------------------------------------------------------------------------------
    def audit(self, action: str, user: str | None = None, run_id: int | None = None, **detail: Any) -> None:
        """Append one audit row: who did what, when, to which run."""
        with self.transaction() as db:
            db["audit"].insert({"time": utc_now(), "user": user, "action": action, "run_id": run_id,
                                "detail": json.dumps(detail, sort_keys=True, default=str)})

    def audit_log(self, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM audit", []
        if action is not None:
            sql += " WHERE action = ?"
            args.append(action)
        rows = [dict(r) for r in self._rows(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)])]
        for row in rows:
            row["detail"] = json.loads(row["detail"] or "{}")
        return rows
