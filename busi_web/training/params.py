"""Training hyperparameters: declared as :class:`~busi_web.specs.Param` so the web form renders them.

:func:`validate_train_params` types and checks one dict of training
parameters; :func:`prepare_run_params` checks everything a run needs (the
backbone, the dataset, their parameters and the data folder) *before* the
run is created, so bad input is refused up front instead of failing later
in the trainer process.

Defaults follow the original system: 20 epochs, batch 16, Adam at 1e-4,
resize the shorter side to 256 then crop 224, horizontal flips, rotations up
to 15 degrees, ImageNet normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from busi_web.data.scan import NORMALISATIONS
from busi_web.data.sites import Source, dataset_label, open_sources, sites_of
from busi_web.errors import UserError
from busi_web.explain.base import default_target_layer, resolve_layer
from busi_web.plugins import PluginRegistry, one_line, owner_module, where
from busi_web.specs import BackboneSpec, InvalidParameters, Param
from busi_web.training.aids import LesionGuide
from busi_web.training.site_loss import site_class_table

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "none")
BALANCING = ("none", "weighted_loss", "oversample")
MONITORS = ("val_macro_f1", "val_loss", "last")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

TRAIN_PARAMS: tuple[Param, ...] = (
    Param("epochs", "int", 20, "Passes over the training images.", minimum=1, maximum=1000),
    Param("batch_size", "int", 16, "Images per optimisation step; lower it when memory runs out.",
          minimum=1, maximum=4096),
    Param("lr", "float", 1e-4, "Learning rate.", minimum=1e-7, maximum=10.0),
    Param("optimizer", "choice", "adam", "Optimiser.", choices=OPTIMIZERS),
    Param("weight_decay", "float", 1e-4, "L2 weight decay (decoupled for adamw).", minimum=0.0, maximum=1.0),
    Param("momentum", "float", 0.9, "Momentum (sgd only).", minimum=0.0, maximum=0.999, advanced=True),
    Param("scheduler", "choice", "plateau", "Learning-rate schedule: 'plateau' halves the rate after 3 epochs "
          "without improvement of the monitored metric, 'cosine' anneals to zero over the epochs.",
          choices=SCHEDULERS, advanced=True),
    Param("input_size", "int", 224, "Side of the square crop the network sees, in pixels.", minimum=16,
          maximum=1024),
    Param("resize", "int", 256, "The shorter image side is resized to this before cropping (>= input_size).",
          minimum=16, maximum=2048),
    Param("hflip", "bool", True, "Random horizontal flips while training."),
    Param("rotation", "float", 15.0, "Random rotation while training, up to +/- this many degrees.",
          minimum=0.0, maximum=180.0),
    Param("crop_scale", "float", 1.0, "Smallest share of the image a training crop covers: 1 crops input_size "
          "pixels at a random position (a shift); below 1, random-resized crops of that share or more, at "
          "aspect ratios from 3:4 to 4:3, scaled to input_size.", minimum=0.05, maximum=1.0),
    Param("intensity", "float", 0.0, "Random brightness, contrast and gamma while training, each within "
          "+/- this fraction (0: off).", minimum=0.0, maximum=0.9),
    Param("scanner", "float", 0.0, "Scanner augmentation: what another scanner would change (a depth gain ramp, a "
          "coarser resolution, blur and speckle), each with probability one half, at this strength from 0 (off) "
          "to 1.", minimum=0.0, maximum=1.0),
    Param("scan_crop", "bool", False, "Crop each image to its ultrasound region before the model sees it (the "
          "DICOM's SequenceOfUltrasoundRegions, else the lit rows and columns), in training and diagnosis alike."),
    Param("scan_marks", "bool", False, "Paint over burned-in marks (calipers, text) that the mark detector finds "
          "before the model sees the image, in training and diagnosis alike.", advanced=True),
    Param("normalise", "choice", "none", "Intensity normalisation of each image before the model sees it: "
          "'stretch' maps its 1st-99th percentiles to the full range, 'equalize' applies CLAHE, 'none' leaves it.",
          choices=NORMALISATIONS),
    Param("mixup", "float", 0.0, "Mixup: blend each training image (and its lesion mask) with another image of "
          "its batch, in shares drawn from Beta(a, a) for this a, and blend their labels in the same shares (0: "
          "off; 0.2 to 0.4 is usual).", minimum=0.0, maximum=10.0, advanced=True),
    Param("label_smoothing", "float", 0.0, "Share of each target's probability spread over the other classes "
          "(0: plain cross-entropy).", minimum=0.0, maximum=0.5, advanced=True),
    Param("ema", "float", 0.0, "Keep an exponential moving average of the weights with this decay per step "
          "and validate, test and save it instead of the raw weights (0: off; 0.99 to 0.999 smooths noisy "
          "small-data training).", minimum=0.0, maximum=0.9999),
    Param("lesion_loss", "float", 0.0, "Lesion guidance: weight of an auxiliary loss that teaches the "
          "explained layer's features where the lesion mask is (datasets with masks, such as BUSI; 0: off); for a "
          "backbone that outlines lesions (segmenting_resnet), the weight of Dice + BCE on its lesion map. "
          "Only training uses the masks; prediction needs none.", minimum=0.0, maximum=10.0),
    Param("lesion_layers", "str", "", "Lesion guidance on more layers: comma-separated module names (e.g. "
          "layer2,layer3 for the ResNets) whose finer feature maps also learn the lesion's outline, besides the "
          "explained layer (empty: the explained layer only).", advanced=True),
    Param("balance_sites", "bool", False, "With several datasets, draw each site equally often in training (and "
          "each class of a site equally often when balance is 'oversample'), whatever its size."),
    Param("site_classes", "bool", False, "With several datasets, each image's loss compares only the classes "
          "its site has: a site without normal images (BUS-BRA) then teaches nothing for or against 'normal', "
          "so the look of a site cannot become evidence for a class it alone has."),
    Param("site_adversary", "float", 0.0, "With several datasets, the strength of a site adversary: a small head "
          "learns to tell the site from the explained layer's features of the images whose class every site has, "
          "and the features are trained against it (gradient reversal, ramped up over the run), so that they "
          "carry as little of the site as they can (0: off; 0.1 to 1 is usual).", minimum=0.0, maximum=10.0,
          advanced=True),
    Param("balance", "choice", "weighted_loss", "Class balancing: 'weighted_loss' weighs the loss by inverse "
          "class frequency, 'oversample' draws rare classes more often, 'none' does neither.", choices=BALANCING),
    Param("monitor", "choice", "val_macro_f1", "Validation metric that picks the best model and drives early "
          "stopping; 'last' keeps the model of the last epoch (with ema, the weight average at the end) and "
          "validation only reports (patience must then be 0).", choices=MONITORS),
    Param("patience", "int", 7, "Stop after this many epochs without improvement of the monitored metric "
          "(0: never stop early).", minimum=0, maximum=1000),
    Param("seed", "int", 42, "Seed for the split, initial weights, augmentation and shuffling.", minimum=0,
          maximum=2**31 - 1),
    Param("val_frac", "float", 0.15, "Fraction of the images held out for validation.", minimum=0.01,
          maximum=0.5),
    Param("test_frac", "float", 0.15, "Fraction of the images held out for the final test.", minimum=0.01,
          maximum=0.5),
    Param("device", "str", "auto", "auto (a CUDA GPU when present), cpu, cuda or cuda:N.", advanced=True),
    Param("amp", "bool", True, "Mixed precision on CUDA (ignored on the CPU).", advanced=True),
    Param("channels_last", "bool", True, "channels_last memory layout on CUDA (ignored on the CPU).",
          advanced=True),
    Param("workers", "int", -1, "DataLoader worker processes; -1: automatic (0 on the CPU, up to 8 with a GPU).",
          minimum=-1, maximum=64, advanced=True),
    Param("cache_mb", "int", 2048, "Keep decoded images in memory when they fit in this many MB (0: never).",
          minimum=0, maximum=1_000_000, advanced=True),
)
_BY_NAME = {p.name: p for p in TRAIN_PARAMS}


def train_defaults() -> dict[str, Any]:
    """The default value of every training parameter."""
    return {p.name: p.default for p in TRAIN_PARAMS}


def validate_train_params(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return complete, typed training parameters, or raise :class:`InvalidParameters`.

    Unknown keys are errors (a typo must not be silently ignored), and the
    parameters are checked against each other (``resize >= input_size``,
    ``val_frac + test_frac < 0.9``, a CUDA device only when one is present).
    """
    values = dict(values or {})
    errors: dict[str, str] = {}
    for key in values:
        if key not in _BY_NAME:
            errors[key] = f"unknown training parameter; known: {', '.join(sorted(_BY_NAME))}"
    out: dict[str, Any] = {}
    for p in TRAIN_PARAMS:
        try:
            out[p.name] = p.coerce(values.get(p.name))
        except ValueError as exc:
            errors[p.name] = str(exc)
    if "resize" in out and "input_size" in out and out["resize"] < out["input_size"]:
        errors["resize"] = (f"must be at least input_size ({out['input_size']}): the image is resized to "
                            f"{out['resize']}, then a {out['input_size']} px square is cropped from it")
    if "val_frac" in out and "test_frac" in out and out["val_frac"] + out["test_frac"] >= 0.9:
        errors["test_frac"] = (f"val_frac + test_frac is {out['val_frac'] + out['test_frac']:g}; keep it below "
                               "0.9 so enough images are left for training")
    if out.get("monitor") == "last" and out.get("patience"):
        errors["patience"] = ("early stopping needs a monitored metric, and monitor 'last' has none; set patience "
                              "to 0 or monitor val_macro_f1 or val_loss")
    if out.get("lesion_layers") is not None:
        names = [n.strip() for n in str(out["lesion_layers"]).split(",")]
        out["lesion_layers"] = ",".join(n for n in names if n)
        if any(" " in n for n in names):
            errors["lesion_layers"] = "module names have no spaces; separate them with commas, e.g. layer2,layer3"
        elif out["lesion_layers"] and out.get("lesion_loss", 0) == 0:
            errors["lesion_layers"] = "has no effect while lesion_loss is 0; set lesion_loss above 0 or clear it"
    if "device" in out:
        device = str(out["device"]).strip().lower() or "auto"
        out["device"] = device
        if not _DEVICE_RE.match(device):
            errors["device"] = f"must be auto, cpu, cuda or cuda:N (got {out['device']!r})"
        elif device.startswith("cuda") and not _cuda_available():
            errors["device"] = f"{device!r} asked for, but this machine has no CUDA GPU; use auto or cpu"
    if errors:
        raise InvalidParameters(errors, "training")
    return out


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _check_paths(spec_params: tuple[Param, ...], values: dict[str, Any], what: str) -> None:
    """A ``path`` parameter that is set must name an existing file or folder."""
    errors = {p.name: f"{values[p.name]} does not exist; give an existing path or leave it empty"
              for p in spec_params
              if p.type == "path" and values.get(p.name) and not Path(str(values[p.name])).expanduser().exists()}
    if errors:
        raise InvalidParameters(errors, what)


