"""``POST /api/predict``: diagnose one or many uploaded images, with heatmaps, and audit every diagnosis.

Form fields: files under ``image`` (one or many); optional ``run_id`` (default: the active model),
``explainer`` (default ``DEFAULT_EXPLAINER``; ``none`` for no map), ``target`` (class name or index;
default: each image's predicted class), ``alpha`` (0..1, default 0.5), ``colormap`` (default ``jet``),
``layer`` and ``channels`` (a feature-map grid of that layer; ``layer=default`` for the target layer),
``images`` (which PNGs to return, comma-separated from ``original,overlay,heatmap``, default all three:
a client that blends the heatmap itself, like the Diagnose page, asks for ``original,heatmap``).
For a model trained on crops of mammograms (its dataset has ``roi_crop``): one image plus ``roi_x`` and
``roi_y``, the centre of the region of interest in the image's pixels (optional ``roi_radius``); the
result is of the crop (see :mod:`busi_web.roi`).
"""

from __future__ import annotations

import base64
import functools
import io
import threading
from typing import Any

import numpy as np
from PIL import Image

from flask import Flask, current_app, jsonify, request

from ..auth import current_user
from ..errors import UserError
from ..roi import roi_crops
from .api import bp, store
from .api_batching import MicroBatcher

_batcher_lock = threading.Lock()


def batcher_of(app: Flask) -> MicroBatcher:
    """The app's :class:`MicroBatcher` (created on first use, in the serving process)."""
    with _batcher_lock:
        batcher = app.extensions.get("busi_batcher")
        if batcher is None:
            batcher = app.extensions["busi_batcher"] = MicroBatcher()
        return batcher


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=16)
def _palette(colormap: str) -> bytes:
    """The colormap as a 256-entry RGB palette, built once from :func:`busi_web.render.colorize`."""
    from ..render import colorize

    return colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :], colormap)[0].astype(np.uint8).tobytes()


