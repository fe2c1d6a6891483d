"""The audit trail: one row per thing a person (or the system) did, and reading it back."""

from __future__ import annotations

import json
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

    def audit_log(self, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM audit", []
        if action is not None:
            sql += " WHERE action = ?"
            args.append(action)
        rows = [dict(r) for r in self._rows(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)])]
        for row in rows:
            row["detail"] = json.loads(row["detail"] or "{}")
        return rows
