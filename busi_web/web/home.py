"""Start page (the active model, recent runs, what is installed) and the Plugins page (admins)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from ..auth import admin_required, current_user

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    """Where to go next: Diagnose with the active model, or Train when there is none; recent runs."""
    from .pages import active_model_info
    from .pages_runs import run_view

    registry = current_app.extensions["busi_plugins"]
    store = current_app.extensions["busi_store"]
    active = {m["run_id"] for m in store.list_models()}
    recent = [run_view(r, active) for r in store.list_runs(limit=5)]
    return render_template("home/index.html", page="home", registry=registry, active=active_model_info(),
                           recent=recent, show_plugins=current_user.is_admin)


@bp.get("/plugins")
@admin_required
def plugins():
    """Every plugin with its version, what it registers and its errors; every spec with its parameters."""
    registry = current_app.extensions["busi_plugins"]
    return render_template("home/plugins.html", page="plugins", registry=registry)
