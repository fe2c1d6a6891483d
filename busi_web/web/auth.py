"""Authentication and authorisation: sessions (Flask-Login), API tokens, roles and CSRF.

Rules, enforced by one ``before_request`` guard for the whole app:

* every endpoint needs a logged-in user except :data:`PUBLIC_ENDPOINTS`
  (the login page and static files); pages redirect to ``/login?next=...``,
  ``/api/*`` answers 401 JSON;
* a request may instead carry ``Authorization: Bearer <token>`` (an API token
  that an admin created with ``busi-web tokens create``); such requests are
  exempt from CSRF, since a browser never adds that header by itself;
* every other POST/PUT/PATCH/DELETE must carry the CSRF token (form field
  ``csrf_token`` or header ``X-CSRFToken``) unless ``WTF_CSRF_ENABLED`` is off;
* :func:`admin_required` gives 403 to a clinician;
* a user still on a one-time password (the first admin) reaches only the
  change-password page (pages redirect there, the API answers 403);
* the Socket.IO connect handler refuses anonymous clients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import AnonymousUserMixin, LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.security import check_password_hash

from busi_web.config import forget_admin_password_file
from busi_web.directory import directory_from_config
from busi_web.errors import UserError
from busi_web.services import services_of
from busi_web.store.passwords import MIN_LENGTH, RULES
from busi_web.store.users import DIRECTORY
from busi_web.web.helpers import wants_json
from busi_web.web.metrics import metrics_token_ok

__all__ = ["init_auth", "admin_required", "current_user", "User", "bp", "csrf", "login_manager",
           "PUBLIC_ENDPOINTS", "safe_next"]

# The metrics decide themselves (an admin, or the METRICS_TOKEN): a scraper gets a 401, not the login page.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "health.healthz", "health.readyz", "health.favicon",
                              "metrics.scrape"})
# What a user who still has a one-time password may reach (besides the public endpoints).
CHANGE_PASSWORD_ALLOWED = frozenset({"auth.password", "auth.logout", "system.me"})
DIRECTORY_EXTENSION = "busi_web.directory"

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
csrf = CSRFProtect()

F = TypeVar("F", bound=Callable[..., Any])


class User(UserMixin):
    """The logged-in user as views see it through ``current_user``."""

    def __init__(self, row: dict[str, Any]):
        self.id = int(row["id"])
        self.name: str = row["name"]
        self.role: str = row["role"]
        self.must_change_password = bool(row.get("must_change_password"))
        self.session_version = int(row.get("session_version") or 0)
        self.source: str = row.get("source") or "local"  # "directory": the password lives in the LDAP directory

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def get_id(self) -> str:
        """What the session keeps: the id and the session version (a raised version ends the session)."""
        return f"{self.id}:{self.session_version}"

    def __repr__(self) -> str:
        return f"<User {self.name} ({self.role})>"


class Anonymous(AnonymousUserMixin):
    """Nobody logged in: the same attributes as :class:`User`, all empty."""

    name = None
    role = None
    is_admin = False
    must_change_password = False


def _store():
    return services_of().store


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    try:
        uid, _, version = str(user_id).partition(":")
        row = _store().get_user_by_id(int(uid))
        version_ok = row is not None and int(version or -1) == int(row.get("session_version") or 0)
    except (TypeError, ValueError):
        return None
    # A session of an older version (logout elsewhere, a password or role change) or of a disabled user is over.
    return User(row) if row and version_ok and not row.get("disabled") else None


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def safe_next(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site, else ``default`` (no open redirect to another host)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def _guard():
    """Authenticate the request (token or session), then refuse anonymous users and check CSRF."""
    g.api_token = False
    token = _bearer_token()
    if token is not None and request.endpoint == "metrics.scrape" and metrics_token_ok(token):
        g.metrics_token = True  # Prometheus' own token: it opens the metrics and nothing else
        return None
    if token is not None:
        row = _store().user_for_token(token)
        if row is None:
            raise UserError("the API token is invalid or was revoked; ask an administrator for a new one "
                            "(`busi-web tokens create NAME`)", 401)
        # A token authenticates this request only: it must not write a session cookie, so the user is put
        # where Flask-Login looks for the current user instead of calling login_user().
        g._login_user = User(row)
        g.api_token = True
        if row.get("must_change_password"):  # a token must not get round the one-time password
            raise UserError(f"{row['name']} must choose a new password first (log in at /login); until then API "
                            "tokens answer nothing", 403)
        return None
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        if request.path.startswith("/api/") or request.path == "/api" or wants_json():
            if session.get("_user_id"):  # a browser whose session was ended (logout elsewhere, disabled, reset)
                raise UserError("your session has ended (you were logged out, or an administrator changed your "
                                "account): log in again", 401)
            raise UserError("login required: log in at /login, or send 'Authorization: Bearer <token>' "
                            "with an API token", 401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if current_user.must_change_password and request.endpoint not in PUBLIC_ENDPOINTS | CHANGE_PASSWORD_ALLOWED:
        # A one-time password opens only the page that replaces it.
        if request.path.startswith("/api/") or wants_json():
            raise UserError("you are logged in with a one-time password: choose your own at /account/password "
                            "first", 403)
        return redirect(url_for("auth.password", next=request.full_path.rstrip("?")))
    if current_app.config.get("WTF_CSRF_ENABLED", True):
        try:
            csrf.protect()
        except CSRFError as exc:
            raise UserError(f"CSRF check failed ({(exc.description or 'no token').rstrip('.')}): reload the page "
                            "and try again; scripts send the page's csrf-token as header X-CSRFToken or use an "
                            "API token", 400) from None
    return None


def init_auth(app: Flask) -> None:
    """Install login, API tokens, CSRF and the login guard on ``app`` (call once from ``create_app``)."""
    # CSRF is checked by our guard (after token authentication) rather than by Flask-WTF's own hook.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session: long-open pages keep working
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:  # Flask's default is None: no cross-site cookies
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.extensions[DIRECTORY_EXTENSION] = directory_from_config(app.config)  # None without LDAP_URL
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.anonymous_user = Anonymous
    app.register_blueprint(bp)
    app.before_request(_guard)


def admin_required(view: F) -> F:
    """Decorator: only admins may call ``view``; a clinician gets 403 (JSON under /api, else the error page)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any):
        if not current_user.is_authenticated:
            raise UserError("login required: log in at /login", 401)
        if not current_user.is_admin:
            raise UserError(f"only an administrator may do this; {current_user.name} is a {current_user.role}", 403)
        return view(*args, **kwargs)

    wrapper.admin_only = True  # type: ignore[attr-defined]  # lets the security test find every admin route
    return wrapper  # type: ignore[return-value]


