"""Spec objects: what a plugin registers, and how its parameters are validated.

A spec describes one thing a plugin adds (a backbone, an explainer or a
dataset): a unique ``name``, a human ``title`` and ``description``, the
``params`` a user may set, and a ``factory`` that builds the object from
validated values. The web UI renders a form from ``params``; the server
and the CLI validate raw input (strings from a form, JSON values, CLI
``KEY=VALUE`` pairs) with :meth:`Spec.validate` before anything is built.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from busi_web.errors import UserError

if TYPE_CHECKING:  # the contract is read without torch; only the annotations name it
    from torch import Tensor

CONTRACT_VERSION = "1.0"
"""The plugin contract's version: ``MAJOR.MINOR``. A plugin declares the version it was written for as a module
attribute ``BUSI_WEB_CONTRACT = "1.0"`` (beside its hooks); a plugin written for another major version is refused
when it loads, one that declares none is loaded with a note. docs/CHANGELOG.md records every change."""

# Every name a plugin may import, and where from: the contract. docs/plugins.md is checked against it (a test);
# anything else in busi_web may change without notice.
PUBLIC_API: dict[str, str] = {
    "hookimpl": "busi_web.hookspecs",
    "CONTRACT_VERSION": "busi_web.specs",
    "Param": "busi_web.specs",
    "BackboneSpec": "busi_web.specs",
    "ExplainerSpec": "busi_web.specs",
    "DatasetSpec": "busi_web.specs",
    "Explanation": "busi_web.specs",
    "InvalidParameters": "busi_web.specs",
    "ImageDataset": "busi_web.data.datasets",
    "Sample": "busi_web.data.datasets",
    "DatasetError": "busi_web.data.datasets",
    "read_image": "busi_web.data.datasets",
    "CamExplainer": "busi_web.explain.base",
    "CamInputs": "busi_web.explain.base",
    "normalise_maps": "busi_web.explain.base",
    "UserError": "busi_web.errors",
}
# Names that moved, for one contract version: (old module, name) -> new module. The old import still works,
# with a DeprecationWarning that says the new place.
MOVED: dict[tuple[str, str], str] = {
    ("busi_web.explain", "Explanation"): "busi_web.specs",
    ("busi_web.datasets", "ImageDataset"): "busi_web.data.datasets",
    ("busi_web.datasets", "Sample"): "busi_web.data.datasets",
    ("busi_web.datasets", "DatasetError"): "busi_web.data.datasets",
    ("busi_web.datasets", "read_image"): "busi_web.data.datasets",
}
def moved_name(module: str, name: str) -> Any:
    """The object a moved name (:data:`MOVED`) now lives at, with a ``DeprecationWarning`` that says where."""
    new = MOVED[(module, name)]
    warnings.warn(f"{module}.{name} moved to {new}.{name} in plugin contract 1.0; import it from {new} (the old "
                  "place goes in contract 2.0)", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(new), name)


# What the core passes to a factory itself: a spec must not declare these as parameters.
RESERVED_PARAMS = {"backbone": ("num_classes", "in_channels"), "dataset": ("root",), "explainer": ()}

PARAM_TYPES = ("int", "float", "str", "bool", "choice", "path")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class InvalidParameters(UserError):
    """Raised when user-supplied parameters fail validation.

    ``errors`` maps each offending parameter name to a message a user can
    act on; the UI shows each message next to its field.
    """

    def __init__(self, errors: Mapping[str, str], spec_name: str = ""):
        self.errors = dict(errors)
        self.spec_name = spec_name
        where = f" for {spec_name!r}" if spec_name else ""
        detail = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        super().__init__(f"invalid parameters{where}: {detail}", 400, self.errors)


@dataclass(frozen=True)
class Param:
    """One user-settable parameter of a spec.

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``, ``choice``
    (value must be one of ``choices``) or ``path`` (a local file or folder
    path, kept as a string; ``None``/empty allowed unless ``required``).
    ``minimum``/``maximum`` bound numbers (inclusive). ``advanced`` params
    are folded away in the UI.
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    advanced: bool = False

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {PARAM_TYPES}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a choice parameter needs choices")

    def coerce(self, raw: Any) -> Any:
        """Turn a raw value into this parameter's type or raise ``ValueError``."""
        if raw is None or (isinstance(raw, str) and raw.strip() == "" and self.type != "str"):
            if self.required:
                raise ValueError("a value is required")
            return self.default
        if self.type == "int":
            if isinstance(raw, bool):
                raise ValueError(f"expected a whole number, got {raw!r}")
            try:
                value: Any = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
            except (TypeError, ValueError):
                value = None
            if value is None:
                raise ValueError(f"expected a whole number, got {raw!r}")
        elif self.type == "float":
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {raw!r}") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"expected a finite number, got {raw!r}")
        elif self.type == "bool":
            if isinstance(raw, bool):
                value = raw
            elif str(raw).strip().lower() in _TRUE:
                value = True
            elif str(raw).strip().lower() in _FALSE:
                value = False
            else:
                raise ValueError(f"expected true or false, got {raw!r}")
        elif self.type == "choice":
            value = raw
            if value not in self.choices:  # type: ignore[operator]
                # Form values arrive as strings: match on the string form too.
                by_text = {str(c): c for c in self.choices or ()}
                if str(raw) not in by_text:
                    allowed = ", ".join(str(c) for c in self.choices or ())
                    raise ValueError(f"must be one of: {allowed} (got {raw!r})")
                value = by_text[str(raw)]
        else:  # str, path
            value = str(raw)
        if self.type in ("int", "float"):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"must be at least {self.minimum} (got {value})")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be at most {self.maximum} (got {value})")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
            "choices": list(self.choices) if self.choices else None,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "required": self.required,
            "advanced": self.advanced,
        }


