"""Configuration: defaults, then ``instance/config.py``, then ``BUSI_WEB_*`` environment variables.

Every key is documented in the README's configuration table. Environment
values are parsed as JSON when they look like JSON (``BUSI_WEB_MAX_UPLOAD_MB=50``,
``BUSI_WEB_DATA_DIRS='{"busi": "/data/busi"}'``), otherwise taken as strings.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "BUSI_WEB_"
ADMIN_PASSWORD_FILE = "ADMIN_PASSWORD.txt"  # the first admin's one-time password, until it is changed
ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,  # generated into instance/config.py by `busi-web init`
    "DATABASE": None,  # default: <instance>/busi.db
    "DATABASE_URL": None,  # postgresql://USER:PASSWORD@HOST:5432/NAME: the store on PostgreSQL (wins over DATABASE)
    "RUNS_DIR": None,  # default: <instance>/runs
    "DATA_DIRS": {},  # dataset name -> default data folder
    "MAX_UPLOAD_MB": 20,  # request body limit for uploads
    "MAX_PACS_MB": 300,  # an instance fetched from the PACS may be this large (full-field mammograms are 25-50 MB)
    "MAX_IMAGE_PIXELS": 40_000_000,  # larger images are refused (decompression-bomb guard)
    "MAX_IMAGE_SIDE": 1024,  # uploads are decoded no larger than this on their longer side (0: as they are)
    "DECODE_BUDGET_PIXELS": None,  # pixels decoded at the same time (None: MAX_IMAGE_PIXELS; 0: no limit)
    "ALLOWED_PLUGINS": None,  # None: every installed plugin; else a list of entry-point or distribution names
    "STORE_UPLOADS": False,  # keep uploaded images under <instance>/uploads
    "DEVICE": "auto",  # auto | cpu | cuda | cuda:N, for the predictor and the trainer
    "AUTO_FIRST_RUN": True,  # start a small phantom run when no model exists yet
    "LIVE_POLL_SECONDS": 0.25,  # how often the live pusher reads new metric rows
    "CANCEL_TIMEOUT_SECONDS": 30,  # graceful cancel, then SIGKILL
    # local: the web host trains queued runs itself; remote: it trains nothing, trainer workers (busi-web worker) on
    # other hosts do.
    "TRAINERS": "local",
    # Threads each serving process gives the model's passes (0: torch's default, every core). One thread per
    # worker process leaves the other cores to the request threads and to more workers (docs/scaling.md).
    "TORCH_THREADS": 0,
    "WORKER_HEARTBEAT_SECONDS": 5,  # how often a worker stamps the runs it holds
    "WORKER_STALE_SECONDS": 30,  # a run whose worker has been silent this long is taken back and resumed
    "DEFAULT_EXPLAINER": "gradcam",
    "BATCH_MAX_IMAGES": 32,  # images in one shared pass of the model at most
    "BATCH_WAIT_MS": 0,  # how long a pass waits for more requests to share it (0: it starts at once)
    # Failed logins allowed per client address and account, and per client address, before that address gets a
    # 429 (Flask-Limiter's notation); an account is never locked for everyone (busi_web/web/throttle.py).
    "LOGIN_LIMIT_ACCOUNT": "5 per minute;20 per hour",
    "LOGIN_LIMIT_ADDRESS": "30 per minute;200 per hour",
    # redis://HOST:6379/0: what several web workers or hosts share: the live channel's message queue, and the login
    # counters (unless RATELIMIT_STORAGE_URI names another store).
    "REDIS_URL": None,
    "RATELIMIT_STORAGE_URI": "memory://",  # where the counters live: redis://host:6379 for several workers
    "PUBLIC_URL": None,  # the site's URL as users reach it (https://busi.example.org); Socket.IO accepts only it
    "PROXY_FIX": 0,  # how many reverse proxies to trust for X-Forwarded-For/-Proto/-Host/-Prefix
    "SESSION_COOKIE_SECURE": False,  # Secure cookies always (they are Secure anyway on requests over TLS)
    "CONTENT_SECURITY_POLICY": None,  # None: the built-in policy (busi_web/web/hardening.py)
    "METRICS_TOKEN": None,  # a bearer token that opens GET /metrics (and nothing else) to a Prometheus server
    "REPORT_CACHE_MB": 16,  # memory for the case reports of the newest diagnoses (about 0.5 MB each)
    "PACS_SERVERS": {},  # name -> DICOMweb endpoint (busi_web/pacs/endpoints.py); the Studies page lists them
}


# Numeric settings checked at start (a wrong value stops the start with the key's name, not at the first use).
WHOLE_NUMBERS = {"TORCH_THREADS": int, "MAX_IMAGE_PIXELS": int, "MAX_IMAGE_SIDE": int, "DECODE_BUDGET_PIXELS": int,
                 "PROXY_FIX": int, "BATCH_MAX_IMAGES": int, "BATCH_WAIT_MS": float, "REPORT_CACHE_MB": float,
                 "MAX_PACS_MB": float}


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    out = {}
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "INSTANCE_PATH":
            out[key[len(ENV_PREFIX):]] = _parse_env_value(raw)
    return out


def load_settings(instance_path: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings as the app sees them, without building it: the defaults, then ``<instance>/config.py``, then
    ``BUSI_WEB_*`` environment variables, then ``overrides``, finalised."""
    folder = instance_path or instance_path_from_env() or str(ROOT / "instance")
    config: dict[str, Any] = dict(DEFAULTS)
    config.update(read_config_file(Path(folder) / "config.py"))
    config.update(env_overrides())
    config.update(overrides or {})
    finalise(config, folder)
    return config


