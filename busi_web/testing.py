"""Testing a plugin without installing it: its tests register it beside the installed plugins.

A plugin's own tests (pytest or any runner) can do::

    from busi_web.testing import make_app, registry_with
    import my_plugin

    def test_my_backbone_trains(tmp_path):
        registry = registry_with(my_plugin)          # the installed plugins plus mine
        assert "mobilenet_v3" in registry.backbones
        app = make_app(tmp_path, my_plugin)          # a whole app on a throwaway instance folder
        client = app.test_client()
        ...

The plugin object is a module (or any object) with ``@hookimpl`` functions,
exactly what its entry point would name. A hook name the contract does not
have, a hook that raises, or a name taken already is reported on the
registry's :class:`~busi_web.plugins.PluginInfo` (``status`` and ``errors``),
as it would be for an installed plugin.

Training runs in a trainer process of its own, which loads the installed
plugins only: to train with a backbone or dataset that is not installed,
call :func:`busi_web.training.trainer.run_training` in the test's process
with the registry from :func:`registry_with` (or ``pip install -e`` the plugin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from busi_web.app import create_app
from busi_web.plugins import PluginInfo, PluginRegistry, load_plugins

__all__ = ["make_app", "registry_with", "info_of"]


def registry_with(*plugins: object, allowed: list[str] | None = None) -> PluginRegistry:
    """The installed plugins (or those ``allowed``) plus ``plugins``, registered as if installed."""
    registry = load_plugins(allowed)
    for plugin in plugins:
        registry.register(plugin)
    return registry


def make_app(instance_path: str | Path, *plugins: object, **config: Any) -> Flask:
    """An app on ``instance_path`` (a temporary folder) with ``plugins`` registered beside the installed ones.

    ``config`` overrides settings (``MAX_UPLOAD_MB=5``, ...). No first-start run is started and CSRF is off,
    so a test client can post forms directly; log in with a user you add through the store.
    """
    settings = {"INSTANCE_PATH": str(instance_path), "SECRET_KEY": "testing", "TESTING": True,
                "AUTO_FIRST_RUN": False, "WTF_CSRF_ENABLED": False, **config}
    return create_app(settings, plugins=plugins)


def info_of(registry: PluginRegistry, plugin: object) -> PluginInfo:
    """What the registry recorded about ``plugin``: its status, errors and what it registered."""
    name = getattr(plugin, "__name__", type(plugin).__name__)
    for info in registry.plugins:
        if info.name == name:
            return info
    raise KeyError(f"{name!r} was not registered; pass it to registry_with() or make_app()")
