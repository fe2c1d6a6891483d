"""The SQLite file underneath the store: connections, short transactions, WAL mode and migrations.

The store is the source of truth shared by the web process (many threads)
and trainer processes. How it stays correct with several of them:

* WAL journal: readers never block the writer and see committed rows only.
* Each thread (and each process) gets its own connection, opened lazily.
* Every write is one short transaction. Anything that reads and then writes
  (a state transition, claiming the next queued run, promoting a model)
  starts with ``BEGIN IMMEDIATE``, so it takes the write lock before reading
  and two processes can never both act on the same stale read.
* The database file is 0600 and the runs folder 0700 whatever the umask
  (the file holds password hashes; SQLite's -wal/-shm files take its mode).
* A busy timeout makes a second writer wait for the lock instead of failing
  with "database is locked". Threads of one process queue for it on a
  Python lock first, so that they wake as soon as it is free.

The schema is created and migrated with sqlite-utils' ``Migrations``; the
migrations themselves live in :mod:`busi_web.store.schema`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from busi_web.store.schema import MIGRATIONS

BUSY_TIMEOUT_S = 30.0


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and make it owner-only (0700), whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def utc_now() -> str:
    """Timestamps are ISO 8601 in UTC, to the second, so that they sort as text."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StoreBase:
    """One SQLite file and its run folders. Safe to share between threads; open one per process."""

    def __init__(self, db_path: str | os.PathLike, runs_dir: str | os.PathLike):
        self.db_path = Path(db_path)
        self.runs_dir = Path(runs_dir)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        private_dir(self.runs_dir)
        # The database holds password hashes: owner only, whatever the umask. SQLite gives its -wal and -shm
        # files the database file's mode, so they follow.
        os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600))
        self.db_path.chmod(0o600)
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

    def _rows(self, sql: str, args: list[Any]) -> list[sqlite3.Row]:
        cursor = self.db.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(sql, args).fetchall()
