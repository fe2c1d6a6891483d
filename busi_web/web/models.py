"""Models: every finished model with its card and acceptance results, and the decisions about them.

Everyone may read; only admins decide. Every decision needs a reason and is audited.

* ``GET /models`` (page), ``GET /api/models``: finished models, each with its card summary, its result on
  its modality's acceptance set and whether it is a default; and every modality with its default, settings
  and acceptance set.
* ``PUT /api/modalities/<modality>/default`` ``{"run_id", "reason"}`` sets the default (409 when the model
  fails the gate); ``DELETE`` with ``{"reason"}`` clears it. ``POST /api/runs/<id>/promote`` ``{"reason"}``
  makes a run the default of its own modality.
* ``PUT /api/modalities/<modality>/settings`` ``{"auto_promote", "floors"}``.
* ``POST /api/modalities/<modality>/acceptance`` defines the acceptance set: ``{"source": "folder"|"share",
  "dataset", "data_dir", "dataset_params", "share", "seed", "name"}``.
* ``POST /api/runs/<id>/acceptance`` scores a model on its modality's acceptance set.
* ``GET /api/runs/<id>/card`` (JSON) and ``/api/runs/<id>/card.md`` (Markdown export).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template

from busi_web.errors import UserError
from busi_web.evaluation.card import card_markdown, provenance
from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.store.acceptance import check_modality
from busi_web.web.auth import admin_required, current_user
from busi_web.web.helpers import RUN_ID, body_arg, body_str, card_for, for_viewer, json_body, run_json

bp = Blueprint("models", __name__)

AUTO_PROMOTE = Param("auto_promote", "bool", None)
SHARE = Param("share", "float", None, minimum=0.0, maximum=0.5)
SEED = Param("seed", "int", 0, minimum=0, maximum=2**31 - 1)


def models_overview() -> dict[str, Any]:
    """What the Models page and ``GET /api/models`` show: :meth:`Services.models_overview`, each run as the API
    shows runs, with its model card."""
    overview = services_of().models_overview()
    defaults = {m["default"]["run_id"]: m["modality"] for m in overview["modalities"] if m["default"]}
    overview["models"] = [{**run_json(m, defaults), **{k: m[k] for k in ("modality", "demo", "acceptance",
                                                                           "gate_failures")},
                           "card": card_for(m["id"], current_user.is_admin)}
                          for m in overview["models"]]
    # The runs and cards are shown as the user may see them already; the acceptance sets' folders too.
    overview["modalities"] = for_viewer(overview["modalities"])
    return overview


@bp.get("/models")
def page():
    """Every finished model with its acceptance results; admins set defaults, floors and acceptance sets."""
    overview = models_overview()
    return render_template("pages/models.html", page="models", **overview,
                           datasets=[s.to_dict() for s in services_of().registry.datasets.values()],
                           data_dirs=(current_app.config.get("DATA_DIRS") or {}) if current_user.is_admin else {},
                           is_admin=current_user.is_admin)


@bp.get("/api/models")
def models():
    """Finished models (with acceptance results and gate failures) and modalities (default, settings, set)."""
    return jsonify(models_overview())


@bp.put("/api/modalities/<modality>/default")
@admin_required
def set_default(modality: str):
    """Make a finished model the default of ``modality`` (with a reason; 409 when the gate refuses it)."""
    check_modality(modality)
    body = json_body('{"run_id": 3, "reason": "passed acceptance on our scanners"}')
    return _make_default(body_arg(body, "run_id", RUN_ID, required=True), body_str(body, "reason"), modality)


def _make_default(run_id: int, reason: str | None, modality: str | None = None):
    services = services_of()
    default = services.set_default(run_id, by=current_user.name, reason=reason, modality=modality)
    return jsonify({"default": default, "run": run_json(services.store.get_run(run_id))})


@bp.delete("/api/modalities/<modality>/default")
@admin_required
def clear_default(modality: str):
    """Clear the default of ``modality`` (with a reason): Diagnose refuses it until another is set."""
    check_modality(modality)
    body = json_body('{"reason": "withdrawn after a failed audit"}')
    services_of().clear_default(modality, by=current_user.name, reason=body_str(body, "reason"))
    return jsonify({"modality": modality, "default": None})


@bp.post("/api/runs/<int:run_id>/promote")
@admin_required
def promote_run(run_id: int):
    """Make a finished run the default of its own modality (with a reason; the gate applies)."""
    body = json_body('{"reason": "better on our acceptance set"}')
    return _make_default(run_id, body_str(body, "reason"))


@bp.put("/api/modalities/<modality>/settings")
@admin_required
def settings(modality: str):
    """Switch auto-promotion on or off, set the floors and the operating sensitivity of ``modality``."""
    check_modality(modality)
    body = json_body('{"auto_promote": true, "floors": {"macro_f1": 0.7, "sensitivity_malignant": 0.85}, '
                     '"operating_sensitivity": 0.9}')
    unknown = sorted(set(body) - {"auto_promote", "floors", "operating_sensitivity"})
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; the settings are auto_promote, floors and "
                        "operating_sensitivity", 400, {k: "unknown setting" for k in unknown})
    auto = body_arg(body, "auto_promote", AUTO_PROMOTE)
    row = services_of().update_settings(modality, by=current_user.name, auto_promote=auto, floors=body.get("floors"),
                                        operating_sensitivity=body.get("operating_sensitivity"))
    return jsonify(row)


@bp.post("/api/runs/<int:run_id>/operating-point")
@admin_required
def operating_point(run_id: int):
    """Fit run ``run_id``'s threshold on p(malignant) again on its validation part (``sensitivity``: default the
    modality's operating sensitivity)."""
    body = json_body('{"sensitivity": 0.9}')
    value = body.get("sensitivity")
    return jsonify(services_of().refit_operating_point(run_id, by=current_user.name, sensitivity=value))


