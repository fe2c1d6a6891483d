"""Diagnose: the page, ``POST /api/predict`` and what the page asks about models.

``POST /api/predict`` diagnoses one or many uploaded images, with heatmaps, and audits every diagnosis.
Form fields: files under ``image`` (one or many); optional ``modality`` (whose default model answers;
default: ultrasound, or the only modality with a default) and ``run_id`` (a chosen finished model instead),
``explainer`` (default ``DEFAULT_EXPLAINER``; ``none`` for no map), ``target`` (class name or index;
default: each image's predicted class), ``alpha`` (0..1, default 0.5), ``colormap`` (default ``jet``),
``layer`` and ``channels`` (a feature-map grid of that layer; ``layer=default`` for the target layer),
``images`` (which PNGs to return, comma-separated from ``original,overlay,heatmap,outline``, default the
first three: a client that blends the heatmap itself, like the Diagnose page, asks for ``original,heatmap``),
``explainer_params`` (a JSON object of the explainer's parameters, e.g. ``{"batch_size": 8}`` for Score-CAM),
and ``pixel_spacing`` (mm per pixel of the uploaded image, for lesion sizes in mm; a DICOM file's own
spacing is used when it is not given), ``frame`` (1-based: which frame of a multi-frame DICOM file).
A DICOM image instance (US or MG) is read by :mod:`busi_web.dicom.reading`: its modality picks the default
model when ``modality`` is not given, its Pixel Spacing (or ultrasound regions) sizes the lesion, and the
result's ``dicom`` says what was read (frames, photometric interpretation, transfer syntax). No patient
data leaves the file: the answer has none, and the audit row keeps keyed digests of the UIDs only.
For a model trained on crops of mammograms (its dataset has ``roi_crop``): one image plus ``roi_x`` and
``roi_y``, the centre of the region of interest in the image's pixels (optional ``roi_radius``); the
result is of the crop (see :mod:`busi_web.diagnosis.roi`).

Every answer carries ``model``: the provenance of the model that answered (name and id, modality,
training data, acceptance metrics, calibration, whether it is a demo) and the decision-support notice; each
result carries ``ood``, the out-of-distribution verdict, and the audit row records both. A model that
segments (``BackboneSpec.segments``) adds ``lesion`` to each result and its audit row: found or not, the
outline in the answer's pixels, area and diameters (px, and mm with a pixel spacing), and the BI-RADS
shape, orientation and margin each with the number behind it (:mod:`busi_web.explain.lesion`); its
overlay draws the outline, and ``images=outline`` gives the original with the outline alone.

``GET /api/models/active?modality=`` describes the default model of a modality (classes, layers, modality),
and ``GET /api/runs/<id>/model`` the same for any finished run.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify, render_template, request
from torch import nn

from busi_web.diagnosis.active import serving_modality
from busi_web.diagnosis.record import diagnosis_row
from busi_web.diagnosis.roi import roi_crops, roi_info
from busi_web.diagnosis.scanner import scanner_check
from busi_web.diagnosis.uploads import Upload, fit_side, modality_of, read_uploads
from busi_web.dicom.privacy import identifiers
from busi_web.errors import UserError
from busi_web.evaluation.card import NOTICE, is_demo
from busi_web.explain.render import annotate, fast_png, legend_stops, palette
from busi_web.model.prediction import Prediction
from busi_web.model.predictor import Predictor
from busi_web.model.shown import WITHHELD
from busi_web.report.content import CaseReport, case_report
from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.store import RunNotFound
from busi_web.store.acceptance import check_modality
from busi_web.web.auth import current_user
from busi_web.web.helpers import RUN_ID, arg, defaults_info, hide_paths
from busi_web.web.metrics import count_diagnoses, stage

bp = Blueprint("diagnose", __name__)

# The pictures an answer can carry (form field ``images``); "outline" only from a model that segments.
PNG_KINDS = ("original", "overlay", "heatmap", "outline")
ANSWERED_KINDS = ("original", "overlay", "heatmap")  # what an answer carries when ``images`` is not given
ALPHA = Param("alpha", "float", 0.5, minimum=0.0, maximum=1.0)
CHANNELS = Param("channels", "int", 16, minimum=1, maximum=256)
REPORT_SIDE = 640  # px: a case report prints its images 90 mm wide, so this is about 180 dpi
FRAME = Param("frame", "int", None, "which frame (1-based) of a multi-frame DICOM file", minimum=1, maximum=100_000)
PIXEL_SPACING = Param("pixel_spacing", "float", None, "mm per pixel of the uploaded image, for lesion sizes in mm",
                      minimum=1e-4, maximum=10.0)


@bp.get("/diagnose")
def page():
    """Upload images, get a label, class probabilities, a heatmap overlay and feature maps."""
    services = services_of()
    reg = services.registry
    explainers = [s.to_dict() for s in reg.explainers.values()]
    default_explainer = current_app.config["DEFAULT_EXPLAINER"]
    if default_explainer not in reg.explainers and explainers:
        default_explainer = explainers[0]["name"]
    defaults = defaults_info()
    ids = {d["run_id"]: d["modality"] for d in defaults}
    models = [{"id": r["id"], "name": r["name"], "backbone": r["backbone"], "dataset": r["dataset"],
               "modality": r.get("modality") or "ultrasound", "test_macro_f1": r.get("test_macro_f1"),
               "default_of": ids.get(r["id"]), "demo": is_demo(reg, r["dataset"]), "verdict": services.verdict(r["id"])}
              for r in services.store.list_runs(status="finished")]
    # Clinicians choose among the accepted models; administrators may try any, marked "not accepted".
    if not current_user.is_admin:
        models = [m for m in models if m["verdict"]["accepted"]]
    modalities = sorted({d["modality"] for d in defaults} | {m["modality"] for m in models})
    preferred = "ultrasound" if "ultrasound" in ids.values() or not defaults else defaults[0]["modality"]
    return render_template("pages/diagnose.html", page="diagnose", defaults=defaults, models=models,
                           modalities=modalities, preferred=preferred, explainers=explainers,
                           default_explainer=default_explainer, max_upload_mb=current_app.config["MAX_UPLOAD_MB"])


# -- models ----------------------------------------------------------------------------------------------------
MODALITY = Param("modality", "str", None)


def _modality() -> str | None:
    raw = arg("modality", MODALITY)
    return None if raw is None or not raw.strip() else check_modality(raw.strip())


def _layers(model: nn.Module) -> list[str]:
    """Module names worth a feature-map grid: convolutions and the blocks that contain them."""
    return [name for name, module in model.named_modules()
            if name and any(isinstance(m, nn.Conv2d) for m in module.modules())]


def _model_info(predictor: Predictor) -> dict[str, Any]:
    meta = predictor.meta
    return {"classes": predictor.classes, "backbone": meta["backbone"], "input_size": meta["input_size"],
            "modality": meta.get("modality"), "target_layer": predictor.target_layer, "segments": predictor.segments,
            "layers": _layers(predictor.model), **roi_info(predictor, services_of().registry)}


@bp.get("/api/models/active")
def active_model():
    """The default model of ``?modality=`` (default: see :func:`~busi_web.diagnosis.active.serving_modality`),
    with its classes and layers, its provenance and ``modality``. 404 when that modality has none."""
    services = services_of()
    try:
        modality = serving_modality(services.store, _modality())
    except UserError as exc:
        raise UserError(str(exc), 404) from None
    row = services.store.default_model(modality)
    if row is None:
        raise UserError(f"there is no default {modality} model yet: an admin sets one on the Models page", 404)
    run = services.store.get_run(row["run_id"])
    out = {**{k: v for k, v in row.items() if k != "checkpoint"},  # no server paths
           "run": {k: run.get(k) for k in ("id", "name", "backbone", "dataset", "modality", "status", "test_macro_f1",
                                           "test_accuracy", "finished_at")}}
    try:
        predictor = services.predictor(row["run_id"])
    except UserError as exc:  # no checkpoint, or an unreadable one: say so, with no choices (paths for admins)
        out.update(error=str(exc) if current_user.is_admin else hide_paths(str(exc)), classes=[], layers=[])
        return jsonify(out)
    return jsonify({**out, **_model_info(predictor), "model": _provenance(row["run_id"])})


@bp.get("/api/runs/<int:run_id>/model")
def run_model(run_id: int):
    """The classes, layers, target layer, backbone, input size, modality and region-of-interest needs
    (``roi``, ``roi_size``; see :mod:`busi_web.diagnosis.roi`) of run ``run_id``'s best model.

    404 for an unknown run, 409 when the run has no usable checkpoint (not finished, or unreadable).
    """
    return jsonify({"run_id": run_id, **_model_info(services_of().predictor(run_id)), "model": _provenance(run_id)})


def _provenance(run_id: int) -> dict[str, Any]:
    return services_of().answering.get(run_id).provenance


# -- predict ---------------------------------------------------------------------------------------------------
def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _options(classes: list[str]) -> dict[str, Any]:
    """Parse and check the optional form fields; 400 with ``fields`` naming the bad one."""
    form = request.form
    explainer = (form.get("explainer") or current_app.config["DEFAULT_EXPLAINER"]).strip()
    explainer_params: dict[str, Any] = {}
    if explainer.lower() == "none":
        explainer = None
    else:
        spec = services_of().registry.explainer(explainer)  # UnknownPlugin: a 400 listing the choices
        explainer_params = spec.validate(_json_object("explainer_params"))
    layer = (form.get("layer") or "").strip() or None
    colormap = (form.get("colormap") or "jet").strip()
    try:
        palette(colormap)
    except ValueError as exc:  # the message lists the colormaps that exist
        raise UserError(str(exc), 400, {"colormap": str(exc)}) from None
    wanted = [w.strip().lower() for w in (form.get("images") or ",".join(ANSWERED_KINDS)).split(",") if w.strip()]
    unknown = [w for w in wanted if w not in PNG_KINDS]
    if unknown or not wanted:
        raise UserError(f"images must name some of {', '.join(PNG_KINDS)} (comma-separated), got "
                        f"{form.get('images')!r}", 400, {"images": f"some of {', '.join(PNG_KINDS)}"})
    return {"explainer": explainer, "explainer_params": explainer_params, "alpha": arg("alpha", ALPHA),
            "target": _target(form.get("target"), classes), "colormap": colormap,
            "layer": None if layer in (None, "default") else layer,
            "channels": arg("channels", CHANNELS) if layer or form.get("channels") else None,
            "images": set(wanted), "pixel_spacing": arg("pixel_spacing", PIXEL_SPACING)}


def _json_object(name: str) -> dict[str, Any]:
    raw = (request.form.get(name) or "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f'{name} must be a JSON object of parameter names to values, e.g. {{"batch_size": 8}}; '
                        f"got {raw[:80]!r}", 400, {name: "a JSON object"})
    return value


def _target(raw: str | None, classes: list[str]) -> int | None:
    raw = (raw or "").strip()
    if not raw or raw.lower() in ("predicted", "auto"):
        return None
    if raw in classes:
        return classes.index(raw)
    if raw.isascii() and raw.isdigit() and int(raw) < len(classes):
        return int(raw)
    raise UserError(f"target must be one of {', '.join(classes)} (or its index 0-{len(classes) - 1}), got {raw!r}",
                    400, {"target": f"one of {', '.join(classes)}"})


def _result(upload, pred, opts: dict[str, Any], predictor: Predictor, model: dict[str, Any], roi=None
            ) -> dict[str, Any]:
    # With a region of interest the model saw the crop: the images and the heatmap are of the crop.
    image = upload.image if roi is None else roi.image
    scanner = None if upload.dicom is None else scanner_check(
        upload.dicom.manufacturer, upload.dicom.model_name, model["training_data"]["devices"])
    # An image unlike the training images gets no class: it is withheld, and so is the operating point's verdict.
    out = {"filename": upload.filename, "label": pred.shown_label, "withheld": WITHHELD if pred.withheld else None,
           "index": pred.index,
           "probabilities": pred.probabilities, "target": pred.target_label, "target_index": pred.target,
           "explainer": pred.explainer, "width": int(image.shape[1]), "height": int(image.shape[0]),
           "scale": 1.0 if roi is not None else upload.scale,
           "original_png": _b64(fast_png(image)) if "original" in opts["images"] else None,
           "overlay_png": None, "heatmap_png": None,
           "feature_maps_png": None, "feature_layer": None, "roi": None if roi is None else roi.to_dict(),
           "analysed_region": None if pred.region is None else list(pred.region), "caution": pred.caution,
           "ood": pred.ood, "outline_png": None, "operating_point": None if pred.withheld else pred.operating,
           "map_note": pred.map_note,
           "scanner": scanner}
    # A pixel of the answer's image is 1 / scale pixels of the upload. A region of interest is cut and resized
    # by its dataset's own code: its pixels have no known size, so its lesion sizes stay in pixels.
    out["dicom"] = None if upload.dicom is None else upload.dicom.describe()
    spacing, out["pixel_spacing_source"] = _spacing(upload, opts["pixel_spacing"], roi)
    out["lesion"] = pred.lesion_info(spacing)
    outline = out["lesion"]["outline"] if out["lesion"] and out["lesion"]["found"] else None
    try:
        if pred.heatmap is not None:
            wanted = "overlay" in opts["images"]  # no overlay (nor its outline) made when it is not sent
            blended, heat = annotate(image, pred.heatmap, opts["alpha"], opts["colormap"], pred.region,
                                     outline if wanted else None, blend=wanted)
            if "overlay" in opts["images"]:
                out["overlay_png"] = _b64(fast_png(blended))
            if "heatmap" in opts["images"]:
                out["heatmap_png"] = _b64(fast_png(heat))
        if outline and "outline" in opts["images"]:
            out["outline_png"] = _b64(fast_png(annotate(image, outline=outline)[0]))
        if opts["channels"] is not None:
            layer = opts["layer"] or predictor.target_layer
            out["feature_maps_png"] = _b64(predictor.feature_maps(image, layer, opts["channels"]))
            out["feature_layer"] = layer
    except ValueError as exc:  # an unknown layer: the message names the choices
        raise UserError(str(exc), 400, {"layer": str(exc)}) from None
    return out


def _spacing(upload: Upload, asked: float | None, roi: Any) -> tuple[tuple[float, float] | None, str | None]:
    """``(row, column)`` mm per pixel of the answer's image and where it came from: the form's
    ``pixel_spacing`` (mm per uploaded pixel) first, else the DICOM header; none for a region of interest."""
    if roi is not None:
        return None, None
    if asked is not None:
        return (asked / upload.scale, asked / upload.scale), "pixel_spacing"
    if upload.spacing_mm is not None:
        return upload.spacing_mm, upload.dicom.spacing_source
    return None, None


@bp.post("/api/predict")
def predict():
    """Classify and explain the uploaded images; every diagnosis writes an audit row ``diagnose``."""
    app = current_app._get_current_object()
    # Uploads are checked first: a bad file is a 400/413 whether or not a model exists.
    with stage("decode"):
        uploads = read_uploads(app, [f for f in request.files.getlist("image") if f.filename], current_user.name,
                               arg("frame", FRAME))
    diagnosis = diagnose_uploads(uploads)
    with stage("respond"):
        return jsonify(diagnosis.body)


@dataclass
class Diagnosis:
    """One request's diagnoses: the answer's ``body``, and what made it (for writing results elsewhere)."""

    body: dict[str, Any]
    predictions: list[Prediction]
    options: dict[str, Any]
    identifiers: list[list[tuple[str, str]]] = field(default_factory=list)  # per result: printed reports only

    def report(self, index: int) -> CaseReport:
        """The case report of result ``index``, for the current user."""
        return self._report_maker(index)[0]()

    def keep_report(self, index: int) -> str:
        """Keep result ``index``'s case report for the current user, to be made when first opened; its id."""
        make, size = self._report_maker(index)
        return services_of().reports.keep(current_user.name, make, size)

    def _report_maker(self, index: int) -> tuple[Callable[[], CaseReport], int]:
        """What makes result ``index``'s case report, and the bytes it holds meanwhile: the image and its heatmap
        (``uint8``) at the report's size, the region and the outline; the PNGs are made only when called."""
        pred, alpha, colormap = self.predictions[index], self.options["alpha"], self.options["colormap"]
        factor = min(1.0, REPORT_SIDE / max(pred.image.shape[:2]))
        image = fit_side(pred.image, REPORT_SIDE)
        heat = None if pred.heatmap is None else fit_side(
            np.clip(np.rint(pred.heatmap * 255), 0, 255).astype(np.uint8), REPORT_SIDE)
        region = None if pred.region is None else tuple(round(v * factor) for v in pred.region)
        outline = None if pred.lesion is None else [[x * factor, y * factor] for x, y in pred.lesion.polygon()]
        result = {k: v for k, v in self.body["results"][index].items() if not k.endswith("_png")}
        body = {**{k: v for k, v in self.body.items() if k != "results"}, "results": [result]}
        user = current_user.name
        who = self.identifiers[index] if index < len(self.identifiers) else []

        def make() -> CaseReport:
            picture = annotate(image, heat, alpha, colormap, region, outline)[0]
            return case_report(body, 0, user, (fast_png(image), fast_png(picture)), who)

        return make, image.nbytes + (0 if heat is None else heat.nbytes) + 16_384


