"""The case reports a server keeps so that their makers can open them: the newest, within a memory budget.

A report is kept under a random id with the user who made it; an id that is not kept (the budget let it go,
or the server restarted) is a 404 that says to diagnose again. Nothing is written to disk.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

from busi_web.errors import UserError
from busi_web.report.content import CaseReport

BUDGET_BYTES = 16 * 2**20


class ReportKeeper:
    """Reports by id, newest last, at most ``budget`` bytes together. A report is made when it is first opened
    (``make``), so a diagnosis nobody prints costs no PNG encoding."""

    def __init__(self, budget: int = BUDGET_BYTES):
        self.budget = budget
        self._kept: OrderedDict[str, list] = OrderedDict()  # id -> [user, size, make or report]
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, user: str, make: Callable[[], CaseReport], size: int) -> str:
        """Keep the report ``make`` builds, for ``user``, counting ``size`` bytes; returns its id."""
        report_id = secrets.token_urlsafe(12)
        with self._lock:
            self._kept[report_id] = [user, int(size), make]
            self._bytes += int(size)
            while self._bytes > self.budget and len(self._kept) > 1:
                _, (_, old_size, _) = self._kept.popitem(last=False)
                self._bytes -= old_size
        return report_id

    def get(self, report_id: str, user: str, is_admin: bool = False) -> CaseReport:
        """The report ``report_id`` when ``user`` made it (or is an admin); 404 otherwise."""
        with self._lock:
            kept = self._kept.get(report_id)
        if kept is None or (kept[0] != user and not is_admin):
            raise UserError("this case report is not kept here (any more): reports stay while the server runs, "
                            "for the newest diagnoses; diagnose the image again to make a new one", 404)
        if not isinstance(kept[2], CaseReport):
            kept[2] = kept[2]()  # two first opens at once may both build it: the same report
        return kept[2]
