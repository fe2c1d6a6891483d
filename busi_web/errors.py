"""Error pages and JSON errors: user mistakes get a message, bugs get a logged traceback and an id."""

from __future__ import annotations

import logging
import uuid

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .datasets import DatasetError
from .plugins import UnknownPlugin
from .specs import InvalidParameters

log = logging.getLogger(__name__)


class UserError(ValueError):
    """A request that cannot be served as sent; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _reply(message: str, status: int, fields: dict | None = None, error_id: str | None = None):
    if wants_json():
        body = {"error": message, "status": status}
        if fields:
            body["fields"] = fields
        if error_id:
            body["error_id"] = error_id
        return jsonify(body), status
    return render_template("error.html", message=message, status=status, fields=fields, error_id=error_id), status


def register(app: Flask) -> None:
    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        limit = app.config["MAX_UPLOAD_MB"]
        return _reply(f"the upload is larger than the {limit} MB limit; send a smaller image "
                      "(an administrator can raise MAX_UPLOAD_MB)", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _reply(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(UserError)
    def user_error(exc: UserError):
        return _reply(str(exc), exc.status, exc.fields)

    @app.errorhandler(InvalidParameters)
    def invalid(exc: InvalidParameters):
        return _reply(str(exc), 400, exc.errors)

    @app.errorhandler(DatasetError)
    @app.errorhandler(UnknownPlugin)
    def bad_name(exc):
        return _reply(str(exc), 400)

    @app.errorhandler(Exception)
    def bug(exc: Exception):
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        return _reply("internal error; the administrator can find details in the server log under this id",
                      500, error_id=error_id)
