"""Admin pages: user accounts and the audit log, with their JSON API (admins only).

* ``GET /admin/users`` (page), ``GET /api/users``; ``POST /api/users`` ``{"name", "role"}`` creates an
  account with a one-time password (answered once); ``PATCH /api/users/<name>`` ``{"role"?, "disabled"?,
  "must_change_password": true?}`` (the last: a new password at the next login);
  ``POST /api/users/<name>/reset-password`` gives a new one-time password.
* ``GET /admin/audit`` (page), ``GET /api/audit`` and ``GET /api/audit.csv``: the audit log, newest first,
  filtered by ``user``, ``run_id`` (the model), ``action``, ``since`` and ``until`` (dates or ISO 8601 times);
  ``limit`` and ``before_id`` page through it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request

from busi_web.errors import UserError
from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.store import MAX_ID
from busi_web.store.audit import rows_to_csv, time_window
from busi_web.store.users import ROLES
from busi_web.web.auth import admin_required, current_user
from busi_web.web.helpers import RUN_ID, arg, body_str, json_body

bp = Blueprint("admin", __name__)

LIMIT = Param("limit", "int", 200, minimum=1, maximum=10_000)
BEFORE_ID = Param("before_id", "int", None, minimum=1, maximum=MAX_ID)


# -- users -----------------------------------------------------------------------------------------------------
@bp.get("/admin/users")
@admin_required
def users_page():
    """Every account: add one, change a role, disable or enable, reset a password."""
    return render_template("admin/users.html", page="users", users=services_of().store.list_users(), roles=ROLES)


@bp.get("/api/users")
@admin_required
def users():
    return jsonify({"users": services_of().store.list_users()})


@bp.post("/api/users")
@admin_required
def add_user():
    """Create an account with a one-time password, answered once (201); the user must change it at first login."""
    body = json_body('{"name": "dr.lee", "role": "clinician"}')
    name, role = body_str(body, "name", required=True) or "", body_str(body, "role", required=True) or ""
    store = services_of().store
    password = store.invite_user(name, role, by=current_user.name)
    return jsonify({"user": store.public_user(name), "one_time_password": password}), 201


@bp.patch("/api/users/<name>")
@admin_required
def change_user(name: str):
    """Change a role, disable or enable the account, and/or require a new password at the next login."""
    body = json_body('{"role": "admin"}, {"disabled": true} or {"must_change_password": true}')
    store = services_of().store
    role, disabled, expire = body_str(body, "role"), body.get("disabled"), body.get("must_change_password")
    if role is None and disabled is None and expire is None:
        raise UserError("say what to change: role, disabled and/or must_change_password", 400)
    for field, value in (("disabled", disabled), ("must_change_password", expire)):
        if value is not None and not isinstance(value, bool):
            raise UserError(f"{field} must be true or false", 400, {field: "true or false"})
    if expire is False:
        raise UserError("must_change_password can only be set (true): the user clears it by choosing a password",
                        400, {"must_change_password": "true"})
    if role is not None:
        store.set_role(name, role, by=current_user.name)
    if disabled is not None:
        store.set_disabled(name, disabled, by=current_user.name)
    if expire:
        store.require_new_password(name, by=current_user.name)
    return jsonify({"user": store.public_user(name)})


@bp.post("/api/users/<name>/reset-password")
@admin_required
def reset_password(name: str):
    """A new one-time password for ``name`` (answered once); their old password stops working."""
    password = services_of().store.reset_password(name, by=current_user.name)
    return jsonify({"user": name, "one_time_password": password})


# -- audit -----------------------------------------------------------------------------------------------------
def _filters() -> dict[str, Any]:
    try:
        since, until = time_window(request.args.get("since"), request.args.get("until"))
    except ValueError as exc:
        raise UserError(str(exc), 400, {"since/until": "a date"}) from None
    return {"user": (request.args.get("user") or "").strip() or None, "run_id": arg("run_id", RUN_ID),
            "action": (request.args.get("action") or "").strip() or None, "since": since, "until": until}


def _rows() -> list[dict[str, Any]]:
    return services_of().store.audit_log(limit=arg("limit", LIMIT), before_id=arg("before_id", BEFORE_ID),
                                         **_filters())


@bp.get("/admin/audit")
@admin_required
def audit_page():
    """The audit log with filters (user, model, date, action) and a CSV export of what is shown."""
    store = services_of().store
    return render_template("admin/audit.html", page="audit", rows=_rows(), actions=store.audit_actions(),
                           users=[u["name"] for u in store.list_users()], args=request.args,
                           query=request.query_string.decode())


@bp.get("/api/audit")
@admin_required
def audit():
    rows = _rows()
    return jsonify({"rows": rows, "next_before_id": rows[-1]["id"] if rows else None})


@bp.get("/api/audit.csv")
@admin_required
def audit_csv():
    """The filtered audit log as CSV (``detail`` as JSON text), for a spreadsheet or an archive."""
    return Response(rows_to_csv(_rows()), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="busi-web-audit.csv"'})
