"""Start page: what is installed and loaded."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    registry = current_app.extensions["busi_plugins"]
    return render_template("home/index.html", registry=registry)


@bp.get("/plugins")
def plugins():
    registry = current_app.extensions["busi_plugins"]
    return render_template("home/plugins.html", registry=registry)
