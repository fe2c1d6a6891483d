"""JSON the pages need beyond the main API: what a chosen run's model can do (classes, layers, modality).

``GET /api/runs/<id>/model`` lets the Diagnose page fill its target-class and
feature-map-layer choices for any finished run, not only the active model
(``/api/models/active`` covers that one).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..errors import UserError

bp = Blueprint("api_pages", __name__, url_prefix="/api")


@bp.get("/runs/<int:run_id>/model")
def run_model(run_id: int):
    """The classes, layers, target layer, backbone, input size, modality and region-of-interest needs
    (``roi``, ``roi_size``; see :mod:`busi_web.roi`) of run ``run_id``'s best model.

    404 for an unknown run, 409 when the run has no usable checkpoint (not finished, or unreadable).
    """
    from ..active_model import NoModel, predictor_for
    from ..checkpoint import CheckpointError
    from ..roi import roi_info
    from ..store import RunNotFound
    from .api import _layers

    try:
        predictor = predictor_for(current_app, run_id)
    except RunNotFound as exc:
        raise UserError(str(exc), 404) from None
    except (NoModel, CheckpointError) as exc:
        raise UserError(f"{exc}", 409) from None
    meta = predictor.meta
    return jsonify({"run_id": run_id, "classes": predictor.classes, "backbone": meta["backbone"],
                    "input_size": meta["input_size"], "modality": meta.get("modality"),
                    "target_layer": predictor.target_layer, "layers": _layers(predictor.model),
                    **roi_info(predictor, current_app.extensions["busi_plugins"])})