@bp.post("/api/modalities/<modality>/acceptance")
@admin_required
def define_acceptance(modality: str):
    """Define the acceptance set of ``modality`` from a folder or a share of a dataset (201)."""
    check_modality(modality)
    body = json_body('{"source": "share", "dataset": "busi", "data_dir": "/data/busi", "share": 0.15, "seed": 0}')
    dataset = body_str(body, "dataset", required=True)
    params = body.get("dataset_params") or {}
    if not isinstance(params, dict):
        raise UserError("dataset_params must be a JSON object", 400, {"dataset_params": "an object"})
    row = services_of().define_acceptance(
        modality, source=body_str(body, "source", required=True) or "", dataset=dataset or "",
        data_dir=body_str(body, "data_dir") or (current_app.config.get("DATA_DIRS") or {}).get(dataset),
        dataset_params=params, share=body_arg(body, "share", SHARE), seed=body_arg(body, "seed", SEED),
        name=body_str(body, "name"), by=current_user.name)
    return jsonify(row), 201


@bp.post("/api/runs/<int:run_id>/acceptance")
@admin_required
def evaluate_acceptance(run_id: int):
    """Score run ``run_id``'s model on its modality's acceptance set; the result is kept and returned."""
    return jsonify(services_of().score_acceptance(run_id, by=current_user.name))


@bp.get("/api/runs/<int:run_id>/card")
def card(run_id: int):
    """The model card of run ``run_id`` as JSON (built fresh from its files and the store)."""
    found = card_for(run_id, current_user.is_admin)
    return jsonify({**found, "provenance": provenance(found)})


@bp.get("/api/runs/<int:run_id>/card.md")
def card_md(run_id: int):
    """The model card as a Markdown file to download."""
    return Response(card_markdown(card_for(run_id, current_user.is_admin)), mimetype="text/markdown",
                    headers={"Content-Disposition": f'attachment; filename="model_card_run_{run_id}.md"'})
