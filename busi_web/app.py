"""The Flask application factory."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask

from busi_web.cli import register_commands
from busi_web.config import ROOT, instance_path_from_env, load_settings
from busi_web.errors import UserError
from busi_web.plugins import load_plugins
from busi_web.services import EXTENSION, make_services
from busi_web.web import init_web

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None, plugins: Iterable[object] = ()) -> Flask:
    """Build the app: config from defaults, ``instance/config.py``, ``BUSI_WEB_*`` env, then ``config``.

    ``config`` may carry ``INSTANCE_PATH`` (tests use a temporary folder);
    otherwise ``BUSI_WEB_INSTANCE_PATH`` or the project's ``instance/``.
    ``plugins`` are plugin objects (modules or instances with hook
    implementations) registered after the installed ones, as if installed:
    how a plugin's own tests run it without packaging it (see :mod:`busi_web.testing`).
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
    try:
        app.config.update(load_settings(app.instance_path, overrides))
    except UserError:
        raise
    except ValueError as exc:  # a setting or the settings file is wrong: said in one line, with the name at fault
        raise UserError(str(exc)) from None

    registry = load_plugins(app.config["ALLOWED_PLUGINS"])
    for plugin in plugins:
        if not registry.pm.is_registered(plugin):  # an installed plugin passed again (a plugin's tests)
            registry.register(plugin)
    for name in registry.unknown_allowed():
        log.warning("ALLOWED_PLUGINS names %r, which no installed plugin is called: a typo disables the plugin it "
                    "meant (installed: %s)", name, ", ".join(sorted(p.name for p in registry.plugins if not p.builtin))
                    or "none")
    app.extensions[EXTENSION] = make_services(app.config, registry)
    init_web(app)
    register_commands(app)
    registry.call_startup(app)
    return app
