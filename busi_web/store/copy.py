"""Copy a whole store into another database: moving an instance from its SQLite file to PostgreSQL.

Every table is copied row for row, ids included, in an order that keeps the
foreign keys whole (:data:`~busi_web.store.tables.COPY_ORDER`), in one
transaction on the target: a copy that fails leaves the target as it was.
The target must be empty (its schema is created or upgraded first), so a
copy never merges two instances. PostgreSQL's id sequences are then moved
past the copied ids, so that new rows get new ones. The run folders are not
copied: the target store uses the same ``RUNS_DIR`` (they are named in the
rows by their path).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text

from busi_web.errors import UserError
from busi_web.store.db import StoreBase
from busi_web.store.tables import COPY_ORDER

BATCH = 2000


def table_counts(store: StoreBase) -> dict[str, int]:
    """Rows per table of ``store``."""
    with store.transaction(immediate=False) as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar()) for t in COPY_ORDER}


def copy_store(source: StoreBase, target: StoreBase) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``; returns rows copied per table. A 409 when the
    target holds rows already (nothing is written then)."""
    if source.url == target.url:
        raise UserError("the source and the target are the same database; name another target", 400)
    filled = {name: n for name, n in table_counts(target).items() if n}
    if filled:
        held = ", ".join(f"{n} {name}" for name, n in filled.items())
        raise UserError(f"the target database {target.location} is not empty ({held}); copy into a new, empty "
                        "database", 409)
    copied: dict[str, int] = {}
    with source.transaction(immediate=False) as reading, target.transaction() as writing:
        for table in COPY_ORDER:
            copied[table.name] = 0
            result = reading.execute(select(table).order_by(*table.primary_key.columns))
            while rows := result.mappings().fetchmany(BATCH):
                writing.execute(table.insert(), [dict(r) for r in rows])
                copied[table.name] += len(rows)
        if target.dialect == "postgresql":
            for table in COPY_ORDER:
                if "id" in table.c and table.c.id.autoincrement is True:
                    writing.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                         f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
    return copied


def summary(copied: dict[str, Any]) -> str:
    """One line: rows copied per table."""
    return ", ".join(f"{n} {name}" for name, n in copied.items())