def diagnose_uploads(uploads: list[Upload], audit_extra: dict[str, Any] | None = None) -> Diagnosis:
    """Diagnose decoded ``uploads`` with the request's form options (model, explainer, ...): the model of the
    files' modality (or the one asked for), one shared pass, rendering, one audit row per image (with
    ``audit_extra``). Raises :class:`UserError` for every choice that cannot be served."""
    services = services_of()
    run_id, modality = arg("run_id", RUN_ID), modality_of(uploads, _modality())
    try:
        with stage("provenance"):  # which model answers, its verdict and its card's summary (kept between requests)
            answering = services.answering.get(run_id, modality)
        served, verdict = answering.run_id, answering.verdict
        if not verdict["accepted"] and not current_user.is_admin:
            raise UserError(f"run {served}'s model is {verdict['text']}; only accepted models answer clinicians: "
                            "leave the model to the modality's default, or ask an administrator", 403,
                            {"run_id": "not accepted"})
        predictor = services.predictors.get(answering.checkpoint)
    except RunNotFound as exc:
        raise UserError(str(exc), 404, {"run_id": "no such run"}) from None
    if modality is not None and predictor.checkpoint_meta.modality != modality:
        raise UserError(f"run {served} is a {predictor.checkpoint_meta.modality} model; choose a {modality} model "
                        "or leave the model to the modality's default", 400, {"run_id": f"not a {modality} model"})
    model = {**answering.provenance, "verdict": verdict}
    opts = _options(predictor.classes)
    rois = roi_crops(predictor, services.registry, [u.image for u in uploads], request.form,
                     uploads[0].scale if len(uploads) == 1 else 1.0)
    images = [u.image for u in uploads] if rois is None else [r.image for r in rois]
    targets = None if opts["target"] is None else [opts["target"]] * len(uploads)
    try:
        with stage("model"):  # preparing the tensors, then waiting for the shared pass
            preds = services.batcher.predict(predictor, images, opts["explainer"], targets,
                                             opts["explainer_params"],
                                             regions=None if rois is not None else [u.scan_region for u in uploads])
    except ValueError as exc:  # e.g. an image the preprocessing cannot take; the message says why
        raise UserError(str(exc), 400) from None
    count_diagnoses(served, model["modality"], len(preds))
    with stage("render"):
        results = [_result(upload, pred, opts, predictor, model, None if rois is None else rois[k])
                   for k, (upload, pred) in enumerate(zip(uploads, preds, strict=True))]
    with stage("audit"):  # one transaction for the request's rows
        key = current_app.config["SECRET_KEY"]
        services.store.audit_many("diagnose", user=current_user.name, run_id=served, rows=[
            diagnosis_row(upload, pred, model, key, lesion=results[k]["lesion"], scanner=results[k]["scanner"],
                          extra={**(audit_extra or {}), **({} if rois is None else {"roi": rois[k].to_dict()})})
            for k, (upload, pred) in enumerate(zip(uploads, preds, strict=True))])
    legend = None if opts["explainer"] is None else {
        "colormap": opts["colormap"], "stops": legend_stops(opts["colormap"]),
        "meaning": "relative evidence for the explained class, scaled per image from lowest (left) to highest "
                   "(right); not a probability. Outside a dashed frame: not seen by the model."}
    body = {"run_id": served, "classes": predictor.classes, "model": model, "notice": NOTICE, "legend": legend,
            "results": results}
    diagnosis = Diagnosis(body=body, predictions=preds, options=opts,
                          identifiers=[[] if u.dicom is None else identifiers(u.dicom.header) for u in uploads])
    for k, result in enumerate(results):  # each result's printable case report (made when first opened)
        result["report_id"] = diagnosis.keep_report(k)
    return diagnosis