def render_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float, colormap: str
                   ) -> tuple[Image.Image, Image.Image]:
    """``(overlay, coloured heatmap)``: the same pictures as :func:`busi_web.render.overlay_array` and
    :func:`~busi_web.render.colorize` (within 2/255), made with a palette lookup and ``Image.blend``, which run in
    C without holding the GIL: request threads then leave the interpreter to the model's thread. The overlay is
    RGB; the heatmap stays a palette image, a third of the bytes to encode as PNG."""
    levels = Image.fromarray(np.rint(np.clip(np.nan_to_num(heatmap, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8),
                             "L")
    base = Image.fromarray(image).convert("RGB")
    if base.size != levels.size:  # resample the levels, then colour them (as render.overlay_array does)
        levels = levels.resize(base.size, Image.BILINEAR)
    heat = levels.convert("P")  # level k becomes palette index k
    heat.putpalette(_palette(colormap))
    return Image.blend(base, heat.convert("RGB"), float(alpha)), heat


def fast_png(arr: np.ndarray | Image.Image) -> bytes:
    """PNG bytes for a response: zlib level 1 (about 3x faster than the default, files ~10% larger), and an
    RGB image whose channels are equal (a grey scan) is written as one channel."""
    if isinstance(arr, np.ndarray):
        if arr.ndim == 3 and arr.shape[2] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) \
                and np.array_equal(arr[..., 1], arr[..., 2]):
            arr = arr[..., 0]
        arr = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    arr.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


PNG_KINDS = ("original", "overlay", "heatmap")  # the pictures an answer can carry (form field ``images``)


def _options(classes: list[str]) -> dict[str, Any]:
    """Parse and check the optional form fields; 400 with ``fields`` naming the bad one."""
    form = request.form
    explainer = (form.get("explainer") or current_app.config["DEFAULT_EXPLAINER"]).strip()
    if explainer.lower() == "none":
        explainer = None
    else:
        current_app.extensions["busi_plugins"].explainer(explainer)  # UnknownPlugin -> 400 listing the choices
    try:
        alpha = float(form.get("alpha") or 0.5)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError
    except ValueError:
        raise UserError(f"alpha must be a number from 0 to 1, got {form.get('alpha')!r}", 400,
                        {"alpha": "a number from 0 to 1"}) from None
    target = _target(form.get("target"), classes)
    layer = (form.get("layer") or "").strip() or None
    channels = None
    if layer or form.get("channels"):
        try:
            channels = int(form.get("channels") or 16)
            if not 1 <= channels <= 256:
                raise ValueError
        except ValueError:
            raise UserError(f"channels must be a whole number from 1 to 256, got {form.get('channels')!r}", 400,
                            {"channels": "1 to 256"}) from None
    colormap = (form.get("colormap") or "jet").strip()
    try:
        _palette(colormap)
    except ValueError as exc:  # the message lists the colormaps that exist
        raise UserError(str(exc), 400, {"colormap": str(exc)}) from None
    wanted = [w.strip().lower() for w in (form.get("images") or ",".join(PNG_KINDS)).split(",") if w.strip()]
    unknown = [w for w in wanted if w not in PNG_KINDS]
    if unknown or not wanted:
        raise UserError(f"images must name some of {', '.join(PNG_KINDS)} (comma-separated), got "
                        f"{form.get('images')!r}", 400, {"images": f"some of {', '.join(PNG_KINDS)}"})
    return {"explainer": explainer, "alpha": alpha, "target": target, "colormap": colormap,
            "layer": None if layer in (None, "default") else layer, "channels": channels, "images": set(wanted)}


def _target(raw: str | None, classes: list[str]) -> int | None:
    raw = (raw or "").strip()
    if not raw or raw.lower() in ("predicted", "auto"):
        return None
    if raw in classes:
        return classes.index(raw)
    if raw.lstrip("-").isdigit() and 0 <= int(raw) < len(classes):
        return int(raw)
    raise UserError(f"target must be one of {', '.join(classes)} (or its index 0-{len(classes) - 1}), got {raw!r}",
                    400, {"target": f"one of {', '.join(classes)}"})


def _predictor(run_id: int | None):
    from ..active_model import NoModel, predictor_for
    from ..checkpoint import CheckpointError
    from ..store import RunNotFound

    try:
        return predictor_for(current_app, run_id)
    except RunNotFound as exc:
        raise UserError(str(exc), 404, {"run_id": "no such run"}) from None
    except NoModel as exc:
        raise UserError(str(exc), 409) from None
    except CheckpointError as exc:
        raise UserError(f"the model cannot be loaded: {exc}; promote another run", 409) from None


def _result(upload, pred, opts: dict[str, Any], predictor, roi=None) -> dict[str, Any]:
    # With a region of interest the model saw the crop: the images and the heatmap are of the crop.
    image = upload.image if roi is None else roi.image
    out = {"filename": upload.filename, "label": pred.label, "index": pred.index,
           "probabilities": pred.probabilities, "target": pred.target_label, "target_index": pred.target,
           "explainer": pred.explainer, "width": int(image.shape[1]), "height": int(image.shape[0]),
           "original_png": _b64(fast_png(image)) if "original" in opts["images"] else None,
           "overlay_png": None, "heatmap_png": None,
           "feature_maps_png": None, "feature_layer": None, "roi": None if roi is None else roi.to_dict()}
    try:
        if pred.heatmap is not None:
            blended, heat = render_heatmap(image, pred.heatmap, opts["alpha"], opts["colormap"])
            if "overlay" in opts["images"]:
                out["overlay_png"] = _b64(fast_png(blended))
            if "heatmap" in opts["images"]:
                out["heatmap_png"] = _b64(fast_png(heat))
        if opts["channels"] is not None:
            layer = opts["layer"] or predictor.target_layer
            out["feature_maps_png"] = _b64(predictor.feature_maps(image, layer, opts["channels"]))
            out["feature_layer"] = layer
    except ValueError as exc:  # an unknown layer: the message names the choices
        raise UserError(str(exc), 400, {"layer": str(exc)}) from None
    return out


@bp.post("/predict")
def predict():
    """Classify and explain the uploaded images; every diagnosis writes an audit row ``diagnose``."""
    from ..uploads import read_uploads

    app = current_app._get_current_object()
    # Uploads are checked first: a bad file is a 400/413 whether or not a model exists.
    uploads = read_uploads(app, [f for f in request.files.getlist("image") if f.filename], current_user.name)
    run_id = _int_field("run_id")
    predictor = _predictor(run_id)
    opts = _options(predictor.classes)
    rois = roi_crops(predictor, app.extensions["busi_plugins"], [u.image for u in uploads], request.form)
    images = [u.image for u in uploads] if rois is None else [r.image for r in rois]
    targets = None if opts["target"] is None else [opts["target"]] * len(uploads)
    try:
        preds = batcher_of(app).predict(predictor, images, opts["explainer"], targets, layer=None)
    except ValueError as exc:  # e.g. an image the preprocessing cannot take; the message says why
        raise UserError(str(exc), 400) from None
    served = _served_run_id(predictor, run_id)
    results = []
    for k, (upload, pred) in enumerate(zip(uploads, preds, strict=True)):
        roi = None if rois is None else rois[k]
        results.append(_result(upload, pred, opts, predictor, roi))
        store().audit("diagnose", user=current_user.name, run_id=served, filename=upload.filename,
                      label=pred.label, probabilities=pred.probabilities, explainer=pred.explainer,
                      target=pred.target_label, stored=upload.stored_path,
                      **({} if roi is None else {"roi": roi.to_dict()}))
    return jsonify({"run_id": served, "classes": predictor.classes, "results": results})


def _int_field(name: str) -> int | None:
    raw = (request.form.get(name) or request.args.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise UserError(f"{name} must be a run number, got {raw!r}", 400, {name: "a run number"})
    return int(raw)


def _served_run_id(predictor, run_id: int | None) -> int | None:
    if run_id is not None:
        return run_id
    meta_id = predictor.checkpoint_meta.run_id
    try:
        return int(meta_id) if meta_id is not None else None
    except (TypeError, ValueError):
        active = store().active_model()
        return None if active is None else active["run_id"]
