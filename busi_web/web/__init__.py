"""Blueprints, one per page family."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from . import api, home

    app.register_blueprint(home.bp)
    app.register_blueprint(api.bp)
