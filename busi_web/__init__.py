"""busi-web: explainable breast-imaging diagnosis for a hospital intranet.

``create_app`` is the Flask application factory; ``hookimpl`` is what a
plugin author decorates hook functions with (see :mod:`busi_web.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from busi_web.hookspecs import hookimpl

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app", "hookimpl"]
__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None, plugins: Iterable[object] = ()) -> Flask:
    """Build the Flask app (see :func:`busi_web.app.create_app`)."""
    # Imported here, not above: plugin modules import this package for ``hookimpl`` and must not pull in the
    # whole app (and torch) with it.
    from busi_web.app import create_app as _create_app

    return _create_app(config, plugins)
