"""The Flask application factory."""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Mapping

from flask import Flask

from .config import DEFAULTS, ROOT, env_overrides, finalise, instance_path_from_env
from .plugins import PluginRegistry, load_plugins

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config from defaults, ``instance/config.py``, ``BUSI_WEB_*`` env, then ``config``.

    ``config`` may carry ``INSTANCE_PATH`` (tests use a temporary folder);
    otherwise ``BUSI_WEB_INSTANCE_PATH`` or the project's ``instance/``.
    """
    overrides = dict(config or {})
    instance_path = overrides.pop("INSTANCE_PATH", None) or instance_path_from_env() or str(ROOT / "instance")
    app = Flask(
        "busi_web",
        instance_path=str(instance_path),
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.update(env_overrides())
    app.config.update(overrides)
    finalise(app.config, app.instance_path)

    registry = load_plugins(app.config["ALLOWED_PLUGINS"])
    app.extensions["busi_plugins"] = registry

    from .store import JobStore

    app.extensions["busi_store"] = JobStore(app.config["DATABASE"], app.config["RUNS_DIR"])

    from . import errors
    from .auth import init_auth
    from .cli import register_commands
    from .live import socketio
    from .web import register_blueprints

    errors.register(app)
    init_auth(app)
    register_blueprints(app)
    register_commands(app)
    socketio.init_app(app, async_mode="threading", cors_allowed_origins=[])
    registry.call_startup(app)
    return app


def plugins_of(app: Flask) -> PluginRegistry:
    return app.extensions["busi_plugins"]
