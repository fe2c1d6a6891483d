"""HTML pages: Diagnose and Train here; the run pages (list, detail, compare) in :mod:`.pages_runs`.

Pages are server-rendered shells with the data a first paint needs; the
scripts in ``static/js/`` then talk to the JSON API (``/api/...``) for what
changes: predictions, the training form's specs, live metrics.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

from ..auth import admin_required, current_user

bp = Blueprint("pages", __name__)


def store():
    """The app's :class:`~busi_web.store.JobStore`."""
    return current_app.extensions["busi_store"]


def registry():
    """The app's :class:`~busi_web.plugins.PluginRegistry`."""
    return current_app.extensions["busi_plugins"]


def active_model_info() -> dict[str, Any] | None:
    """The active model's row with its run (``None`` when no model serves yet)."""
    from ..store import RunNotFound

    row = store().active_model()
    if row is None:
        return None
    try:
        run = store().get_run(row["run_id"])
    except RunNotFound:
        run = None
    return {**row, "run": run}


def model_choices() -> list[dict[str, Any]]:
    """Finished runs a user may diagnose with, newest first, the active ones marked."""
    active = {m["run_id"] for m in store().list_models()}
    return [{"id": r["id"], "name": r["name"], "backbone": r["backbone"], "dataset": r["dataset"],
             "test_macro_f1": r.get("test_macro_f1"), "active": r["id"] in active}
            for r in store().list_runs(status="finished")]


@bp.get("/diagnose")
def diagnose():
    """Upload images, get a label, class probabilities, a heatmap overlay and feature maps."""
    reg = registry()
    explainers = [{"name": s.name, "title": s.title} for s in reg.explainers.values()]
    default_explainer = current_app.config["DEFAULT_EXPLAINER"]
    if default_explainer not in reg.explainers and explainers:
        default_explainer = explainers[0]["name"]
    return render_template("pages/diagnose.html", page="diagnose", active=active_model_info(),
                           models=model_choices(), explainers=explainers, default_explainer=default_explainer,
                           max_upload_mb=current_app.config["MAX_UPLOAD_MB"])


@bp.get("/train")
@admin_required
def train():
    """The training form (built in the browser from ``/api/specs``) and the queue of runs."""
    queue = store().list_runs(status=["running", "queued"], oldest_first=True)
    return render_template("pages/train.html", page="train", queue=queue,
                           data_dirs=current_app.config.get("DATA_DIRS") or {},
                           is_admin=current_user.is_admin)


# The run pages register on ``bp`` when imported.
from . import pages_runs  # noqa: E402,F401