# -- views ---------------------------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in with a user name and password; then go to ``next`` (a path on this site) or home."""
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET" and current_user.is_authenticated:
        return redirect(next_url)
    error = None
    status = 200
    username = ""
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        try:
            row = _authenticate(username, request.form.get("password") or "")
        except UserError as exc:  # the directory is down (503), or the user is in none of its groups (403)
            _store().audit("login.refused", user=username[:64] or None, ip=request.remote_addr, reason=str(exc))
            # The login page is for anonymous visitors: the directory's address stays in the audit and the log.
            row, error, status = None, getattr(exc, "public", None) or str(exc), exc.status
        if row is None and error is None and _disabled_with_right_password(username, request.form.get("password")):
            _store().audit("login.refused", user=username[:64] or None, ip=request.remote_addr, reason="disabled")
            error, status = "this account is disabled; ask an administrator to enable it", 403
        elif row is None and error is None:
            _store().audit("login.failed", user=username[:64] or None, ip=request.remote_addr)
            error, status = "wrong user name or password", 401
        elif row is not None:
            user = User(row)
            login_user(user)
            _store().audit("login", user=user.name, ip=request.remote_addr)
            if user.must_change_password:
                flash("You are using a one-time password: choose your own now.", "warning")
                return redirect(url_for("auth.password", next=next_url))
            return redirect(next_url)
    return render_template("auth/login.html", error=error, username=username, next=next_url), status


def _disabled_with_right_password(username: str, password: str | None) -> bool:
    """Whether ``username`` is a disabled local account and ``password`` is its password (only then may the
    answer say the account is disabled: a stranger learns nothing from it)."""
    user = _store().get_user(username)
    return bool(user and user.get("disabled") and user.get("source") != DIRECTORY
                and check_password_hash(user["password_hash"], password or ""))


def _authenticate(username: str, password: str) -> dict[str, Any] | None:
    """The user row when the password is right: a local account's own, else the directory's (when one is set
    and the name is not a local account). Raises the directory's 503 or 403."""
    store = _store()
    row = store.check_password(username, password)
    directory = current_app.extensions.get(DIRECTORY_EXTENSION)
    if row is not None or directory is None:
        return row
    existing = store.get_user(username)
    if existing is not None and existing.get("source") != DIRECTORY:
        return None  # a local account's name: only its local password opens it
    found = directory.authenticate(username, password)
    return None if found is None else store.directory_login(found.name, found.role)


@bp.post("/logout")
def logout():
    """Log out (POST with the CSRF token, so another site cannot log a user out): every session of the user
    ends, on every device, and a cookie saved before no longer works."""
    name = current_user.name
    logout_user()
    if name:
        _store().end_sessions(name)  # every session of this user ends, on every device
        _store().audit("logout", user=name)
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
def password():
    """Change one's own password (the current one is asked again)."""
    next_url = safe_next(request.values.get("next"))
    error, status = None, 200
    if current_user.source == DIRECTORY:
        error, status = "your password is managed by the hospital directory; change it there", 400
    elif request.method == "POST":
        store = _store()
        new = request.form.get("new_password") or ""
        if store.check_password(current_user.name, request.form.get("current_password") or "") is None:
            error, status = "the current password is wrong", 400
        elif new != (request.form.get("confirm_password") or ""):
            error, status = "the two new passwords differ; type the same one twice", 400
        elif new == request.form.get("current_password"):
            error, status = "the new password must differ from the current one", 400
        else:
            try:
                store.set_password(current_user.name, new)
            except UserError as exc:
                error, status = str(exc), 400
            else:
                forget_admin_password_file(current_app.instance_path, current_user.name)
                # Every other session of this user ended with the change; this one goes on, renewed.
                login_user(User(store.get_user(current_user.name)))
                flash("Your password was changed.", "info")
                return redirect(next_url)
    return render_template("auth/password.html", error=error, next=next_url, rules=RULES,
                           min_length=MIN_LENGTH), status