@dataclass(frozen=True)
class Spec:
    """Base of every registered thing. See the subclasses for the factory's contract."""

    name: str
    title: str
    description: str
    factory: Callable[..., Any]
    params: tuple[Param, ...] = ()
    kind: str = field(default="spec", init=False)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any] | None = None, *, strict: bool = True) -> dict[str, Any]:
        """Return a complete, typed parameter dict, or raise :class:`InvalidParameters`.

        Missing values take their defaults. With ``strict`` an unknown key is
        an error (a typo in a CLI ``--param`` must not be silently ignored).
        """
        values = dict(values or {})
        errors: dict[str, str] = {}
        out: dict[str, Any] = {}
        known = {p.name for p in self.params}
        if strict:
            for key in values:
                if key not in known:
                    errors[key] = f"unknown parameter; {self.name!r} accepts: {', '.join(sorted(known)) or 'none'}"
        for p in self.params:
            try:
                out[p.name] = p.coerce(values.get(p.name))
            except ValueError as exc:
                errors[p.name] = str(exc)
        if errors:
            raise InvalidParameters(errors, self.name)
        return out

    def build(self, values: Mapping[str, Any] | None = None, **extra: Any) -> Any:
        """Validate ``values`` and call the factory with them plus ``extra``."""
        return self.factory(**self.validate(values), **extra)

    def problems(self) -> list[str]:
        """What is wrong with the spec itself, checked when its plugin loads: a parameter the core passes itself,
        two parameters of one name, a default that its own parameter refuses."""
        found = []
        names = [p.name for p in self.params]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"parameter {dup!r} is declared twice")
        for reserved in RESERVED_PARAMS.get(self.kind, ()):
            if reserved in names:
                found.append(f"parameter {reserved!r} is passed by busi-web itself; remove it from params")
        for p in self.params:
            if p.default is None:
                continue
            try:
                p.coerce(p.default)
            except ValueError as exc:
                found.append(f"parameter {p.name!r}: its default {p.default!r} is refused by its own rules ({exc})")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "params": [p.to_dict() for p in self.params],
        }


@dataclass(frozen=True)
class BackboneSpec(Spec):
    """A classification network.

    ``factory(num_classes=..., in_channels=..., **params)`` returns a plain
    ``torch.nn.Module`` mapping ``(B, in_channels, H, W)`` to logits
    ``(B, num_classes)``. ``num_classes`` and ``in_channels`` are passed by
    the trainer from the dataset and must not be declared in ``params``. When
    a run is submitted the model is built and run once on a blank image; an
    output that is not ``(1, num_classes)`` is refused then, before the run exists.

    ``target_layer`` is the dotted module path of the end of the feature
    extractor (e.g. ``"layer4"``): the layer the explainers map and lesion
    guidance teaches. A model whose layer depends on its parameters may set
    a ``target_layer`` attribute of its own, which then wins.

    ``segments`` declares that the model also outlines the lesion. Its model
    then has a method ``segment(x, masks=None)`` returning ``(logits (B,
    num_classes), lesion_logits (B, 1, h, w))``, the lesion map at the input's
    size or a fraction of it (``forward(x)`` still returns the logits alone),
    and an attribute ``lesion_layer``, the dotted path of the module whose
    output is the lesion map, and ``lesion_threshold``, the probability above
    which a pixel is inside the outline. While training, ``masks`` is
    ``(masks (B, H, W) in [0, 1], has_mask (B,))`` or ``None``; the trainer
    adds Dice + BCE on the lesion map (weighted by the run's ``lesion_loss``).
    """

    target_layer: str = ""
    segments: bool = False
    kind: str = field(default="backbone", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "target_layer": self.target_layer, "segments": self.segments}


