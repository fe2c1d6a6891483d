"""What every blueprint shares: reading request arguments, answering errors, and showing runs.

* Arguments: :func:`arg` reads one query or form value and types it with a
  :class:`~busi_web.specs.Param`, the same parser that checks plugin and
  training parameters; a bad value is a 400 naming the field and the fix.
* Errors: a :class:`~busi_web.errors.UserError` (every error a user can fix
  is one) becomes its 4xx, as JSON under ``/api`` or for JSON clients,
  otherwise the error page; anything else is a bug: its traceback goes to the
  log and the answer is a 500 with an id to find it there.
* Runs: :func:`run_json` is a run as the API shows it, :func:`run_view` as
  the pages show it.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from busi_web.diagnosis.uploads import UPLOAD_ADVICE
from busi_web.errors import UserError
from busi_web.evaluation.card import build_card, is_demo
from busi_web.plugins import PluginFailure
from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.store import MAX_ID, RESUMABLE, STATES, TERMINAL, RunNotFound
from busi_web.store import run_files as files

log = logging.getLogger(__name__)

# Files a clinician may not download (model weights, the trainer's raw output); admins may.
ADMIN_ONLY_SUFFIXES = (".pt", ".pth", "trainer_stderr.txt")
# Text files of a run folder served to clinicians with server paths hidden (see hide_paths).
TEXT_SUFFIXES = (".json", ".txt", ".md", ".csv")
# An absolute server path of two or more parts (not a URL path of this site): its last part is kept.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?!api/|runs/|static/|models/|admin/)(?:[^\s\"'<>,;:()/]+/)+"
                           r"([^\s\"'<>,;:()/]*)")
# A run number as a request argument (the store's ids run from 1 to MAX_ID).
RUN_ID = Param("run_id", "int", None, minimum=1, maximum=MAX_ID)


# -- arguments -------------------------------------------------------------------------------------------------
def arg(name: str, param: Param) -> Any:
    """The query or form value ``name`` typed and checked by ``param`` (its default when absent or empty).

    Raises a 400 :class:`UserError` whose ``fields`` name the argument.
    """
    try:
        return param.coerce(request.values.get(name))
    except ValueError as exc:
        raise UserError(f"{name}: {exc}", 400, {name: str(exc)}) from None


def int_arg(name: str, default: int | None = None, minimum: int | None = 0, maximum: int | None = None
            ) -> int | None:
    """A whole-number argument (see :func:`arg`)."""
    return arg(name, Param(name, "int", default, minimum=minimum, maximum=maximum))


def json_body(example: str) -> dict[str, Any]:
    """The request's JSON object; a 400 showing ``example`` when the body is not one."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise UserError(f"send a JSON object, e.g. {example}, with Content-Type: application/json", 400)
    return body


def body_arg(body: dict[str, Any], name: str, param: Param, *, required: bool = False) -> Any:
    """A field of a JSON body typed and checked by ``param``, as :func:`arg` does for query and form values."""
    value = body.get(name)
    if required and value is None:
        raise UserError(f"{name} is required", 400, {name: "required"})
    try:
        return param.coerce(value)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}", 400, {name: str(exc)}) from None


