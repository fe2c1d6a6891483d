"""Start page (the default model of each modality, recent runs, what is installed) and the Plugins page
(admins)."""

from __future__ import annotations

from flask import Blueprint, render_template

from busi_web.services import services_of
from busi_web.web.auth import admin_required, current_user
from busi_web.web.helpers import default_ids, defaults_info, run_view

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    """Where to go next: Diagnose with the default models, or Train when there is none; recent runs."""
    services = services_of()
    recent = [run_view(r, default_ids()) for r in services.store.list_runs(limit=5)]
    # The first-start demo becomes the default by itself when it finishes: say so while it trains.
    demo = next((r for r in services.store.list_runs(status=["queued", "running"])
                 if (r.get("params") or {}).get("first_start")), None)
    return render_template("home/index.html", page="home", registry=services.registry, defaults=defaults_info(),
                           recent=recent, show_plugins=current_user.is_admin, first_start=demo)


@bp.get("/plugins")
@admin_required
def plugins():
    """Every plugin with its version, what it registers and its errors; every spec with its parameters."""
    return render_template("home/plugins.html", page="plugins", registry=services_of().registry)
