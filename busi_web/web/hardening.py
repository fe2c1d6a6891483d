"""What every answer carries for a hospital network: security headers, the proxy's view, Secure cookies, origins.

* Headers on every answer: a content security policy that the app's own
  pages satisfy (scripts, styles and connections from this site only, no
  inline script or style; images also from ``data:`` and ``blob:`` for the
  heatmaps), ``frame-ancestors 'none'`` with ``X-Frame-Options: DENY``,
  ``nosniff``, ``Referrer-Policy: same-origin``, a closed
  ``Permissions-Policy``, and ``Cache-Control: no-store`` on everything but
  static files (answers hold patients' images and results). Behind TLS also
  ``Strict-Transport-Security``.
* ``PROXY_FIX = N`` trusts N reverse proxies' ``X-Forwarded-For/-Proto/-Host/
  -Prefix`` (werkzeug's ProxyFix), so the client address (login throttling,
  the audit log) and the scheme are the real ones.
* The session cookie is ``Secure`` whenever the request came over TLS (seen
  directly or through the trusted proxy), or always with
  ``SESSION_COOKIE_SECURE``.
* Socket.IO accepts a connection only from the site's own origin:
  ``PUBLIC_URL`` (one URL or a list) when it is set, else the scheme and
  host the request was made to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class TlsAwareSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with ``Secure`` set on cookies of requests that came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _security_headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", _csp())
    for name, value in HEADERS.items():
        headers.setdefault(name, value)
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        headers.setdefault("Cache-Control", "no-store")
    return response


def _csp() -> str:
    return current_app.config.get("CONTENT_SECURITY_POLICY") or CSP


def public_origins(config: Mapping[str, Any]) -> list[str]:
    """The origins of ``PUBLIC_URL`` (``scheme://host[:port]``, no path), or ``[]`` when it is not set."""
    urls = config.get("PUBLIC_URL") or []
    if isinstance(urls, str):
        urls = [u for u in urls.replace(",", " ").split() if u]
    origins = []
    for url in urls:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"PUBLIC_URL must be http(s)://host[:port], got {url!r}")
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return origins


def origin_checker(config: Mapping[str, Any]):
    """The Socket.IO origin rule: ``PUBLIC_URL``'s origins, else the request's own scheme and host."""
    configured = public_origins(config)

    def allowed(origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        if not origin:
            return True  # not a browser (browsers always send Origin on a WebSocket or a cross-site request)
        if configured:
            return origin.lower() in configured
        environ = environ or {}
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}".lower()
        return origin.lower() == own

    return allowed


def init_hardening(app: Flask) -> None:
    """Install the headers, the TLS-aware session cookie and, with ``PROXY_FIX``, werkzeug's ProxyFix (outermost,
    so the Socket.IO server sees the proxy's view too). Call after everything else wraps ``wsgi_app``."""
    public_origins(app.config)  # a malformed PUBLIC_URL stops the start with its message
    app.session_interface = TlsAwareSessions()
    app.after_request(_security_headers)
    proxies = int(app.config.get("PROXY_FIX") or 0)
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_prefix=proxies)
