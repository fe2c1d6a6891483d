"""Runs over JSON: the list, one run, its metric rows (the live cursor) and its files.

Starting, cancelling, resuming and promoting runs are in :mod:`busi_web.web.train`.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file

from busi_web.errors import UserError
from busi_web.evaluation.evaluate import evaluation_files
from busi_web.services import services_of
from busi_web.store import MAX_ID
from busi_web.store import run_files as files
from busi_web.web.auth import current_user
from busi_web.web.helpers import (
    ADMIN_ONLY_SUFFIXES,
    TEXT_SUFFIXES,
    default_ids,
    for_viewer,
    hide_paths,
    int_arg,
    run_json,
    status_filter,
    visible_artifacts,
)

bp = Blueprint("runs_api", __name__, url_prefix="/api")


@bp.get("/runs")
def list_runs():
    """Runs, newest first; filters ``status`` (comma-separated), ``dataset``, ``backbone``, ``limit``."""
    runs = services_of().store.list_runs(status=status_filter(), dataset=request.args.get("dataset") or None,
                                         backbone=request.args.get("backbone") or None,
                                         limit=int_arg("limit", None, 1, 100_000))
    active = default_ids()
    return jsonify({"runs": [run_json(r, active) for r in runs]})


@bp.get("/runs/<int:run_id>")
def run_detail(run_id: int):
    """One run with its artifact names and, once it finished, its test metrics."""
    stored = services_of().store.get_run(run_id)
    run = run_json(stored)
    run["artifacts"] = visible_artifacts(stored.get("run_dir"))
    run["test_metrics"] = for_viewer(files.read_json(stored.get("run_dir"), files.METRICS_JSON))
    return jsonify(run)


@bp.get("/runs/<int:run_id>/metrics")
def run_metrics(run_id: int):
    """Metric rows with id > ``after_id`` (``keys`` comma-separated filters); ``last_id`` is the live cursor."""
    store = services_of().store
    store.get_run(run_id)  # a 404 for an unknown run
    after_id = int_arg("after_id", 0, 0, MAX_ID) or 0
    keys = request.args.get("keys")
    rows = store.metrics(run_id, after_id=after_id,
                         keys=[k.strip() for k in keys.split(",") if k.strip()] if keys else None,
                         limit=int_arg("limit", None, 1, 1_000_000))
    return jsonify({"run_id": run_id, "rows": rows, "last_id": rows[-1]["id"] if rows else after_id})


@bp.get("/runs/<int:run_id>/artifacts/<path:name>")
def run_artifact(run_id: int, name: str):
    """Download one file of the run folder; only names listed in the run's ``artifacts`` are served."""
    run = services_of().store.get_run(run_id)
    names = files.artifact_names(run.get("run_dir"))
    if name.startswith("evaluations/"):  # an evaluation report's file (busi-web evaluate)
        names = evaluation_files(run["run_dir"]) if run.get("run_dir") else []
    # Matching against the folder listing (no joining of user input into a path) rules out traversal.
    if name not in names:
        raise UserError(f"run {run_id} has no artifact {name!r}; it has: {', '.join(names) or 'none yet'}", 404)
    if name.endswith(ADMIN_ONLY_SUFFIXES) and not current_user.is_admin:
        raise UserError("model checkpoints and the trainer's output can only be downloaded by an administrator",
                        403)
    inline = request.args.get("download") in (None, "", "0", "false")
    path = Path(run["run_dir"]) / name
    if not current_user.is_admin and name.endswith(TEXT_SUFFIXES):  # the same text, with server paths hidden
        text = hide_paths(path.read_text(encoding="utf-8", errors="replace"))
        mimetype = "application/json" if name.endswith(".json") else "text/plain"
        disposition = "inline" if inline else f'attachment; filename="{Path(name).name}"'
        return Response(text, mimetype=mimetype, headers={"Content-Disposition": disposition})
    return send_file(path, as_attachment=not inline, download_name=name, max_age=0)
