"""Opaque handles for studies and instances: what the browser sees instead of UIDs.

A handle is a keyed digest (HMAC-SHA256 with the app's secret) of the endpoint and the UIDs, so the same
study gets the same handle every time it is listed; the server keeps which UIDs a handle stands for, for the
handles it has handed out (the newest :data:`KEPT`). After a restart, or once forgotten, a handle is a 404
that says to search again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from busi_web.dicom.privacy import keyed_digest
from busi_web.errors import UserError

KEPT = 20_000


class Handles:
    """Handle ↔ ``(endpoint, uids...)``, bounded, shared by the request threads."""

    def __init__(self, key: bytes | str, kept: int = KEPT):
        self._key = key
        self._kept = kept
        self._known: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, endpoint: str, *uids: str) -> str:
        """The handle of ``uids`` on ``endpoint`` (remembered, newest last)."""
        parts = (endpoint, *uids)
        digest = keyed_digest(self._key, "\x00".join(parts))
        with self._lock:
            self._known[digest] = parts
            self._known.move_to_end(digest)
            while len(self._known) > self._kept:
                self._known.popitem(last=False)
        return digest

    def resolve(self, endpoint: str, handle: str, parts: int) -> tuple[str, ...]:
        """The UIDs ``handle`` stands for on ``endpoint`` (``parts`` of them); 404 when it is not known here."""
        with self._lock:
            known = self._known.get(handle)
        if known is None or known[0] != endpoint or len(known) != parts + 1:
            raise UserError("that study or instance is not known here (any more); search the studies again", 404)
        return known[1:]