def prepare_run_params(registry: PluginRegistry, backbone: str, dataset: str | Sequence[Source], *,
                       train: Mapping[str, Any] | None = None, backbone_params: Mapping[str, Any] | None = None,
                       dataset_params: Mapping[str, Any] | None = None,
                       data_dir: str | None = None) -> dict[str, Any]:
    """Validate a whole run before it is created: ``{"train": {...}, "backbone": {...}, "dataset": {...}}``.

    ``dataset`` is a dataset's name (with ``dataset_params`` and ``data_dir``), or several
    :class:`~busi_web.data.sites.Source` for a run that trains on several datasets at once; such a run's
    parameters also hold ``"datasets"``, the sources with their typed parameters (``"dataset"`` is then empty).

    Raises :class:`~busi_web.plugins.UnknownPlugin` for a backbone or dataset
    no plugin registers, :class:`InvalidParameters` for bad values (a weights
    file that does not fit the backbone included) and :class:`DatasetError`
    (naming the path) when the data folder is missing or the dataset cannot
    train a classifier (e.g. a single class).
    """
    sources = [Source(dataset, data_dir, dict(dataset_params or {}))] if isinstance(dataset, str) else list(dataset)
    bb_spec = registry.backbone(backbone)
    for s in sources:
        registry.dataset(s.dataset)
    train_values = validate_train_params(train)
    bb_values = bb_spec.validate(backbone_params)
    _check_paths(bb_spec.params, bb_values, backbone)
    # Scanning the folders is cheap (nothing is decoded) and catches empty or one-class folders now.
    checked, ds = open_sources(registry, sources)
    for s in checked:
        _check_paths(registry.dataset(s.dataset).params, dict(s.params), s.dataset)
    ds.check_usable()
    label = dataset_label([s.dataset for s in checked])
    for name, what in (("balance_sites", "balances"), ("site_classes", "compares the classes of"),
                       ("site_adversary", "hides the site among")):
        if train_values[name] and len(checked) < 2:
            raise InvalidParameters({name: f"{what} several datasets, and this run has one; add a dataset or "
                                           "switch it off"}, "training")
    if train_values["site_adversary"] > 0:
        _, _, table = site_class_table(sites_of(ds), ds.labels, len(ds.classes))
        if not bool(table.all(0).any()):
            raise InvalidParameters({"site_adversary": "the datasets share no class, and the adversary is shown only "
                                                       "images of a class every site has; switch it off"}, "training")
    if train_values["lesion_loss"] > 0 and not ds.has_masks():
        raise InvalidParameters({"lesion_loss": f"dataset {label!r} has no lesion masks to learn from; set it to "
                                                "0, or add masks (NAME_mask.png beside NAME.png)"}, "training")
    # One build and one dry forward, so that a run that cannot start is refused now, not when it starts: a weights
    # file must fit the backbone, the output must be one logit per class, and the guided layers must exist.
    files = [p.name for p in bb_spec.params if p.type == "path" and bb_values.get(p.name)]
    owner = registry.owner_of("backbones", backbone) or "(unknown)"
    try:
        model = bb_spec.build(bb_values, num_classes=len(ds.classes), in_channels=ds.channels)
    except ValueError as exc:
        if files:
            raise InvalidParameters({files[0]: str(exc)}, backbone) from None
        raise UserError(f"backbone {backbone!r} cannot be built with these parameters: {exc}", 400,
                        {"backbone": str(exc)}) from None
    except Exception as exc:  # noqa: BLE001 - a plugin's factory may raise anything: say which plugin
        at = where(exc, owner_module(registry, owner))
        raise UserError(f"plugin {owner!r}: backbone {backbone!r}'s factory failed{at} ({type(exc).__name__}: "
                        f"{one_line(exc)}); nothing was queued: fix or remove the plugin",
                        400, {"backbone": f"the factory failed: {type(exc).__name__}"}) from None
    _check_output(model, backbone, len(ds.classes), ds.channels, train_values["input_size"])
    try:  # the layer the explainers map and lesion guidance teaches: found now, not after every epoch
        resolve_layer(model, default_target_layer(model, bb_spec.target_layer))
    except ValueError as exc:
        raise UserError(f"plugin {owner!r}: backbone {backbone!r} names no usable target layer ({exc}); its "
                        "BackboneSpec needs target_layer, the dotted path of the end of its feature extractor "
                        "(e.g. 'layer4')", 400, {"backbone": "no usable target layer"}) from None
    if train_values["lesion_layers"] and bb_spec.segments:
        raise InvalidParameters({"lesion_layers": f"backbone {backbone!r} learns its own lesion map (lesion_loss "
                                                  "weighs it); leave lesion_layers empty"}, "training")
    if train_values["lesion_layers"]:
        _check_lesion_layers(model, train_values, ds.channels, bb_spec)
    if len(checked) == 1:
        return {"train": train_values, "backbone": bb_values, "dataset": dict(checked[0].params)}
    return {"train": train_values, "backbone": bb_values, "dataset": {}, "datasets": [s.to_dict() for s in checked]}


