"""Train: the training form and the queue (admins), and starting, cancelling and resuming runs.

``POST /api/runs`` validates and queues a run (201, or 400 with ``fields`` such as ``train.epochs``);
``POST /api/runs/<id>/cancel`` and ``/resume`` act on one. All of it is for admins only. Making a model a
default is :mod:`busi_web.web.models`' job.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from busi_web.data.datasets import DatasetError
from busi_web.errors import UserError
from busi_web.services import services_of
from busi_web.specs import InvalidParameters
from busi_web.web.auth import admin_required, current_user
from busi_web.web.helpers import json_body, run_json

bp = Blueprint("train", __name__)


@bp.get("/train")
@admin_required
def page():
    """The training form (built in the browser from ``/api/specs``) and the queue of runs."""
    queue = services_of().store.list_runs(status=["running", "queued"], oldest_first=True)
    return render_template("pages/train.html", page="train", queue=queue,
                           data_dirs=current_app.config.get("DATA_DIRS") or {}, is_admin=current_user.is_admin)


def _body() -> dict[str, Any]:
    body = json_body('{"backbone": "tiny_cnn", "dataset": "phantom", "train": {"epochs": 2}}')
    for key in ("train", "backbone_params", "dataset_params"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise UserError(f"{key} must be a JSON object of parameter names to values", 400,
                            {key: "must be an object"})
    for key in ("backbone", "dataset", "data_dir", "name"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise UserError(f"{key} must be a string, got {type(body[key]).__name__}", 400, {key: "a string"})
    return body


@bp.post("/api/runs")
@admin_required
def start_run():
    """Validate and queue a run: 201 with the run; 400 with ``fields`` (``train.epochs``, ...) on bad input."""
    body = _body()
    backbone, dataset = (body.get("backbone") or "").strip(), (body.get("dataset") or "").strip()
    missing = {k: "required" for k, v in (("backbone", backbone), ("dataset", dataset)) if not v}
    if missing:
        raise UserError(f"choose a {' and a '.join(missing)}", 400, missing)
    data_dir = body.get("data_dir") or (current_app.config.get("DATA_DIRS") or {}).get(dataset) or None
    try:
        run = services_of().submit_run(
            backbone, dataset, train=body.get("train") or {}, backbone_params=body.get("backbone_params") or {},
            dataset_params=body.get("dataset_params") or {}, data_dir=data_dir,
            name=(body["name"].strip()[:200] or None) if body.get("name") else None, user=current_user.name)
    except InvalidParameters as exc:  # the form shows each message next to its field
        group = "train" if exc.spec_name == "training" else (
            "backbone_params" if exc.spec_name == backbone else "dataset_params")
        raise UserError(str(exc), 400, {f"{group}.{k}": v for k, v in exc.errors.items()}) from None
    except DatasetError as exc:  # the data folder is missing, or does not hold a usable dataset
        raise UserError(str(exc), 400, {"data_dir": str(exc)}) from None
    return jsonify(run_json(run)), 201


@bp.post("/api/runs/<int:run_id>/cancel")
@admin_required
def cancel_run(run_id: int):
    """Cancel a queued, interrupted or running run (a running one stops after its current batch)."""
    services = services_of()
    run = services.runner.cancel(run_id, user=current_user.name)
    services.store.audit("run.cancel", user=current_user.name, run_id=run_id)
    return jsonify(run_json(run))


@bp.post("/api/runs/<int:run_id>/resume")
@admin_required
def resume_run(run_id: int):
    """Queue an interrupted run again; it continues from its last saved epoch."""
    services = services_of()
    run = services.runner.resume(run_id)
    services.store.audit("run.resume", user=current_user.name, run_id=run_id)
    return jsonify(run_json(run))

