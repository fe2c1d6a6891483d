"""Train: the training form and the queue (admins), and starting, cancelling and resuming runs.

``POST /api/runs`` validates and queues a run (201, or 400 with ``fields`` such as ``train.epochs``);
``POST /api/runs/<id>/cancel`` and ``/resume`` act on one. All of it is for admins only. Making a model a
default is :mod:`busi_web.web.models`' job.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from busi_web.data.datasets import DatasetError
from busi_web.data.sites import Source
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


def _sources(listed: Any) -> list[Source]:
    """``datasets``: a list of ``{"dataset", "data_dir", "params"}`` objects (a run on several sites)."""
    example = '[{"dataset": "busi", "data_dir": "/data/busi"}, {"dataset": "busbra", "data_dir": "/data/busbra"}]'
    if not isinstance(listed, list) or not listed:
        raise UserError(f"datasets must be a list of objects, e.g. {example}", 400, {"datasets": "a list"})
    data_dirs = current_app.config.get("DATA_DIRS") or {}
    out = []
    for k, item in enumerate(listed):
        name = item.get("dataset") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"datasets[{k}] needs a dataset name, e.g. {example}", 400,
                            {f"datasets.{k}.dataset": "required"})
        params, data_dir = item.get("params") or {}, item.get("data_dir")
        if not isinstance(params, dict) or (data_dir is not None and not isinstance(data_dir, str)):
            raise UserError(f"datasets[{k}]: params must be an object and data_dir a string", 400,
                            {f"datasets.{k}": "params an object, data_dir a string"})
        out.append(Source(name.strip(), data_dir or data_dirs.get(name.strip()) or None, params))
    return out


@bp.post("/api/runs")
@admin_required
def start_run():
    """Validate and queue a run: 201 with the run; 400 with ``fields`` (``train.epochs``, ...) on bad input.

    One dataset: ``dataset`` (with ``data_dir`` and ``dataset_params``); several sites: ``datasets``, a list of
    ``{"dataset", "data_dir", "params"}``."""
    body = _body()
    backbone = (body.get("backbone") or "").strip()
    several = body.get("datasets") is not None
    dataset = "" if several else (body.get("dataset") or "").strip()
    missing = {k: "required" for k, v in (("backbone", backbone), ("dataset", several or dataset)) if not v}
    if missing:
        raise UserError(f"choose a {' and a '.join(missing)}", 400, missing)
    sources = _sources(body["datasets"]) if several else None
    target: str | list[Source] = sources if sources is not None and len(sources) > 1 else (
        sources[0].dataset if sources else dataset)
    data_dir = (sources[0].data_dir if sources else
                body.get("data_dir") or (current_app.config.get("DATA_DIRS") or {}).get(dataset) or None)
    dataset_params = dict(sources[0].params) if sources else body.get("dataset_params") or {}
    names = [s.dataset for s in sources] if sources else [dataset]
    try:
        run = services_of().submit_run(
            backbone, target, train=body.get("train") or {}, backbone_params=body.get("backbone_params") or {},
            dataset_params=dataset_params, data_dir=data_dir,
            name=(body["name"].strip()[:200] or None) if body.get("name") else None, user=current_user.name)
    except InvalidParameters as exc:  # the form shows each message next to its field
        group = "train" if exc.spec_name == "training" else (
            "backbone_params" if exc.spec_name == backbone else _dataset_field(exc.spec_name, names))
        raise UserError(str(exc), 400, {f"{group}.{k}": v for k, v in exc.errors.items()}) from None
    except DatasetError as exc:  # the data folder is missing, or does not hold a usable dataset
        raise UserError(str(exc), 400, {"data_dir": str(exc)}) from None
    return jsonify(run_json(run)), 201


def _dataset_field(spec_name: str, names: list[str]) -> str:
    """Where a dataset's parameter error shows: ``dataset_params`` (the first dataset's), or ``datasets.K.params``
    for the K-th of several (from 0)."""
    k = names.index(spec_name) if spec_name in names else 0
    return "dataset_params" if k == 0 else f"datasets.{k}.params"


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

