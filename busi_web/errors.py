"""The one error type for mistakes a user can make and fix: a message that says what to do, and a status.

Every layer raises :class:`UserError` (or a subclass) for bad input; the web
answers it as a 4xx with the message (and ``fields`` naming the offending
form or JSON fields), the command line prints the message on one line. An
error that is not a :class:`UserError` is a bug: the web logs its traceback
and answers 500 with an id.
"""

from __future__ import annotations

from collections.abc import Mapping


class UserError(ValueError):
    """A request that cannot be served as sent; ``status`` is the HTTP code, ``fields`` the fields at fault."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None, fields: Mapping[str, str] | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.fields = dict(fields or {})

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
