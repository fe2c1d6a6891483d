"""Regions of interest: diagnosing a full mammogram with a model trained on crops of mammograms.

A model whose dataset registers ``roi_crop`` (see :class:`busi_web.specs.DatasetSpec`)
saw square crops, not whole scans. For such a model the Diagnose page sends the
full image plus the centre of the region the user clicked (``roi_x``, ``roi_y``:
pixels of the uploaded image, origin at the top-left, x to the right), and the
server cuts the crop with the dataset's own code before predicting; the heatmap
is then drawn on the crop. The dataset parameters the model was trained with
(crop size, scaling) come from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from busi_web.errors import UserError
from busi_web.plugins import PluginRegistry, UnknownPlugin
from busi_web.specs import Param


@dataclass
class RoiCrop:
    """The crop a model sees and where it was cut: ``box`` is ``(top, left, side)`` in the uploaded image's pixels."""

    image: np.ndarray
    x: int
    y: int
    box: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        top, left, side = self.box
        return {"x": self.x, "y": self.y, "top": top, "left": left, "side": side}


def roi_cropper(predictor: Any, registry: PluginRegistry) -> Callable[..., Any] | None:
    """The ``roi_crop`` of the dataset ``predictor``'s model was trained on, or ``None`` (whole images)."""
    name = predictor.checkpoint_meta.dataset
    if not name:
        return None
    try:
        return registry.dataset(name).roi_crop
    except UnknownPlugin:  # the dataset plugin is gone: the model still classifies whole images
        return None


def roi_info(predictor: Any, registry: PluginRegistry) -> dict[str, Any]:
    """What the Diagnose page needs to know: ``roi`` (does the model take a region?) and the crop size."""
    cropper = roi_cropper(predictor, registry)
    params = predictor.dataset_params
    size = params.get("crop_size", predictor.checkpoint_meta.input_size)
    return {"dataset": predictor.checkpoint_meta.dataset, "roi": cropper is not None,
            "roi_size": int(size) if cropper is not None else None}


def _number(form: Mapping[str, str], name: str, limit: int, what: str) -> float:
    """A pixel coordinate of the form, typed and bounded by the one parameter parser (:class:`Param`)."""
    param = Param(name, "float", required=True, minimum=0, maximum=limit - 1)
    try:
        return param.coerce(form.get(name))
    except ValueError:
        raise UserError(f"{name} must be a pixel {what} from 0 to {limit - 1} of the uploaded image, got "
                        f"{form.get(name)!r}; click inside the mammogram", 400, {name: f"0 to {limit - 1}"}) from None


def roi_crops(predictor: Any, registry: PluginRegistry, images: list[np.ndarray],
              form: Mapping[str, str], scale: float = 1.0) -> list[RoiCrop] | None:
    """The crops to diagnose, or ``None`` when the model takes whole images.

    The form's coordinates are pixels of the uploaded file; ``scale`` is how the decoded image relates to it
    (below 1 when it was shrunk on decoding): the crop is cut from the decoded image, and the answer's
    centre and box are in the uploaded file's pixels again.

    Raises :class:`~busi_web.errors.UserError` (400) for a region sent to a
    whole-image model, a crop model without a region, several images with one
    region, or coordinates outside the image.
    """
    given = any((form.get(k) or "").strip() for k in ("roi_x", "roi_y"))
    cropper = roi_cropper(predictor, registry)
    if cropper is None:
        if given:
            raise UserError("this model classifies whole images and takes no region of interest; leave out "
                            "roi_x and roi_y, or choose a mammography model", 400, {"roi_x": "not used"})
        return None
    size = roi_info(predictor, registry)["roi_size"]
    if not given:
        raise UserError(f"this mammography model classifies {size} px regions of interest: give roi_x and roi_y, "
                        "the centre of the region in pixels of the full mammogram (on the Diagnose page, click "
                        "it)", 400, {"roi_x": "required", "roi_y": "required"})
    if len(images) != 1:
        raise UserError(f"one region of interest was given for {len(images)} images; send one mammogram at a time",
                        400, {"image": "one mammogram"})
    image = images[0]
    h, w = (round(side / scale) for side in image.shape[:2])  # the uploaded file's size
    x = int(_number(form, "roi_x", w, "column"))
    y = int(_number(form, "roi_y", h, "row"))
    radius = None
    if (form.get("roi_radius") or "").strip():
        radius = _number(form, "roi_radius", max(h, w) + 1, "radius") * scale
    inside = (min(int(x * scale), image.shape[1] - 1), min(int(y * scale), image.shape[0] - 1))
    crop, box = cropper(image, *inside, predictor.dataset_params, radius=radius)
    box = tuple(round(int(v) / scale) for v in box)
    return [RoiCrop(np.ascontiguousarray(crop), x, y, box)]  # type: ignore[arg-type]
