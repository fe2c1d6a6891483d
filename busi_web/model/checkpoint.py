"""Model checkpoints: ONE file with the weights and everything needed to rebuild and preprocess.

The file is ``torch.save`` of a plain dict::

    {"format": "busi-web-checkpoint", "format_version": 1,
     "meta": {...plain str/int/float/bool/list/dict values...},
     "state_dict": {name: tensor}}

Only plain types and tensors are stored, so loading uses
``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run
code on the server. The model is rebuilt through the plugin registry from
the backbone name and parameters, then its weights load strictly.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from busi_web.data.preprocess import PreprocessConfig
from busi_web.data.scan import ScanSteps
from busi_web.errors import UserError
from busi_web.plugins import PluginRegistry, UnknownPlugin
from busi_web.specs import InvalidParameters

log = logging.getLogger(__name__)

FORMAT = "busi-web-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint cannot be written or used; the message names the file and what to do (409 on the web)."""

    status = 409


@dataclass
class CheckpointMeta:
    """Everything about a trained model except its weights.

    ``backbone_params`` are the validated spec parameters (without
    ``num_classes``/``in_channels``). ``extra`` is free-form plain data
    (``run_id``, metrics, ...). ``target_layer`` empty means: the model's
    ``target_layer`` attribute, else the spec's.
    """

    backbone: str
    classes: list[str]
    backbone_params: dict[str, Any] = field(default_factory=dict)
    backbone_version: str | None = None
    in_channels: int = 3
    input_size: int = 224
    resize: int = 256
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    modality: str = "ultrasound"
    dataset: str = ""
    target_layer: str = ""
    scan: dict[str, Any] = field(default_factory=dict)  # the scan steps (busi_web.data.scan.ScanSteps); {}: none
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def run_id(self) -> Any:
        return self.extra.get("run_id")

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field of the wrong type or value."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a plugin name, got {self.backbone!r}")
        if not isinstance(self.classes, list) or not self.classes or \
                not all(isinstance(c, str) and c for c in self.classes):
            raise ValueError(f"classes must be a list of non-empty class names, got {self.classes!r}")
        for name in ("backbone_params", "extra", "scan"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name in ("in_channels", "input_size", "resize"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        self.preprocess_config()

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model was trained with."""
        return PreprocessConfig(input_size=self.input_size, resize=self.resize, mean=tuple(self.mean),
                                std=tuple(self.std), channels=self.in_channels, scan=ScanSteps.from_dict(self.scan))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _plain(value: Any, where: str) -> Any:
    """Check that ``value`` is made of types ``weights_only`` loading accepts (and JSON can show)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return value.item()
    raise CheckpointError(f"checkpoint metadata {where} holds a {type(value).__name__}; "
                          "store only str, int, float, bool, None, lists and dicts")


def _meta_from_mapping(data: Mapping[str, Any]) -> CheckpointMeta:
    data = dict(data)
    known = {f.name for f in fields(CheckpointMeta)}
    unknown = sorted(set(data) - known - {"num_classes"})
    if unknown:
        raise CheckpointError(f"unknown checkpoint metadata field(s): {', '.join(unknown)}; known fields: "
                              f"{', '.join(sorted(known))} (put anything else in 'extra')")
    n = data.pop("num_classes", None)
    try:
        meta = CheckpointMeta(**data)
    except TypeError as exc:
        raise CheckpointError(f"incomplete checkpoint metadata: {exc}") from None
    if n is not None and n != len(meta.classes or []):
        raise CheckpointError(f"checkpoint metadata says num_classes={n} but names {len(meta.classes or [])} classes")
    return meta


def _complete(model: nn.Module, meta: CheckpointMeta, registry: PluginRegistry | None) -> CheckpointMeta:
    meta = CheckpointMeta.from_dict({**asdict(meta), "classes": list(meta.classes)})
    try:
        meta.check()
    except ValueError as exc:
        raise CheckpointError(f"cannot save checkpoint: invalid metadata: {exc}") from None
    cfg = meta.preprocess_config()  # fills the default mean/std for the channel count
    data = meta.to_dict()
    data.pop("num_classes")
    data.update(mean=list(cfg.mean), std=list(cfg.std), format_version=FORMAT_VERSION,
                created_at=meta.created_at or time.time())
    if not meta.target_layer:
        data["target_layer"] = getattr(model, "target_layer", "") or ""
    if registry is not None and (meta.backbone_version is None or not data["target_layer"]):
        try:
            if meta.backbone_version is None:
                data["backbone_version"] = registry.version_of("backbones", meta.backbone)
            if not data["target_layer"]:
                data["target_layer"] = registry.backbone(meta.backbone).target_layer
        except UnknownPlugin:
            pass  # saving a model of an unregistered backbone is allowed; loading will say what is missing
    return CheckpointMeta.from_dict({k: _plain(v, k) for k, v in data.items()})


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta | Mapping[str, Any],
                    registry: PluginRegistry | None = None) -> CheckpointMeta:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically; return the completed meta.

    ``meta`` is a :class:`CheckpointMeta` or a dict of its fields. A missing
    ``backbone_version`` and ``target_layer`` are filled from the registry
    (and the model). The file is written to a temporary file in
    the same folder and renamed over ``path``, so a reader never sees half a file.
    """
    path = Path(path)
    if not isinstance(meta, CheckpointMeta):
        meta = _meta_from_mapping(meta)
    meta = _complete(model, meta, registry)
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta.to_dict(), "state_dict": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return meta


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Read and check a checkpoint file without building the model: ``(meta, state_dict)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; train a model or pick an existing run's model")
    def corrupt(reason: str) -> CheckpointError:
        return CheckpointError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a PyTorch "
                               f"file ({reason}); re-train the model or restore the file from a backup")

    # busi-web always writes torch's zip format; anything else (a legacy pickle, random bytes) never reaches the
    # unpickler, whose errors on garbage are arbitrary (IndexError, KeyError, ...).
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise corrupt("it does not start like a zip archive" if head else "the file is empty")
    try:
        obj: Any = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle an untrusted file means "unreadable"
        log.debug("torch.load(%s) failed", path, exc_info=True)
        # torch's own messages are long and suggest weights_only=False, which would be unsafe here.
        if isinstance(exc, pickle.UnpicklingError):
            reason = "not a PyTorch file, or it holds Python objects that safe loading refuses"
        elif isinstance(exc, EOFError) or "zip" in str(exc).lower():
            reason = "the archive is incomplete or damaged"
        else:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        raise corrupt(reason) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a busi-web checkpoint (it holds {what}); a busi-web checkpoint is "
                              "written by the trainer (model.pt in a run folder)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format version {version!r}; the file is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer busi-web (checkpoint format {version}; this version "
                              f"reads up to {FORMAT_VERSION}); upgrade busi-web to use it")
    state, raw_meta = obj.get("state_dict"), obj.get("meta")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is a damaged checkpoint: its state_dict is missing or holds non-tensors")
    if not isinstance(raw_meta, dict):
        raise CheckpointError(f"{path} is a damaged checkpoint: its metadata is missing")
    try:
        meta = CheckpointMeta.from_dict(raw_meta)
        meta.check()
        if "num_classes" in raw_meta and raw_meta["num_classes"] != meta.num_classes:
            raise ValueError(f"num_classes {raw_meta['num_classes']} but {meta.num_classes} class names")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged checkpoint: invalid metadata ({exc})") from None
    return meta, state


def build_model(meta: CheckpointMeta, registry: PluginRegistry, source: str = "") -> nn.Module:
    """Build an untrained model for ``meta`` through the registry (no weights loaded)."""
    where = f"{source}: " if source else ""
    try:
        spec = registry.backbone(meta.backbone)
    except UnknownPlugin as exc:
        version = f" version {meta.backbone_version}" if meta.backbone_version else ""
        raise CheckpointError(f"{where}the model needs backbone {meta.backbone!r} (from a plugin{version}), which "
                              f"no installed plugin registers; install the plugin that provides it "
                              f"({exc})") from None
    params = dict(meta.backbone_params)
    if "pretrained_path" in {p.name for p in spec.params}:
        params["pretrained_path"] = None  # the checkpoint's weights replace them; the file may be gone
    try:
        return spec.build(params, num_classes=meta.num_classes, in_channels=meta.in_channels)
    except InvalidParameters as exc:
        raise CheckpointError(f"{where}the installed {meta.backbone!r} backbone (plugin version "
                              f"{registry.version_of('backbones', meta.backbone)}) does not accept the saved "
                              f"parameters (saved with version {meta.backbone_version}): {exc}; install the "
                              "plugin version the model was trained with") from None


def load_checkpoint(path: str | Path, registry: PluginRegistry,
                    map_location: Any = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint, load its weights strictly, put it in eval mode.

    Raises :class:`CheckpointError` for a missing, corrupt, foreign or newer
    file, a backbone that no installed plugin registers, or weights that do
    not fit the rebuilt model.
    """
    meta, state = read_checkpoint(path, map_location)
    model = build_model(meta, registry, source=str(path))
    problem = _state_dict_problem(model, state)
    if problem:
        raise CheckpointError(f"{path}: the saved weights do not fit the {meta.backbone!r} backbone as installed "
                              f"now ({problem}); install the plugin version the model was trained with "
                              f"({meta.backbone_version or 'unknown'}) or re-train")
    model.load_state_dict(state, strict=True)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    model.eval()
    return model, meta


def _state_dict_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """A short description of how ``state`` does not fit ``model`` (empty when it fits)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    mismatched = [f"{k} saved {tuple(state[k].shape)}, model {tuple(v.shape)}"
                  for k, v in want.items() if k in state and state[k].shape != v.shape]
    parts = []
    for label, keys in (("size mismatch", mismatched), ("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label}: {'; '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
    return ", ".join(parts)
