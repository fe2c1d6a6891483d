"""The configured DICOMweb endpoints (``PACS_SERVERS``), checked when the app starts.

``PACS_SERVERS`` maps a name to one endpoint::

    PACS_SERVERS = {
        "orthanc": {"url": "http://pacs.hospital.local:8042/dicom-web", "auth": "basic",
                    "username": "busi-web", "password_file": "/run/secrets/pacs-password"},
        "dcm4chee": {"url": "https://pacs2.hospital.local/dcm4chee-arc/aets/DCM4CHEE/rs", "auth": "bearer",
                     "token_file": "/run/secrets/pacs-token", "verify": "/etc/ssl/hospital-ca.pem"},
    }

Keys: ``url`` (the DICOMweb root: QIDO-RS, WADO-RS and STOW-RS under it), ``auth`` (``none``, ``basic`` or
``bearer``), ``username`` and ``password`` or ``password_file``, ``token`` or ``token_file``, ``timeout``
(seconds, default 10), ``verify`` (``true``, ``false`` or a CA bundle's path for HTTPS), ``write_back``
(default ``true``: results may be stored into this PACS), ``title`` (shown on the Studies page).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
AUTHS = ("none", "basic", "bearer")
KEYS = {"url", "auth", "username", "password", "password_file", "token", "token_file", "timeout", "verify",
        "write_back", "title"}


@dataclass(frozen=True)
class Endpoint:
    """One DICOMweb endpoint. Secrets stay here: :meth:`public` is what pages and answers may show."""

    name: str
    url: str
    auth: str = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    verify: bool | str = True
    write_back: bool = True
    title: str = ""

    def public(self) -> dict[str, Any]:
        """Name, title, the server's address (no path, no credentials), the kind of login, write-back."""
        host = re.sub(r"^(\w+://)?([^@/]*@)?([^/]+).*$", r"\1\3", self.url)
        return {"name": self.name, "title": self.title or self.name, "server": host, "auth": self.auth,
                "write_back": self.write_back}


def _secret(name: str, spec: dict[str, Any], key: str) -> str | None:
    if spec.get(key) is not None:
        return str(spec[key])
    path = spec.get(f"{key}_file")
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"PACS_SERVERS[{name!r}].{key}_file cannot be read ({exc.strerror}): {path}") from None


def endpoints_from(config: dict[str, Any]) -> dict[str, Endpoint]:
    """The endpoints of ``config["PACS_SERVERS"]``; ``ValueError`` naming the endpoint and the key otherwise."""
    raw = config.get("PACS_SERVERS") or {}
    if not isinstance(raw, dict):
        raise ValueError('PACS_SERVERS must map names to endpoints, e.g. {"orthanc": {"url": '
                         '"http://pacs:8042/dicom-web"}}')
    out = {}
    for name, spec in raw.items():
        where = f"PACS_SERVERS[{name!r}]"
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{where}: a name is lower-case letters, digits, '-' or '_' (at most 32)")
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be an object with at least a url")
        unknown = sorted(set(spec) - KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(KEYS))}")
        url = str(spec.get("url") or "").rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{where}.url must be an http:// or https:// DICOMweb root, got {spec.get('url')!r}")
        auth = str(spec.get("auth") or "none").lower()
        if auth not in AUTHS:
            raise ValueError(f"{where}.auth must be one of {', '.join(AUTHS)}, got {spec.get('auth')!r}")
        password, token = _secret(name, spec, "password"), _secret(name, spec, "token")
        if auth == "basic" and (not spec.get("username") or password is None):
            raise ValueError(f"{where}: basic auth needs username and password (or password_file)")
        if auth == "bearer" and not token:
            raise ValueError(f"{where}: bearer auth needs token (or token_file)")
        try:
            timeout = float(spec.get("timeout", 10))
        except (TypeError, ValueError):
            timeout = -1.0
        if not 0 < timeout <= 600:
            raise ValueError(f"{where}.timeout must be seconds between 0 and 600, got {spec.get('timeout')!r}")
        verify = spec.get("verify", True)
        if not isinstance(verify, (bool, str)):
            raise ValueError(f"{where}.verify must be true, false or a CA bundle's path")
        out[name] = Endpoint(name=name, url=url, auth=auth, username=spec.get("username"), password=password,
                             token=token, timeout=timeout, verify=verify, write_back=bool(spec.get("write_back", True)),
                             title=str(spec.get("title") or ""))
    return out
