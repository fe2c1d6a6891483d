"""JSON API under /api: who am I, health, plugins and their specs, models. Runs and predict live in
:mod:`busi_web.web.api_runs` and :mod:`busi_web.web.api_predict` (same blueprint, endpoints ``api.*``).

Authentication (a session or ``Authorization: Bearer <token>``) and CSRF are enforced for the whole
app by :mod:`busi_web.auth`; errors are ``{"error": message, "status": code, "fields"?: {...}}``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from torch import nn

from ..auth import admin_required, current_user
from ..errors import UserError

bp = Blueprint("api", __name__, url_prefix="/api")


def store():
    """The app's :class:`~busi_web.store.JobStore`."""
    return current_app.extensions["busi_store"]


def registry():
    """The app's :class:`~busi_web.plugins.PluginRegistry`."""
    return current_app.extensions["busi_plugins"]


def get_run_or_404(run_id: int) -> dict[str, Any]:
    """The run, or a 404 JSON error naming it."""
    from ..store import RunNotFound

    try:
        return store().get_run(run_id)
    except RunNotFound as exc:
        raise UserError(str(exc), 404) from None


def int_arg(name: str, default: int | None = None, minimum: int | None = 0) -> int | None:
    """An integer query or form argument, or a 400 naming it."""
    raw = request.values.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {raw!r}", 400, {name: "must be a whole number"}) from None
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}", 400, {name: f"must be >= {minimum}"})
    return value


@bp.get("/health")
def health():
    """Liveness plus a little state: run counts and whether a model is active."""
    s = store()
    batcher = current_app.extensions.get("busi_batcher")
    return jsonify({"status": "ok", "runs": s.count_runs(), "running": s.count_runs("running"),
                    "active_model": s.active_model() is not None,
                    "predict": {"batches": batcher.batches if batcher else 0,
                                "images": batcher.images if batcher else 0,
                                "busy_s": round(batcher.busy_s, 3) if batcher else 0.0}})


@bp.get("/me")
def me():
    """The authenticated user and how they authenticated (session or token)."""
    return jsonify({"name": current_user.name, "role": current_user.role, "is_admin": current_user.is_admin,
                    "auth": "token" if g.get("api_token") else "session",
                    "must_change_password": current_user.must_change_password})


@bp.get("/plugins")
@admin_required
def plugins():
    """Admins: every plugin (distribution, version, status, errors, what it registers) and every spec."""
    return jsonify(registry().to_dict())


@bp.get("/specs")
def specs():
    """What a training or diagnosis form needs: each spec with its params, and the training params."""
    from ..train_params import TRAIN_PARAMS

    reg = registry()
    return jsonify({"backbones": [s.to_dict() for s in reg.backbones.values()],
                    "explainers": [s.to_dict() for s in reg.explainers.values()],
                    "datasets": [s.to_dict() for s in reg.datasets.values()],
                    "train": [p.to_dict() for p in TRAIN_PARAMS],
                    "default_explainer": current_app.config["DEFAULT_EXPLAINER"],
                    "data_dirs": sorted((current_app.config.get("DATA_DIRS") or {}).keys())})


def _model_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    try:
        run = store().get_run(row["run_id"])
    except KeyError:
        run = None
    out["run"] = None if run is None else {k: run.get(k) for k in (
        "id", "name", "backbone", "dataset", "status", "test_macro_f1", "test_accuracy", "finished_at")}
    return out


@bp.get("/models")
def models():
    """The active model of every dataset."""
    active = store().active_model()
    rows = [_model_row(m) for m in store().list_models()]
    for r in rows:
        r["serving"] = active is not None and r["dataset"] == active["dataset"]
    return jsonify({"models": rows})


def _layers(model: nn.Module) -> list[str]:
    """Module names worth a feature-map grid: convolutions and the blocks that contain them."""
    out = []
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, nn.Conv2d) or any(isinstance(m, nn.Conv2d) for m in module.modules()):
            out.append(name)
    return out


@bp.get("/models/active")
def active_model():
    """The model that serves predictions (``?dataset=`` for another dataset's), with its classes and layers.

    404 when there is none yet.
    """
    from ..active_model import NoModel, predictor_for
    from ..checkpoint import CheckpointError
    from ..roi import roi_info

    dataset = request.args.get("dataset") or None
    row = store().active_model(dataset)
    if row is None:
        raise UserError("there is no active model yet: train one (Train page or `busi-web train`) or promote a "
                        "finished run", 404)
    out = _model_row(row)
    try:
        predictor = predictor_for(current_app, row["run_id"] if dataset else None)
    except (NoModel, CheckpointError) as exc:
        out.update(error=str(exc), classes=[], layers=[])
        return jsonify(out)
    meta = predictor.meta
    out.update(classes=predictor.classes, backbone=meta["backbone"], input_size=meta["input_size"],
               modality=meta.get("modality"), target_layer=predictor.target_layer,
               layers=_layers(predictor.model), **roi_info(predictor, current_app.extensions["busi_plugins"]))
    return jsonify(out)


# Routes defined in sibling modules register on ``bp`` when imported.
from . import api_predict, api_runs  # noqa: E402,F401
