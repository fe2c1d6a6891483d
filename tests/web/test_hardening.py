"""Security headers, Secure cookies behind TLS, the trusted proxy's view, and Socket.IO's origin check."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ADMIN, ROOT, login

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def test_every_answer_carries_the_security_headers(app, admin_client):
    answers = {"page": admin_client.get("/"), "api": admin_client.get("/api/runs"),
               "error": admin_client.get("/api/runs/999"), "login": app.test_client().get("/login"),
               "static": admin_client.get("/static/css/app.css")}
    for what, r in answers.items():
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, what
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff", what
        assert r.headers["Referrer-Policy"] == "same-origin", what
        assert "Strict-Transport-Security" not in r.headers  # plain HTTP: no HSTS
    assert all(answers[w].headers["Cache-Control"] == "no-store" for w in ("page", "api", "error", "login"))
    assert "no-store" not in answers["static"].headers.get("Cache-Control", "")


def test_the_templates_need_no_inline_script_or_style():
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{path}: inline <script>"
        assert not re.search(r"\sstyle=", text), f"{path}: inline style attribute"
        assert not re.search(r"\son[a-z]+=", text), f"{path}: inline event handler"


def session_cookie(response) -> str:
    return next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("session="))


def test_cookies_are_secure_over_tls_directly_or_through_a_trusted_proxy(make_app):
    direct = make_app().test_client()
    assert "Secure" not in session_cookie(login(direct, *ADMIN))
    tls = make_app().test_client()
    r = tls.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]}, base_url="https://busi.example.org")
    assert "; Secure" in session_cookie(r) and "HttpOnly" in session_cookie(r)
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    # X-Forwarded-Proto counts only from a trusted proxy (PROXY_FIX), else anyone could claim TLS.
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    untrusted = make_app().test_client()
    untrusted.get("/login", headers=forwarded)
    r = untrusted.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]}, headers=forwarded)
    assert "Secure" not in session_cookie(r)
    app = make_app(PROXY_FIX=1)
    proxied = app.test_client()
    r = proxied.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]}, headers=forwarded)
    assert "; Secure" in session_cookie(r)
    # ... and the client address is the proxy's X-Forwarded-For (the audit log and throttling see it).
    assert app.extensions["busi_web"].store.audit_log("login")[0]["detail"]["ip"] == "203.0.113.7"
    always = make_app(SESSION_COOKIE_SECURE=True).test_client()
    assert "; Secure" in session_cookie(login(always, *ADMIN))


def test_socketio_accepts_only_the_sites_own_origin(make_app):
    client = make_app().test_client()
    login(client, *ADMIN)
    own = client.get(HANDSHAKE, headers={"Origin": "http://localhost"})
    assert own.status_code == 200 and '"sid"' in own.get_data(as_text=True)
    evil = client.get(HANDSHAKE, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 400 and "Not an accepted origin" in evil.get_data(as_text=True)
    # With PUBLIC_URL, only that origin, whatever Host the request names.
    client = make_app(PUBLIC_URL="https://busi.example.org").test_client()
    login(client, *ADMIN)
    assert client.get(HANDSHAKE, headers={"Origin": "https://busi.example.org"}).status_code == 200
    assert client.get(HANDSHAKE, headers={"Origin": "http://localhost"}).status_code == 400


def test_a_malformed_public_url_stops_the_start_with_its_message(make_app):
    with pytest.raises(ValueError, match="PUBLIC_URL must be http"):
        make_app(PUBLIC_URL="busi.example.org")
