"""JSON API under /api."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/plugins")
def plugins():
    return jsonify(current_app.extensions["busi_plugins"].to_dict())


@bp.get("/health")
def health():
    store = current_app.extensions["busi_store"]
    return jsonify({"status": "ok", "runs": store.count_runs()})
