"""The audit trail: one row per thing a person (or the system) did, and reading it back."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from busi_web.store.db import StoreBase, utc_now
from busi_web.store.tables import audit

CSV_COLUMNS = ("id", "time", "user", "action", "run_id", "detail")


def time_window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """``since``/``until`` as given by a person (a date ``2026-12-01`` or an ISO 8601 time) as the bounds that
    :meth:`AuditMixin.audit_log` takes: a bare ``until`` date includes that whole day. Raises ``ValueError``
    naming the bad one."""
    out = []
    for name, raw, end in (("since", since, False), ("until", until, True)):
        text = (raw or "").strip()
        if not text:
            out.append(None)
            continue
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                out.append((day + timedelta(days=1) if end else day).isoformat())
            else:
                out.append(datetime.fromisoformat(text).isoformat())
        except ValueError:
            raise ValueError(f"{name} must be a date (2026-12-01) or an ISO 8601 time, got {text!r}") from None
    return out[0], out[1]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (``=``, ``+``, ``-``, ``@``, tab or
    CR; a user name typed at the login form can be anything) gets a leading apostrophe (OWASP's CSV injection
    advice)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Audit rows as CSV text with a header (``detail`` as JSON), for a spreadsheet or an archive; no cell can
    run as a formula."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([cell(v) for v in (row["id"], row["time"], row["user"], row["action"], row["run_id"],
                                           json.dumps(row["detail"], sort_keys=True, default=str))])
    return out.getvalue()


class AuditMixin(StoreBase):
    """Writing and reading audit rows."""

    # -- audit --------------------------------------------------------------------------------------------------
    def audit(self, action: str, user: str | None = None, run_id: int | None = None, **detail: Any) -> None:
        """Append one audit row: who did what, when, to which run."""
        self.audit_many(action, user=user, run_id=run_id, rows=[detail])

    def audit_many(self, action: str, *, user: str | None, run_id: int | None,
                   rows: Sequence[dict[str, Any]]) -> None:
        """Append one row per detail in ``rows`` (e.g. each image of a diagnosis), in one transaction."""
        now = utc_now()
        with self.transaction(immediate=False) as conn:  # inserts only: nothing read first
            conn.execute(audit.insert(), [{"time": now, "user": user, "action": action, "run_id": run_id,
                                           "detail": json.dumps(detail, sort_keys=True, default=str)}
                                          for detail in rows])

    def audit_log(self, action: str | Sequence[str] | None = None, limit: int = 100, *, user: str | None = None,
                  run_id: int | None = None, since: str | None = None, until: str | None = None,
                  before_id: int | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first, filtered by action (one or several), user, run (the model), a time range
        (ISO 8601 text, ``since`` inclusive, ``until`` exclusive) and ``before_id`` (the next page)."""
        c = audit.c
        query = select(audit)
        if action is not None:
            query = query.where(c.action.in_([action] if isinstance(action, str) else list(action)))
        if user is not None:
            query = query.where(c.user == user)
        if run_id is not None:
            query = query.where(c.run_id == run_id)
        if since is not None:
            query = query.where(c.time >= since)
        if until is not None:
            query = query.where(c.time < until)
        if before_id is not None:
            query = query.where(c.id < before_id)
        rows = self._rows(query.order_by(c.id.desc()).limit(int(limit)))
        for row in rows:
            row["detail"] = json.loads(row["detail"] or "{}")
        return rows

    def audit_actions(self) -> list[str]:
        """Every action that has an audit row, sorted."""
        return [r["action"] for r in self._rows(select(audit.c.action).distinct().order_by(audit.c.action))]
