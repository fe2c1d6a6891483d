"""The database underneath the store: SQLite (the embedded default) or PostgreSQL, through SQLAlchemy Core.

The store is the source of truth shared by the web processes (many threads,
perhaps on several hosts) and the trainers. One implementation serves both
databases; how it stays correct with several processes at once:

* Every write is one short transaction. Anything that reads and then writes
  (a state transition, claiming the next queued run, promoting a model)
  opens a *write* transaction, which holds the database's write lock from
  its first statement: on SQLite ``BEGIN IMMEDIATE``; on PostgreSQL a
  transaction-level advisory lock (``pg_advisory_xact_lock``), taken by the
  store's write transactions only. So two processes can never both act on
  the same stale read, on one host or several. Reads never wait for it.
* SQLite: WAL journal (readers never block the writer), a busy timeout
  instead of "database is locked", the file 0600 and the runs folder 0700
  whatever the umask (the file holds password hashes). Threads of one
  process queue for the write lock on a Python lock first, so that they
  wake as soon as it is free.
* The schema is migrated with Alembic (:mod:`busi_web.store.migrations`)
  inside a write transaction, so processes that start together never both
  migrate.
* After a fork (a gunicorn worker), the process opens connections of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Executable

from busi_web.errors import UserError
from busi_web.store.artifacts import RunFolders

BUSY_TIMEOUT_S = 30.0
MIGRATIONS = Path(__file__).with_name("migrations")
# The advisory lock every write transaction of the store takes on PostgreSQL (an arbitrary, fixed 64-bit key).
WRITE_LOCK_KEY = 0x62757369_77656221


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and make it owner-only (0700), whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def utc_now() -> str:
    """Timestamps are ISO 8601 in UTC, to the second, so that they sort as text."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def database_url(database: str | os.PathLike) -> str:
    """A SQLAlchemy URL for ``database``: a ``postgresql://`` URL (given psycopg 3 as its driver), a
    ``sqlite:///`` URL, or a file path (SQLite). A URL of another kind is a 400 that lists the kinds."""
    value = str(database)
    if "://" not in value:
        return f"sqlite:///{Path(value).resolve()}"
    try:
        url = make_url(value)
    except Exception:  # noqa: BLE001 - SQLAlchemy's parse error; said in our words
        raise UserError(f"DATABASE_URL {hide_password(value)!r} is not a database URL; use "
                        "postgresql://USER:PASSWORD@HOST:5432/NAME or a SQLite file path", 400) from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if url.drivername == "sqlite":
        return value
    raise UserError(f"DATABASE_URL names a {url.drivername} database; busi-web keeps its store in PostgreSQL "
                    "(postgresql://...) or SQLite (a file path)", 400)


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: hide whatever stands before an @
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)


