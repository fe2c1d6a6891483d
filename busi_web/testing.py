"""The testing kit for plugin authors: test a plugin whether or not it is installed.

A plugin's own tests (pytest or any runner) can do::

    from busi_web.testing import client_as, isolated_registry, make_app, train_tiny
    import my_plugin

    def test_my_plugin(tmp_path):
        registry = isolated_registry(my_plugin)         # busi-web's built-ins plus mine, whatever is installed
        assert "mobilenet_v3" in registry.backbones
        app = make_app(tmp_path, my_plugin)             # a whole app on a throwaway instance folder
        run_id = train_tiny(app, "mobilenet_v3", "phantom")   # trains through the trainer's own code
        client = client_as(app, "clinician")            # logged in through the login form
        ...

With pytest the same helpers are fixtures (``busi_registry``, ``busi_app``, ``busi_client_as``,
``busi_train_tiny``): busi-web registers them through a ``pytest11`` entry point, so a plugin's tests need no
conftest (:mod:`busi_web.pytest_plugin`).

Whatever is installed does not matter: a plugin that is also installed (``pip install -e .`` while developing)
is the same module object as the one the test passes, and is registered once. ``isolated_registry`` leaves out
every other third-party plugin, so one broken plugin elsewhere in the environment does not fail a plugin's tests.

The plugin object is a module (or any object) with ``@hookimpl`` functions, exactly what its entry point would
name. A hook name the contract does not have, a hook that raises, a bad spec, or a name taken already is
reported on the registry's :class:`~busi_web.plugins.PluginInfo` (``status`` and ``errors``), as it would be for
an installed plugin: :func:`info_of` finds it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from busi_web.app import create_app
from busi_web.plugins import PluginInfo, PluginRegistry, load_plugins
from busi_web.services import services_of

__all__ = ["isolated_registry", "registry_with", "make_app", "client_as", "train_tiny", "info_of", "check",
           "TINY_TRAIN"]

# Training settings that finish in seconds on a CPU (a tiny run proves the plugin trains, not that it learns).
TINY_TRAIN: dict[str, Any] = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "input_size": 32, "resize": 36,
                              "device": "cpu", "workers": 0, "patience": 0, "seed": 1}
# A phantom dataset small enough for TINY_TRAIN.
TINY_PHANTOM: dict[str, Any] = {"size": 40, "per_class": 8, "seed": 1}


def _register(registry: PluginRegistry, plugins: tuple[object, ...]) -> PluginRegistry:
    for plugin in plugins:
        if not registry.pm.is_registered(plugin):  # installed as well (pip install -e): it is there already
            registry.register(plugin)
    return registry


def isolated_registry(*plugins: object) -> PluginRegistry:
    """busi-web's built-in plugins plus ``plugins``, and no other installed third-party plugin."""
    return _register(load_plugins(allowed=[]), plugins)


def registry_with(*plugins: object, allowed: list[str] | None = None) -> PluginRegistry:
    """The installed plugins (or those ``allowed``) plus ``plugins``; a plugin already installed is not
    registered twice."""
    return _register(load_plugins(allowed), plugins)


def make_app(instance_path: str | Path, *plugins: object, isolated: bool = True, **config: Any) -> Flask:
    """An app on ``instance_path`` (a temporary folder) with ``plugins`` registered beside the built-ins (and,
    with ``isolated=False``, every installed plugin).

    ``config`` overrides settings (``MAX_UPLOAD_MB=5``, ...). No first-start run is started and CSRF is off, so a
    test client can post forms directly; :func:`client_as` logs a user in.
    """
    settings = {"INSTANCE_PATH": str(instance_path), "SECRET_KEY": "testing", "TESTING": True,
                "AUTO_FIRST_RUN": False, "WTF_CSRF_ENABLED": False,
                **({"ALLOWED_PLUGINS": []} if isolated else {}), **config}
    return create_app(settings, plugins=plugins)


def client_as(app: Flask, role: str = "admin", name: str | None = None) -> FlaskClient:
    """A test client logged in (through the login form) as a new user of ``role`` (``admin`` or ``clinician``)."""
    store = services_of(app).store
    name = name or f"{role}-{secrets.token_hex(3)}"
    password = f"kit {secrets.token_hex(8)} amber otter"
    store.add_user(name, role, password)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    answer = client.post("/login", data={"username": name, "password": password,
                                         "csrf_token": token.group(1) if token else ""})
    if answer.status_code != 302:
        raise RuntimeError(f"logging in as {name} failed with HTTP {answer.status_code}")
    return client


def train_tiny(app: Flask, backbone: str, dataset: str, *, data_dir: str | None = None,
               train: Mapping[str, Any] | None = None, backbone_params: Mapping[str, Any] | None = None,
               dataset_params: Mapping[str, Any] | None = None) -> int:
    """Train a tiny run of ``backbone`` on ``dataset`` to its end through the trainer's own code
    (:func:`busi_web.training.trainer.run_training`, in this process, so a plugin that is not installed trains
    too) and return its id. Raises ``AssertionError`` with the run's error when it does not finish."""
    from busi_web.training.params import prepare_run_params  # imports torch: only when a test trains
    from busi_web.training.trainer import run_training  # with prepare_run_params, above

    services = services_of(app)
    if dataset_params is None and dataset == "phantom":
        dataset_params = TINY_PHANTOM
    params = prepare_run_params(services.registry, backbone, dataset, train={**TINY_TRAIN, **(train or {})},
                                backbone_params=backbone_params or {}, dataset_params=dataset_params or {},
                                data_dir=data_dir)
    run = services.store.create_run(backbone, dataset, params, data_dir=data_dir, name=f"tiny {backbone}",
                                    modality=services.registry.dataset(dataset).modality)
    final = run_training(services.store, run["id"], services.registry)
    if final["status"] != "finished":
        raise AssertionError(f"the tiny run of {backbone} on {dataset} ended {final['status']}: {final.get('error')}")
    return int(run["id"])


def info_of(registry: PluginRegistry, plugin: object) -> PluginInfo:
    """What the registry recorded about ``plugin``: its status, errors and what it registered."""
    name = getattr(plugin, "__name__", type(plugin).__name__)
    # Latest first: a plugin passed to the kit is recorded after the entry points, one of which may name the same
    # module but be disabled (a built or installed copy that ALLOWED_PLUGINS leaves out).
    matches = [info for info in reversed(registry.plugins) if info.name == name or info.module == name]
    for info in sorted(matches, key=lambda i: i.status == "disabled"):
        return info
    raise KeyError(f"{name!r} was not registered; pass it to isolated_registry(), registry_with() or make_app()")


def check(plugin: object, data_dirs: Mapping[str, str] | None = None) -> Any:
    """What ``busi-web plugins check`` says of ``plugin``, installed or not: a report whose ``ok`` is true when
    every spec builds and runs, and whose ``findings`` name each spec (``finding.line()`` reads as the command
    prints it). ``data_dirs`` maps a dataset that needs a folder to one, so that a few of its samples are read."""
    from busi_web.evaluation.plugin_check import Report, check_loaded  # builds models: torch, only when called

    registry = isolated_registry(plugin)
    return Report(check_loaded(registry, info_of(registry, plugin), data_dirs))
