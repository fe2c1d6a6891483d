"""What every command group shares: the app's services, and the one parser of ``KEY=VALUE`` parameters.

Commands run inside the app (``with_appcontext``), so they see the same
configuration, plugins and store as the server. A :class:`~busi_web.errors.UserError`
becomes one line on stderr and exit status 1 (:func:`user_errors`), never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from flask import current_app

from busi_web.errors import UserError
from busi_web.plugins import PluginFailure
from busi_web.store import MAX_ID

if TYPE_CHECKING:  # the services import torch, which `busi-web --help` must not wait for
    from busi_web.services import Services

F = TypeVar("F", bound=Callable[..., Any])
RUN_ID = click.IntRange(1, MAX_ID)  # a run number as the store holds it


def services() -> Services:
    """The current app's services (see :mod:`busi_web.services`)."""
    # Imported here: the services import torch, and a command asks for them only once the app is built.
    from busi_web.services import services_of

    return services_of(current_app)


def user_errors(command: F) -> F:
    """Decorator: a :class:`UserError` (every error a user can fix), or a plugin that failed (named in the
    message), ends the command with one line, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserError, PluginFailure) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def parse_params(pairs: tuple[str, ...] | list[str], option: str = "--param") -> dict[str, str]:
    """``("a=1", "b=x=y")`` -> ``{"a": "1", "b": "x=y"}``; a pair without ``=`` is refused, naming it."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def split_params(pairs: tuple[str, ...], backbone: str, dataset: str | list[str]
                 ) -> tuple[dict, dict, dict]:
    """Route ``--param`` pairs to the training, backbone or dataset parameters.

    ``train.X``, ``backbone.X`` and ``dataset.X`` say where explicitly; with
    several datasets ``NAME.X`` names the dataset (``busbra.partition=5-fold:1``).
    A bare key goes to whichever declares it (training first). For one dataset
    (a name) the third dict is its parameters; for several (a list) it maps each
    name to its parameters.
    """
    from busi_web.training.params import TRAIN_PARAMS  # imports torch: only when a command trains

    registry = services().registry
    datasets = [dataset] if isinstance(dataset, str) else list(dataset)
    names = {"train": {p.name for p in TRAIN_PARAMS}, "backbone": {p.name for p in registry.backbone(backbone).params},
             **{d: {p.name for p in registry.dataset(d).params} for d in datasets}}
    out: dict[str, dict] = {scope: {} for scope in names}
    for key, value in parse_params(pairs).items():
        scope, _, bare = key.rpartition(".")
        if scope == "dataset" and len(datasets) == 1:
            scope = datasets[0]
        elif scope == "dataset":
            raise UserError(f"--param {key}: this run has several datasets; name one, e.g. {datasets[0]}.{bare}")
        if scope:
            if scope not in out:
                allowed = ", ".join(f"{s}." for s in ("train", "backbone", *datasets))
                raise UserError(f"--param {key}: the prefix must be one of {allowed}")
            out[scope][bare] = value
            continue
        for scope in names:
            if key in names[scope]:
                out[scope][key] = value
                break
        else:
            known = sorted(set().union(*names.values()))
            raise UserError(f"--param {key}: unknown parameter; known: {', '.join(known)}")
    per_dataset = {d: out[d] for d in datasets}
    return out["train"], out["backbone"], per_dataset[datasets[0]] if isinstance(dataset, str) else per_dataset


def resolve_data_dir(dataset: str, data_dir: str | None) -> str | None:
    """The folder a dataset reads: explicit, else ``DATA_DIRS[name]``, else an error when it needs one."""
    spec = services().registry.dataset(dataset)
    if data_dir:
        return data_dir
    configured = (current_app.config.get("DATA_DIRS") or {}).get(dataset)
    if configured:
        return configured
    if spec.needs_data_dir:
        raise UserError(f"dataset {dataset!r} needs a data folder: pass --data-dir DIR or set "
                        f"BUSI_WEB_DATA_DIRS='{{\"{dataset}\": \"/path/to/folder\"}}'")
    return None