@dataclass
class Explanation:
    """What an explainer returns for a batch: the forward pass's results and the maps.

    ``logits`` and ``probs`` are ``(B, K)`` (detached; ``probs`` the softmax
    of ``logits``), ``targets`` ``(B,)`` the class explained for each image,
    and ``maps`` ``(B, H, W)`` in [0, 1] at the input's size, or ``None`` when
    no map was made. All on the images' device.
    """

    logits: Tensor
    probs: Tensor
    targets: Tensor
    maps: Tensor | None = None


@dataclass(frozen=True)
class ExplainerSpec(Spec):
    """A saliency method.

    ``factory(**params)`` returns an object with a method
    ``explain(model, images, targets, target_layer)``:

    * ``model`` is the ``torch.nn.Module`` in eval mode; ``images`` a float
      tensor ``(B, C, H, W)``, preprocessed as in training;
    * ``targets`` is ``None`` (explain each image's predicted class) or a
      ``(B,)`` long tensor of class indices;
    * ``target_layer`` is a dotted module path (``"layer4"``): the backbone's
      declared layer unless the user chose another.

    It returns either an :class:`Explanation`, or just the maps: a tensor
    ``(B, h, w)`` of any range and size. For plain maps the core runs the
    forward pass itself for the probabilities, and scales each map as the
    built-in explainers do: ReLU, bilinear resize to ``(H, W)``, min-max to
    [0, 1] (see :func:`busi_web.explain.base.normalise_maps`). An explainer
    that subclasses :class:`busi_web.explain.base.CamExplainer` and only
    writes ``raw_maps`` gets all of this from the base.

    An exception it raises is reported naming the plugin (a ``ValueError``
    is taken as the user's choice being wrong, e.g. a layer the method cannot
    use, and answered with its message).
    """

    kind: str = field(default="explainer", init=False)


@dataclass(frozen=True)
class DatasetSpec(Spec):
    """A source of labelled images.

    ``factory(root=..., **params)`` returns a :class:`busi_web.data.datasets.ImageDataset`.
    ``root`` is the data folder (``None`` for generated datasets when
    ``needs_data_dir`` is false). ``modality`` names the imaging modality
    (lower case; ``"ultrasound"`` and ``"mammography"`` are built in, any other
    name makes a new one): each modality has its own default model, acceptance
    set and floors, and the Diagnose page adapts to it. ``synthetic`` says the
    images are generated, not scans: a model trained on them is labelled a demo
    wherever it appears.

    ``recommended`` is the recipe the Train page fills in when this dataset is
    chosen: ``{"backbone": NAME, "backbone_params": {...}, "train": {...},
    "note": "..."}`` (every key optional; values are raw parameter values,
    validated like any user input when a run is created).

    ``roi_crop`` is for datasets whose samples are crops of a larger image (a
    region of interest of a mammogram): ``roi_crop(image, col, row, params,
    radius=None)`` returns ``(crop, (top, left, side))``, the model's input cut
    around pixel ``(col, row)`` of a full image (origin top-left) by the code
    the dataset crops with, and the window cut, in image pixels. ``params`` are
    the dataset parameters the model was trained with. When it is set, the
    Diagnose page asks for the centre of the region.
    """

    needs_data_dir: bool = True
    modality: str = "ultrasound"
    synthetic: bool = False
    # A dict is unhashable: keep it out of the generated __hash__/__eq__.
    recommended: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    roi_crop: Callable[..., Any] | None = field(default=None, hash=False, compare=False)
    kind: str = field(default="dataset", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.modality, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", self.modality):
            raise ValueError(f"dataset {self.name!r}: modality must be a lower-case name such as 'ultrasound', got "
                             f"{self.modality!r}")

    def to_dict(self) -> dict[str, Any]:
        rec = None if self.recommended is None else {k: (dict(v) if isinstance(v, Mapping) else v)
                                                     for k, v in self.recommended.items()}
        return {**super().to_dict(), "needs_data_dir": self.needs_data_dir, "modality": self.modality,
                "synthetic": self.synthetic, "recommended": rec, "roi": self.roi_crop is not None}
