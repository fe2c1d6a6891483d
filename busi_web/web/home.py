"""Start page (the active model, recent runs, what is installed) and the Plugins page (admins)."""

from __future__ import annotations

from flask import Blueprint, render_template

from busi_web.services import services_of
from busi_web.web.auth import admin_required, current_user
from busi_web.web.helpers import active_ids, active_model_info, run_view

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    """Where to go next: Diagnose with the active model, or Train when there is none; recent runs."""
    services = services_of()
    active = active_ids()
    recent = [run_view(r, active) for r in services.store.list_runs(limit=5)]
    return render_template("home/index.html", page="home", registry=services.registry, active=active_model_info(),
                           recent=recent, show_plugins=current_user.is_admin)


@bp.get("/plugins")
@admin_required
def plugins():
    """Every plugin with its version, what it registers and its errors; every spec with its parameters."""
    return render_template("home/plugins.html", page="plugins", registry=services_of().registry)
