"""The audit trail: one row per thing a person (or the system) did, and reading it back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from busi_web.store.db import StoreBase, utc_now


class AuditMixin(StoreBase):
    """Writing and reading audit rows."""

    # -- audit --------------------------------------------------------------------------------------------------
    def audit(self, action: str, user: str | None = None, run_id: int | None = None, **detail: Any) -> None:
        """Append one audit row: who did what, when, to which run."""
        with self.transaction() as db:
            db["audit"].insert({"time": utc_now(), "user": user, "action": action, "run_id": run_id,
                                "detail": json.dumps(detail, sort_keys=True, default=str)})

    def audit_log(self, action: str | Sequence[str] | None = None, limit: int = 100, *, user: str | None = None,
                  run_id: int | None = None, since: str | None = None, until: str | None = None,
                  before_id: int | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first, filtered by action (one or several), user, run (the model), a time range
        (ISO 8601 text, ``since`` inclusive, ``until`` exclusive) and ``before_id`` (the next page)."""
        where, args = [], []
        if action is not None:
            actions = [action] if isinstance(action, str) else list(action)
            where.append(f"action IN ({', '.join('?' * len(actions))})")
            args += actions
        for column, op, value in (("user", "=", user), ("run_id", "=", run_id), ("time", ">=", since),
                                  ("time", "<", until), ("id", "<", before_id)):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        rows = [dict(r) for r in self._rows(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)])]
        for row in rows:
            row["detail"] = json.loads(row["detail"] or "{}")
        return rows

    def audit_actions(self) -> list[str]:
        """Every action that has an audit row, sorted."""
        return [r["action"] for r in self._rows("SELECT DISTINCT action FROM audit ORDER BY action", [])]