def read_config_file(path: Path) -> dict[str, Any]:
    """The UPPERCASE names that the Python file ``path`` (an instance's ``config.py``) sets; none when it is absent."""
    if not path.is_file():
        return {}
    namespace: dict[str, Any] = {"__file__": str(path)}
    try:
        exec(compile(path.read_bytes(), str(path), "exec"), namespace)  # the operator's own settings file
    except Exception as exc:  # noqa: BLE001 - any mistake in the file: one line that says where, not a traceback
        line = getattr(exc, "lineno", None) or _line_of(exc, path)
        what = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ValueError(f"{path}{f', line {line}' if line else ''}: {type(exc).__name__}: {what}; it is a Python "
                         "file of NAME = value lines (fix it, or remove it to start from the defaults)") from None
    return {k: v for k, v in namespace.items() if k.isupper()}


def _line_of(exc: BaseException, path: Path) -> int | None:
    """The line of ``path`` where ``exc`` was raised, from its traceback."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def instance_path_from_env() -> str | None:
    return os.environ.get(ENV_PREFIX + "INSTANCE_PATH")


def finalise(config: dict[str, Any], instance_path: str) -> None:
    """Fill derived values and check types, raising ``ValueError`` naming the key."""
    inst = Path(instance_path)
    config["DATABASE"] = str(config.get("DATABASE_URL") or config.get("DATABASE") or inst / "busi.db")
    config["RUNS_DIR"] = str(config.get("RUNS_DIR") or inst / "runs")
    if config.get("REDIS_URL") and config.get("RATELIMIT_STORAGE_URI") in (None, "", "memory://"):
        config["RATELIMIT_STORAGE_URI"] = config["REDIS_URL"]  # a limit hit on one worker holds on the others
    try:
        mb = float(config["MAX_UPLOAD_MB"])
    except (TypeError, ValueError):
        raise ValueError(f"MAX_UPLOAD_MB must be a number of megabytes, got {config['MAX_UPLOAD_MB']!r}") from None
    if mb <= 0:
        raise ValueError("MAX_UPLOAD_MB must be positive")
    config["MAX_CONTENT_LENGTH"] = int(mb * 1024 * 1024)
    for key, kind in WHOLE_NUMBERS.items():
        value = config.get(key)
        if value is None and key == "DECODE_BUDGET_PIXELS":
            continue  # None: the default, MAX_IMAGE_PIXELS
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, 0 or more, got {value!r}") from None
        if number < 0:
            raise ValueError(f"{key} must be 0 or more, got {value!r}")
        config[key] = number
    if config.get("TRAINERS") not in ("local", "remote"):
        raise ValueError(f"TRAINERS must be local (this host trains) or remote (busi-web worker on other hosts "
                         f"trains), got {config.get('TRAINERS')!r}")
    allowed = config.get("ALLOWED_PLUGINS")
    if isinstance(allowed, str):
        config["ALLOWED_PLUGINS"] = [a.strip() for a in allowed.split(",") if a.strip()]
    if not isinstance(config.get("DATA_DIRS") or {}, dict):
        raise ValueError('DATA_DIRS must map dataset names to folders, e.g. {"busi": "/data/busi"}')
    if not config.get("SECRET_KEY"):
        # An ephemeral key keeps a bare `flask run` working; `busi-web init` writes a stable one.
        config["SECRET_KEY"] = secrets.token_hex(32)
        config["SECRET_KEY_EPHEMERAL"] = True


def write_instance_config(instance_path: str | Path) -> Path:
    """Create ``instance/config.py`` with a generated secret key unless it exists."""
    inst = Path(instance_path)
    inst.mkdir(parents=True, exist_ok=True)
    inst.chmod(0o700)  # the secret key, the database, the runs: owner only
    path = inst / "config.py"
    if not path.exists():
        path.write_text(
            "# busi-web instance configuration (generated by `busi-web init`). Keep it secret.\n"
            "# Every key is documented in README.md; BUSI_WEB_<KEY> environment variables override these.\n"
            f"SECRET_KEY = {secrets.token_hex(32)!r}\n"
        )
        path.chmod(0o600)
    return path


def forget_admin_password_file(instance_path: str | Path, name: str) -> None:
    """Delete ``instance/ADMIN_PASSWORD.txt`` once the user it names has chosen their own password."""
    path = Path(instance_path) / ADMIN_PASSWORD_FILE
    try:
        if path.read_text().split(":", 1)[0].strip() == name:
            path.unlink()
    except OSError:
        pass
