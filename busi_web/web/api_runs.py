"""Runs over JSON: list, detail, metrics, artifacts; start, cancel, resume, promote (admins only)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app, jsonify, request, send_file

from ..auth import admin_required, current_user
from ..errors import UserError
from .api import bp, get_run_or_404, int_arg, store

# Files a clinician may not download (model weights); admins may.
ADMIN_ONLY_SUFFIXES = (".pt", ".pth")


def _duration(run: dict[str, Any]) -> float | None:
    start, end = run.get("started_at"), run.get("finished_at")
    if not start:
        return None
    try:
        t0 = datetime.fromisoformat(start)
        t1 = datetime.fromisoformat(end) if end else datetime.now(t0.tzinfo)
    except ValueError:
        return None
    return round((t1 - t0).total_seconds(), 1)


def run_json(run: dict[str, Any], active_ids: set[int] | None = None) -> dict[str, Any]:
    """A run as the API shows it: the store row plus ``duration_s`` and ``active``."""
    if active_ids is None:
        active_ids = {m["run_id"] for m in store().list_models()}
    return {**run, "duration_s": _duration(run), "active": run["id"] in active_ids}


def artifact_names(run: dict[str, Any]) -> list[str]:
    """Regular files in the run folder (not the temporary files of atomic writes)."""
    run_dir = Path(run.get("run_dir") or "")
    if not run.get("run_dir") or not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))


@bp.get("/runs")
def list_runs():
    """Runs, newest first; filters ``status`` (comma-separated), ``dataset``, ``backbone``, ``limit``."""
    status = request.args.get("status") or None
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    from ..store import STATES

    bad = [s for s in statuses or [] if s not in STATES]
    if bad:
        raise UserError(f"unknown status {', '.join(bad)}; use {', '.join(STATES)}", 400,
                        {"status": f"one of {', '.join(STATES)}"})
    runs = store().list_runs(status=statuses, dataset=request.args.get("dataset") or None,
                             backbone=request.args.get("backbone") or None, limit=int_arg("limit", None, 1))
    active = {m["run_id"] for m in store().list_models()}
    return jsonify({"runs": [run_json(r, active) for r in runs]})


@bp.get("/runs/<int:run_id>")
def run_detail(run_id: int):
    """One run with its artifact names and, once it finished, its test metrics."""
    run = run_json(get_run_or_404(run_id))
    run["artifacts"] = artifact_names(run)
    run["test_metrics"] = None
    metrics_file = Path(run["run_dir"] or "") / "metrics.json"
    if run["run_dir"] and metrics_file.is_file():
        try:
            run["test_metrics"] = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            run["test_metrics"] = None  # written atomically, so only a foreign file can be unreadable
    return jsonify(run)


@bp.get("/runs/<int:run_id>/metrics")
def run_metrics(run_id: int):
    """Metric rows with id > ``after_id`` (``keys`` comma-separated filters); ``last_id`` is the live cursor."""
    get_run_or_404(run_id)
    after_id = int_arg("after_id", 0) or 0
    keys = request.args.get("keys")
    rows = store().metrics(run_id, after_id=after_id,
                           keys=[k.strip() for k in keys.split(",") if k.strip()] if keys else None,
                           limit=int_arg("limit", None, 1))
    return jsonify({"run_id": run_id, "rows": rows, "last_id": rows[-1]["id"] if rows else after_id})


@bp.get("/runs/<int:run_id>/artifacts/<path:name>")
def run_artifact(run_id: int, name: str):
    """Download one file of the run folder; only names listed in the run's ``artifacts`` are served."""
    run = get_run_or_404(run_id)
    names = artifact_names(run)
    if name.startswith("evaluations/"):  # an evaluation report's file (busi-web evaluate)
        from ..evaluate import evaluation_files

        names = evaluation_files(run["run_dir"]) if run.get("run_dir") else []
    # Matching against the folder listing (no joining of user input into a path) rules out traversal.
    if name not in names:
        raise UserError(f"run {run_id} has no artifact {name!r}; it has: {', '.join(names) or 'none yet'}", 404)
    if name.endswith(ADMIN_ONLY_SUFFIXES) and not current_user.is_admin:
        raise UserError("model checkpoints can only be downloaded by an administrator", 403)
    inline = request.args.get("download") in (None, "", "0", "false")
    return send_file(Path(run["run_dir"]) / name, as_attachment=not inline, download_name=name,
                     max_age=0)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise UserError('send a JSON object, e.g. {"backbone": "tiny_cnn", "dataset": "phantom", "train": '
                        '{"epochs": 2}} with Content-Type: application/json', 400)
    for key in ("train", "backbone_params", "dataset_params"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise UserError(f"{key} must be a JSON object of parameter names to values", 400,
                            {key: "must be an object"})
    return body


@bp.post("/runs")
@admin_required
def start_run():
    """Validate and queue a run: 201 with the run; 400 with ``fields`` (``train.epochs``, ...) on bad input."""
    from ..datasets import DatasetError
    from ..plugins import UnknownPlugin
    from ..services import submit_run
    from ..specs import InvalidParameters

    body = _body()
    backbone, dataset = str(body.get("backbone") or ""), str(body.get("dataset") or "")
    missing = {k: "required" for k, v in (("backbone", backbone), ("dataset", dataset)) if not v}
    if missing:
        raise UserError(f"choose a {' and a '.join(missing)}", 400, missing)
    data_dir = body.get("data_dir") or (current_app.config.get("DATA_DIRS") or {}).get(dataset) or None
    try:
        run = submit_run(current_app, backbone, dataset, train=body.get("train") or {},
                         backbone_params=body.get("backbone_params") or {},
                         dataset_params=body.get("dataset_params") or {}, data_dir=data_dir,
                         name=(str(body["name"]).strip()[:200] or None) if body.get("name") else None,
                         user=current_user.name)
    except InvalidParameters as exc:
        group = "train" if exc.spec_name == "training" else (
            "backbone_params" if exc.spec_name == backbone else "dataset_params")
        raise UserError(str(exc), 400, {f"{group}.{k}": v for k, v in exc.errors.items()}) from None
    except UnknownPlugin as exc:
        raise UserError(str(exc), 400, {exc.kind if exc.kind in ("backbone", "dataset") else "backbone":
                                        str(exc)}) from None
    except DatasetError as exc:
        raise UserError(str(exc), 400, {"data_dir": str(exc)}) from None
    store().update_run(run["id"], created_by=current_user.name)
    return jsonify(run_json(store().get_run(run["id"]))), 201


@bp.post("/runs/<int:run_id>/cancel")
@admin_required
def cancel_run(run_id: int):
    """Cancel a queued, interrupted or running run (a running one stops after its current batch)."""
    from ..services import runner_of

    get_run_or_404(run_id)
    try:
        run = runner_of(current_app).cancel(run_id, user=current_user.name)
    except ValueError as exc:
        raise UserError(str(exc), 409) from None
    store().audit("run.cancel", user=current_user.name, run_id=run_id)
    return jsonify(run_json(run))


@bp.post("/runs/<int:run_id>/resume")
@admin_required
def resume_run(run_id: int):
    """Queue an interrupted run again; it continues from its last saved epoch."""
    from ..services import runner_of

    get_run_or_404(run_id)
    try:
        run = runner_of(current_app).resume(run_id)
    except ValueError as exc:
        raise UserError(str(exc), 409) from None
    store().audit("run.resume", user=current_user.name, run_id=run_id)
    return jsonify(run_json(run))


@bp.post("/runs/<int:run_id>/promote")
@admin_required
def promote_run(run_id: int):
    """Make a finished run the active model of its dataset (served from the next request on)."""
    get_run_or_404(run_id)
    try:
        model = store().set_active_model(run_id, by=current_user.name)
    except ValueError as exc:
        raise UserError(str(exc), 409) from None
    return jsonify({"model": model, "run": run_json(store().get_run(run_id))})

