"""Login throttling with Flask-Limiter: failed logins are counted per client address, and per address and
account together; repeated failures on one account slow its answers down instead of locking it.

Only failures count (a 401 from the login form), so people who type their
password right are never slowed down by their own successes. The two hard
limits are ``LOGIN_LIMIT_ACCOUNT`` (per address *and* account: a stranger
at another address cannot lock a colleague out) and ``LOGIN_LIMIT_ADDRESS``
(per address, whatever account it tries); past one, that address gets a
429 until the window has passed. Across addresses an account is never
locked: each failed login on it answers a little later (0.25 s doubling
from the third failure within :data:`WINDOW_S`, at most :data:`MAX_DELAY_S`),
which makes guessing slow and costs its owner a few seconds at most. An
administrator's password reset (or disabling and enabling the account)
starts every count of that account afresh: the counts are keyed by the
account's session version, which those acts raise. (OWASP's Authentication
Cheat Sheet: throttle, do not lock; see docs/hardening.md.)

The counters live where ``RATELIMIT_STORAGE_URI`` says: ``memory://`` by
default (one gunicorn worker), ``redis://host:6379`` for several, so a
limit hit on one worker holds on the others. Each refusal is audited as
``login.throttled``. Behind a reverse proxy the address is the client's only
when ``PROXY_FIX`` trusts the proxy's ``X-Forwarded-For``. While Redis cannot
be reached, each process counts in its own memory (Flask-Limiter's fallback).
"""

from __future__ import annotations

import time

from flask import Flask, current_app, render_template, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded

from busi_web.services import services_of
from busi_web.store.users import name_key
from busi_web.web.auth import safe_next
from busi_web.web.helpers import reply_error, wants_json

EXTENSION = "busi_web.throttle"


def _address() -> str:
    return request.remote_addr or "unknown"


WINDOW_S = 900  # failures on one account within 15 minutes slow its answers down
FIRST_DELAYED = 3  # the failure from which answers are slowed
MAX_DELAY_S = 5.0


def _account_key() -> str:
    """The account typed in the form, as counts are kept for it: its name key and its session version (an
    admin's reset raises the version, so every count of the account starts afresh); the address when no name
    was given."""
    name = (request.form.get("username") or "").strip()[:64]
    if not name:
        return f"address:{_address()}"
    user = services_of().store.get_user(name)
    return f"account:{name_key(name)}:{user['session_version'] if user else 'none'}"


def _account() -> str:
    return f"{_address()}|{_account_key()}"


def failure_delay(failures: int) -> float:
    """Seconds a failed login waits when its account has ``failures`` failures in the window (this one too)."""
    if failures < FIRST_DELAYED:
        return 0.0
    return min(MAX_DELAY_S, 0.25 * 2 ** (failures - FIRST_DELAYED))


def slow_down_failures(response):
    """After a failed login: count it against the account (any address) and answer later the more it fails."""
    if request.endpoint != "auth.login" or request.method != "POST" or response.status_code != 401:
        return response
    limiter = current_app.extensions.get(EXTENSION)
    if limiter is None:
        return response
    key = f"busi-web-login-failures/{_account_key()}"
    try:
        failures = int(limiter.storage.incr(key, WINDOW_S))
    except Exception:  # noqa: BLE001 - a counter store that is down must not stop logins
        return response
    delay = failure_delay(failures)
    if delay:
        time.sleep(delay)
    return response


def _failed(response) -> bool:
    return response.status_code == 401


def _audit(limit: RequestLimit) -> None:
    services_of().store.audit("login.throttled", user=(request.form.get("username") or "").strip()[:64] or None,
                              ip=_address(), limit=str(limit.limit), key=limit.key.split("/")[-1][:80])


def init_throttle(app: Flask, view_endpoint: str = "auth.login") -> Limiter:
    """Give ``app`` its own limiter (its own counters) and put both limits on the login form's POST."""
    storage = app.config.get("RATELIMIT_STORAGE_URI") or "memory://"
    # Shared counters (Redis) that cannot be reached: each process counts on its own until they can, so logins
    # go on and are still limited (per process) while Redis is away.
    limiter = Limiter(_address, app=app, storage_uri=storage, headers_enabled=True, key_prefix="busi-web-login",
                      in_memory_fallback_enabled=not storage.startswith("memory://"))
    view = app.view_functions[view_endpoint]
    for limit, key in ((app.config["LOGIN_LIMIT_ACCOUNT"], _account), (app.config["LOGIN_LIMIT_ADDRESS"], _address)):
        view = limiter.limit(limit, key_func=key, methods=["POST"], deduct_when=_failed, on_breach=_audit,
                             scope=f"login-{key.__name__.strip('_')}")(view)
    app.view_functions[view_endpoint] = view
    app.extensions[EXTENSION] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many)
    app.after_request(slow_down_failures)
    return limiter


def _too_many(exc: RateLimitExceeded):
    """A clear 429: which limit, and what to do (the login page shows it next to the form)."""
    what = ("this account from this address" if "account" in str(getattr(exc.limit, "scope", ""))
            else "this address")
    message = (f"too many failed logins for {what} ({exc.limit.limit}); wait and try again later. Logins from "
               "other addresses are not affected, and an administrator's password reset lifts it")
    if wants_json():
        return reply_error(message, 429)
    return render_template("auth/login.html", error=message, username=(request.form.get("username") or "").strip(),
                           next=safe_next(request.values.get("next"))), 429