def body_str(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string field of a JSON body, stripped (``None`` when absent or empty); 400 for another type."""
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise UserError(f"{name} is required", 400, {name: "required"})
        return None
    if not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {type(value).__name__}", 400, {name: "a string"})
    return value.strip()


def status_filter(many: bool = True) -> list[str] | None:
    """The ``status`` argument: run states, comma-separated when ``many``; ``None`` when absent."""
    raw = (request.values.get("status") or "").strip()
    if not raw:
        return None
    statuses = [s.strip() for s in raw.split(",") if s.strip()] if many else [raw]
    bad = [s for s in statuses if s not in STATES]
    if bad:
        raise UserError(f"unknown status {', '.join(bad)!r}; use one of {', '.join(STATES)}"
                        + (" (comma-separated for several)" if many else ""), 400,
                        {"status": f"one of {', '.join(STATES)}"})
    return statuses


# -- errors ----------------------------------------------------------------------------------------------------
def wants_json() -> bool:
    """Whether the client gets JSON: every ``/api`` path, and clients that prefer JSON."""
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def reply_error(message: str, status: int, fields: dict | None = None, error_id: str | None = None):
    """An error answer: ``{"error", "status", "fields"?, "error_id"?}`` as JSON, or the error page. Server paths
    (a checkpoint's, a data folder's) are shown to administrators only."""
    if not getattr(current_user, "is_admin", False):
        message, fields = hide_paths(message), hide_paths(fields) if fields else fields
    if wants_json():
        body: dict[str, Any] = {"error": message, "status": status}
        if fields:
            body["fields"] = fields
        if error_id:
            body["error_id"] = error_id
        return jsonify(body), status
    return render_template("error.html", message=message, status=status, fields=fields, error_id=error_id), status


def register_error_handlers(app: Flask) -> None:
    """User mistakes get their message and status; bugs get a logged traceback and an id."""

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_UPLOAD_MB"]
        return reply_error(f"the upload is larger than this server's {limit} MB limit; {UPLOAD_ADVICE}", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return reply_error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(UserError)
    def user_error(exc: UserError):
        return reply_error(str(exc), exc.status, exc.fields)

    @app.errorhandler(PluginFailure)
    def plugin_failure(exc: PluginFailure):
        error_id = uuid.uuid4().hex[:12]
        log.error("plugin failure %s on %s %s", error_id, request.method, request.path, exc_info=exc)
        return reply_error(f"{exc}; the administrator can find the traceback in the server log under this id",
                           500, error_id=error_id)

    @app.errorhandler(Exception)
    def bug(exc: Exception):
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        return reply_error("internal error; the administrator can find details in the server log under this id",
                           500, error_id=error_id)


# -- runs and models -------------------------------------------------------------------------------------------
def _duration(run: dict[str, Any]) -> float | None:
    """How long a run has trained: the time of its epochs (over every resume), plus the current epoch of a run
    that is running; without epochs yet, the time since it (last) started."""
    start, end = run.get("started_at"), run.get("finished_at")
    if not start:
        return None
    try:
        t0 = datetime.fromisoformat(start)
        t1 = datetime.fromisoformat(end) if end else datetime.now(t0.tzinfo)
    except ValueError:
        return None
    epochs = services_of().store.metrics(run["id"], keys=["epoch_time"])
    if not epochs:
        return round((t1 - t0).total_seconds(), 1)
    trained = sum(float(r["value"]) for r in epochs)
    if run.get("status") == "running":  # the epoch under way, since the later of this start and the last epoch
        last = max(t0.timestamp(), float(epochs[-1].get("time") or 0.0))
        trained += max(0.0, datetime.now(t0.tzinfo).timestamp() - last)
    return round(trained, 1)


def default_ids() -> dict[int, str]:
    """Run id -> the modality whose default model it is."""
    return services_of().store.default_ids()


def hide_paths(value: Any) -> Any:
    """``value`` (text, or lists and dicts of it) with every absolute server path cut to ``…/<last part>``."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), value)
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hide_paths(v) for v in value]
    return value


def visible_artifacts(run_dir: str | None) -> list[str]:
    """The files of a run folder the current user may see: all for an admin, no weights or trainer output
    for anyone else."""
    names = files.artifact_names(run_dir)
    return names if getattr(current_user, "is_admin", False) else [n for n in names
                                                                    if not n.endswith(ADMIN_ONLY_SUFFIXES)]


def for_viewer(value: Any) -> Any:
    """``value`` as the current user may see it: whole for an admin, with server paths hidden for anyone else."""
    return value if getattr(current_user, "is_admin", False) else hide_paths(value)


def run_json(run: dict[str, Any], defaults: dict[int, str] | None = None) -> dict[str, Any]:
    """A run as the API shows it: the store row plus ``duration_s``, ``default_of`` (the modality it is the
    default of, or ``None``) and ``active`` (whether it is a default at all). A clinician gets no server paths:
    no ``run_dir``, ``data_dir`` or ``pid``, and paths in the parameters and the error cut to their last part."""
    if defaults is None:
        defaults = default_ids()
    default_of = defaults.get(run["id"])
    out = {**run, "duration_s": _duration(run), "default_of": default_of, "active": default_of is not None}
    if not getattr(current_user, "is_admin", False):
        out.update(run_dir=None, data_dir=None, pid=None)
        out = hide_paths(out)
    return out


def run_view(run: dict[str, Any], defaults: dict[int, str] | None = None) -> dict[str, Any]:
    """What the templates show of a run: the API's run dict plus params by group, flags for the buttons."""
    view = run_json(run, defaults)
    params = view.get("params") if isinstance(view.get("params"), dict) else {}
    view["train_params"] = params.get("train") or {}
    view["backbone_params"] = params.get("backbone") or {}
    view["dataset_params"] = params.get("dataset") or {}
    view["terminal"] = run["status"] in TERMINAL
    view["can_cancel"] = run["status"] in ("queued", "running", "interrupted")
    view["can_resume"] = run["status"] in RESUMABLE
    view["can_promote"] = run["status"] == "finished" and not view["active"]
    view["demo"] = is_demo(services_of().registry, run["dataset"])
    return view


def defaults_info() -> list[dict[str, Any]]:
    """Every modality's default model row with its run and whether it is a demo (for the pages)."""
    services = services_of()
    out = []
    for row in services.store.list_defaults():
        try:
            run = services.store.get_run(row["run_id"])
        except RunNotFound:
            run = None
        out.append({**row, "run": run, "demo": run is not None and is_demo(services.registry, run["dataset"])})
    return out


def card_for(run_id: int, is_admin: bool) -> dict[str, Any]:
    """Run ``run_id``'s model card as a user may see it: where the data lies on the server only for admins."""
    services = services_of()
    card = build_card(services.store, services.registry, run_id)
    if not is_admin:
        card["data"]["data_dir"] = None
        card = hide_paths(card)
    return card
