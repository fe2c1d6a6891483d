"""Login throttling with Flask-Limiter: failed logins are counted per account and per client address.

Only failures count (a 401 from the login form), so people who type their
password right are never slowed down; once a limit is reached, every login
for that account (or from that address) gets a 429, the right password too,
until the window has passed. The limits are ``LOGIN_LIMIT_ACCOUNT`` and
``LOGIN_LIMIT_ADDRESS`` (Flask-Limiter's notation, ``;`` between several);
the counters live where ``RATELIMIT_STORAGE_URI`` says: ``memory://`` by
default (one gunicorn worker), ``redis://host:6379`` for several. Each
refusal is audited as ``login.throttled``. Behind a reverse proxy the
address is the client's only when ``PROXY_FIX`` trusts the proxy's
``X-Forwarded-For``.
"""

from __future__ import annotations

from flask import Flask, render_template, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded

from busi_web.services import services_of
from busi_web.web.auth import safe_next
from busi_web.web.helpers import reply_error, wants_json

EXTENSION = "busi_web.throttle"


def _address() -> str:
    return request.remote_addr or "unknown"


def _account() -> str:
    name = (request.form.get("username") or "").strip().lower()[:64]
    return f"account:{name}" if name else f"address:{_address()}"


def _failed(response) -> bool:
    return response.status_code == 401


def _audit(limit: RequestLimit) -> None:
    services_of().store.audit("login.throttled", user=(request.form.get("username") or "").strip()[:64] or None,
                              ip=_address(), limit=str(limit.limit), key=limit.key.split("/")[-1][:80])


def init_throttle(app: Flask, view_endpoint: str = "auth.login") -> Limiter:
    """Give ``app`` its own limiter (its own counters) and put both limits on the login form's POST."""
    limiter = Limiter(_address, app=app, storage_uri=app.config.get("RATELIMIT_STORAGE_URI") or "memory://",
                      headers_enabled=True, key_prefix="busi-web-login")
    view = app.view_functions[view_endpoint]
    for limit, key in ((app.config["LOGIN_LIMIT_ACCOUNT"], _account), (app.config["LOGIN_LIMIT_ADDRESS"], _address)):
        view = limiter.limit(limit, key_func=key, methods=["POST"], deduct_when=_failed, on_breach=_audit,
                             scope=f"login-{key.__name__.strip('_')}")(view)
    app.view_functions[view_endpoint] = view
    app.extensions[EXTENSION] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many)
    return limiter


def _too_many(exc: RateLimitExceeded):
    """A clear 429: which limit, and what to do (the login page shows it next to the form)."""
    what = "this account" if "account" in str(getattr(exc.limit, "scope", "")) else "this address"
    message = (f"too many failed logins for {what} ({exc.limit.limit}); wait and try again later, or ask an "
               "administrator to reset the password")
    if wants_json():
        return reply_error(message, 429)
    return render_template("auth/login.html", error=message, username=(request.form.get("username") or "").strip(),
                           next=safe_next(request.values.get("next"))), 429