class StoreBase:
    """One database and the run folders. Safe to share between threads; open one per process."""

    def __init__(self, database: str | os.PathLike, runs_dir: str | os.PathLike):
        self.url = database_url(database)
        self.runs_dir = Path(runs_dir)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        # The SQLite file, for what needs a path (the trainer's --db, backups); None on PostgreSQL.
        self.db_path: Path | None = None
        if self.dialect == "sqlite":
            database_path = make_url(self.url).database
            if not database_path or database_path == ":memory:":
                raise UserError("the store needs a SQLite file, not an in-memory database", 400)
            self.db_path = Path(database_path)
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            # The database holds password hashes: owner only, whatever the umask. SQLite gives its -wal and -shm
            # files the database file's mode, so they follow.
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600))
            self.db_path.chmod(0o600)
        private_dir(self.runs_dir)
        self.folders = RunFolders(self.runs_dir)
        self._local = threading.local()
        self._engine: Engine | None = None
        self._engine_pid = -1
        # Threads of one process take turns for the write lock here, on a Python lock that wakes the next one at
        # once; the database's own lock (SQLite's busy handler, PostgreSQL's advisory lock) is then left to waits
        # on other processes.
        self._write_lock = threading.Lock()
        self.migrate()

    @property
    def location(self) -> str:
        """Where the store is, for people: the SQLite file, or the PostgreSQL URL without its password."""
        return str(self.db_path) if self.db_path is not None else hide_password(self.url)

    # -- connections and transactions --------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """This process's engine (a new one after a fork: connections must not cross processes)."""
        if self._engine is None or self._engine_pid != os.getpid():
            self._engine = _engine(self.url)
            self._engine_pid = os.getpid()
        return self._engine

    @contextlib.contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[Connection]:
        """One short transaction on this thread; ``immediate`` (a write transaction) takes the write lock first,
        for read-then-write. A transaction inside another rides on the outer one."""
        outer = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        lock = self._write_lock if immediate else contextlib.nullcontext()
        with lock, self.engine.connect() as conn:
            conn = conn.execution_options(busi_write=immediate)
            with conn.begin():
                if immediate and self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None

    def _rows(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a query as dicts, in this thread's transaction when there is one."""
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(statement, params or {}).mappings()]

    def _scalar(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row of a query (``None`` when there is no row)."""
        with self._reading() as conn:
            return conn.execute(statement, params or {}).scalar()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        outer = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with self.engine.connect() as conn:
            yield conn

    def _upsert(self, conn: Connection, table: Table, row: Mapping[str, Any]) -> None:
        """Insert ``row`` into ``table``, or replace the row with its primary key (both databases say
        ``INSERT ... ON CONFLICT DO UPDATE``; each dialect builds it)."""
        module = postgresql if self.dialect == "postgresql" else sqlite
        keys = [c.name for c in table.primary_key.columns]
        statement = module.insert(table).values(**row)
        conn.execute(statement.on_conflict_do_update(
            index_elements=keys, set_={k: statement.excluded[k] for k in row if k not in keys}))

    # -- schema ----------------------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest revision (nothing when it is there already)."""
        if self.dialect == "sqlite":
            _ensure_wal(self.engine, self.db_path)
        try:
            self._migrate()
        except OperationalError as exc:
            if self.dialect == "sqlite":
                raise
            reason = " ".join(str(exc.orig).split())[:300]
            raise UserError(f"cannot reach the store's database at {self.location} ({reason}); check DATABASE_URL "
                            "and that PostgreSQL answers there", 503) from None

    def _migrate(self) -> None:
        with self.transaction() as conn:  # two processes starting at once must not both migrate
            current = _current_revision(conn)
            if current == _head():
                return
            if current is None and self.dialect == "sqlite":
                from busi_web.store.legacy import upgrade_legacy  # old SQLite files only: sqlite-utils' migrations

                if upgrade_legacy(conn):
                    _alembic(conn, "stamp", "r001")
            _alembic(conn, "upgrade", "head")

    def schema_version(self) -> str | None:
        """The schema's Alembic revision (``None`` before the first migration)."""
        with self._reading() as conn:
            return _current_revision(conn)

    def table_names(self) -> list[str]:
        """The tables of the database, sorted."""
        with self._reading() as conn:
            return sorted(inspect(conn).get_table_names())


@lru_cache(maxsize=1)
def _head() -> str:
    from alembic.script import ScriptDirectory  # read once per process

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _alembic(conn: Connection, command: str, revision: str) -> None:
    from alembic import command as commands  # only when the schema changes
    from alembic.config import Config  # as above

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    getattr(commands, command)(config, revision)


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the transactions below begin as the store says
            dbapi_connection.execute("PRAGMA foreign_keys = ON")
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            dbapi_connection.execute("PRAGMA synchronous = NORMAL")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # A write transaction takes the write lock before it reads (see the module's docstring).
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("busi_write") else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _ensure_wal(engine: Engine, path: Path | None) -> None:
    """Switch the SQLite file to WAL once. Switching needs the file to itself and SQLite does not wait for that (no
    busy handler), so processes opening a new database together retry until the first one has done it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            with engine.connect() as conn:
                raw = conn.connection.driver_connection
                mode = raw.execute("PRAGMA journal_mode").fetchone()[0].lower()
                if mode != "wal":
                    mode = raw.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower()
        except (sqlite3.OperationalError, OperationalError) as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} stayed locked for {BUSY_TIMEOUT_S:.0f} s while switching to WAL mode; "
                                   "stop the process that holds it") from exc
            time.sleep(0.02)
            continue
        if mode != "wal":
            raise RuntimeError(f"could not switch {path} to WAL mode; put the database on a local disk")
        return
