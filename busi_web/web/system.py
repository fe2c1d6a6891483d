"""``/api/health``, ``/api/me``, ``/api/plugins`` and ``/api/specs``: the server, the user and what is installed;
``/healthz`` and ``/readyz`` for the hospital's monitoring (anonymous, and they reveal nothing).

Authentication (a session or ``Authorization: Bearer <token>``) and CSRF are enforced for the whole
app by :mod:`busi_web.web.auth`; errors are ``{"error": message, "status": code, "fields"?: {...}}``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, g, jsonify, send_from_directory

from busi_web.services import services_of
from busi_web.specs import CONTRACT_VERSION
from busi_web.training.params import TRAIN_PARAMS
from busi_web.web.auth import admin_required, current_user

log = logging.getLogger(__name__)

bp = Blueprint("system", __name__, url_prefix="/api")
probes = Blueprint("health", __name__)


@probes.get("/favicon.ico")
def favicon():
    """The site's icon, where browsers look for it on every page (anonymous, cached for a day)."""
    return send_from_directory(current_app.static_folder or "", "favicon.ico", max_age=86400)


@probes.get("/healthz")
def healthz():
    """Liveness: the process answers. Anonymous; says nothing else."""
    return jsonify({"status": "ok"})


@probes.get("/readyz")
def readyz():
    """Readiness: the store answers and every modality's default model loads (there must be one). Anonymous:
    the answer names which check failed and the modality, never a path or an error text (503 when not ready)."""
    services = services_of()
    checks: dict[str, str] = {}
    try:
        defaults = services.store.list_defaults()
        checks["store"] = "ok"
    except Exception:  # noqa: BLE001 - any failure of the database means "not ready"
        log.exception("readiness: the store does not answer")
        defaults, checks["store"] = [], "unavailable"
    if checks["store"] == "ok":
        if not defaults:
            checks["default_models"] = "none set"
        for d in defaults:
            try:
                services.predictor(d["run_id"])
                checks[f"model.{d['modality']}"] = "ok"
            except Exception:  # noqa: BLE001 - a missing or unreadable checkpoint, or a missing plugin
                log.exception("readiness: the default %s model does not load", d["modality"])
                checks[f"model.{d['modality']}"] = "does not load"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"ready": ready, "checks": checks}), 200 if ready else 503


@bp.get("/health")
def health():
    """Liveness plus a little state: run counts, the modalities with a default model, the micro-batcher's
    counters."""
    services = services_of()
    store, batcher = services.store, services.batcher
    return jsonify({"status": "ok", "runs": store.count_runs(), "running": store.count_runs("running"),
                    "defaults": [d["modality"] for d in store.list_defaults()],
                    "predict": {"batches": batcher.batches, "images": batcher.images,
                                "busy_s": round(batcher.busy_s, 3)}})


@bp.get("/me")
def me():
    """The authenticated user and how they authenticated (session or token)."""
    return jsonify({"name": current_user.name, "role": current_user.role, "is_admin": current_user.is_admin,
                    "auth": "token" if g.get("api_token") else "session",
                    "must_change_password": current_user.must_change_password})


@bp.get("/plugins")
@admin_required
def plugins():
    """Admins: every plugin (distribution, version, declared contract, status, errors, what it registers), every
    spec, busi-web's contract version, and the ``ALLOWED_PLUGINS`` names no installed plugin has."""
    registry = services_of().registry
    return jsonify({**registry.to_dict(), "contract_version": CONTRACT_VERSION,
                    "allowed_unknown": registry.unknown_allowed()})


@bp.get("/specs")
def specs():
    """What a training or diagnosis form needs: each spec with its params, and the training params."""
    reg = services_of().registry
    return jsonify({"backbones": [s.to_dict() for s in reg.backbones.values()],
                    "explainers": [s.to_dict() for s in reg.explainers.values()],
                    "datasets": [s.to_dict() for s in reg.datasets.values()],
                    "train": [p.to_dict() for p in TRAIN_PARAMS],
                    "default_explainer": current_app.config["DEFAULT_EXPLAINER"],
                    "data_dirs": sorted((current_app.config.get("DATA_DIRS") or {}).keys())})