def _check_output(model: torch.nn.Module, backbone: str, classes: int, channels: int, size: int) -> None:
    """One forward of a blank image: the backbone must give logits ``(1, classes)``."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, channels, size, size))
    except Exception as exc:  # noqa: BLE001 - a plugin's model may raise anything on a wrong input size
        raise UserError(f"backbone {backbone!r} fails on a {channels}-channel {size}x{size} image "
                        f"({type(exc).__name__}: {exc}); choose another input_size, or fix the backbone", 400,
                        {"train.input_size": "the backbone cannot take it"}) from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (1, classes):
        raise UserError(f"backbone {backbone!r} gives an output of shape {shape} for one image; it must give one "
                        f"logit per class, (1, {classes}) for this dataset: its factory must build the classifier "
                        "with the num_classes it is given", 400, {"backbone": f"output {shape}, not (1, {classes})"})


def lesion_layer_names(model: Any, extra: str, declared: str = "") -> list[str]:
    """The layers lesion guidance teaches: the explained one first (the model's, else ``declared``, the backbone
    spec's ``target_layer``), then those named in ``extra``."""
    names = [default_target_layer(model, declared)]
    names += [n.strip() for n in extra.split(",") if n.strip() and n.strip() not in names]
    return names


def lesion_training(model: Any, spec: BackboneSpec, train_values: dict[str, Any], channels: int
                    ) -> tuple[LesionGuide | None, float, str | None]:
    """What the masks teach a run: ``(lesion guide, weight of the outline loss, a line for the log)``.

    A segmenting backbone (``spec.segments``) learns its own lesion map with the outline loss weighted by
    ``lesion_loss``; any other backbone gets lesion guidance on its explained layer (and ``lesion_layers``)
    when ``lesion_loss`` is positive. Nothing (``None, 0.0, None``) when neither applies.
    """
    weight = train_values["lesion_loss"]
    if spec.segments:
        return None, weight, (f"{spec.name} outlines the lesion: Dice + BCE on its lesion map (weight {weight:g})"
                              if weight > 0 else f"{spec.name} outlines the lesion, but lesion_loss is 0: its "
                              "outline is not trained (the classifier still is)")
    if weight <= 0:
        return None, 0.0, None
    names = lesion_layer_names(model, train_values["lesion_layers"], spec.target_layer)
    size = train_values["input_size"]
    guide = LesionGuide(model, [resolve_layer(model, n) for n in names], torch.zeros(1, channels, size, size), weight)
    return guide, 0.0, f"lesion guidance on {', '.join(names)} (weight {weight:g})"


def _check_lesion_layers(model: Any, train_values: dict[str, Any], channels: int, spec: BackboneSpec) -> None:
    """Every guided layer must exist and give a 2-D feature map (one dry forward at the input size)."""
    try:
        names = lesion_layer_names(model, train_values["lesion_layers"], spec.target_layer)
        layers = [resolve_layer(model, n) for n in names]
        size = train_values["input_size"]
        LesionGuide(model, layers, torch.zeros(1, channels, size, size), train_values["lesion_loss"])
    except (ValueError, RuntimeError) as exc:
        raise InvalidParameters({"lesion_layers": f"backbone {spec.name!r}: {exc}"}, "training") from None
