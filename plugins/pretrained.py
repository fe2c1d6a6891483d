"""Loading local ResNet weights into a backbone (never a download).

The file is either what ``torch.save(torchvision.models.resnet50(...).state_dict(), path)``
writes, e.g. torchvision's own ``resnet50-0676ba61.pth``, or a busi-web model
file (a run's ``best_model.pt``) of the same backbone: a warm start from an
earlier run, e.g. one trained on synthetic phantoms or on another hospital's
images. The trunk (``conv1`` .. ``layer4``) must match key for key and shape
for shape. The classifier head (``fc``) always starts fresh, so the new run
may have other classes; CBAM modules load when the file has them (a busi-web
``resnet50_cbam`` model) and start fresh when it does not (torchvision). A
3-channel ``conv1`` loads into a 1-channel model by summing its RGB filters (a
gray image seen as R=G=B gives the same response).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_FIX = ("give the path of a torchvision ResNet state_dict of the same depth, saved with "
        "torch.save(model.state_dict(), path), or the best_model.pt of a busi-web run of the same backbone, "
        "or leave pretrained_path empty to train from scratch")


class PretrainedWeightsError(ValueError):
    """The pretrained weights file cannot be used; the message names the file and the fix."""


def _head(key: str) -> bool:
    """The classifier head: never loaded (the file's classes need not be the new run's)."""
    return key.startswith("fc.")


def _optional(key: str) -> bool:
    """Keys a file may lack: the head, and CBAM (a torchvision ResNet has none; a busi-web model file has them)."""
    return _head(key) or key == "cbam" or key.startswith("cbam.") or ".cbam." in key


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}; {_FIX}")
    try:
        # weights_only: a weights file from elsewhere must not be able to run code when loaded.
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any file can be named here, and its bytes can fail anywhere in
        # the unpickler (IndexError, KeyError, UnpicklingError, ...): each is the same "not a weights file"
        raise PretrainedWeightsError(
            f"cannot read pretrained weights {path}: not a PyTorch weights file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); {_FIX}") from None
    # Accept the common wrappings: {"state_dict": ...} / {"model": ...} and DataParallel's "module." prefix.
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise PretrainedWeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors; {_FIX}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _adapt_conv1(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    # n channels: each gets the mean RGB filter scaled so equal-valued inputs respond as R=G=B would.
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy a weights file's trunk (and CBAM, when it has one) into ``model``; return a report.

    The report has ``path``, ``loaded`` (count), ``loaded_keys``, ``missing``
    (model keys left fresh: the head, and CBAM when the file has none),
    ``unexpected`` (file keys not used: its ``fc``, CBAM the model lacks),
    and ``adapted`` (keys converted, e.g. ``conv1.weight`` summed to one
    channel). It is also logged. Raises :class:`PretrainedWeightsError`
    when the file is missing or unreadable, or when its trunk does not match
    the model's (another depth, another architecture).
    """
    path = Path(path).expanduser()
    source = _read_state_dict(path)
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    mismatched: list[str] = []
    unexpected: list[str] = []
    for key, value in source.items():
        if key not in target:
            unexpected.append(key)
            continue
        if _head(key):
            unexpected.append(key)  # e.g. ImageNet's 1000-class fc: the head always starts fresh
            continue
        want = target[key].shape
        if key == "conv1.weight" and value.dim() == 4 and value.shape[1] != want[1] \
                and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            value = _adapt_conv1(value, want[1])
            adapted.append(f"{key}: {tuple(source[key].shape)} -> {tuple(want)}")
        if value.shape != want:
            mismatched.append(f"{key} (file {tuple(value.shape)}, model {tuple(want)})")
            continue
        loaded[key] = value
    # BatchNorm's num_batches_tracked is absent from some older files and does not matter for inference.
    absent = [k for k in target if not _optional(k) and k not in loaded and not k.endswith("num_batches_tracked")]
    trunk_unexpected = [k for k in unexpected if not _optional(k)]  # a file's CBAM may go unused
    if mismatched or absent or trunk_unexpected or not loaded:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {', '.join(mismatched[:3])}")
        if absent:
            parts.append(f"{len(absent)} backbone weight(s) missing from the file, e.g. {', '.join(absent[:3])}")
        if trunk_unexpected:
            parts.append(f"{len(trunk_unexpected)} key(s) the model does not have, e.g. "
                         f"{', '.join(trunk_unexpected[:3])}")
        raise PretrainedWeightsError(
            f"pretrained weights {path} do not fit this backbone: {'; '.join(parts)}; {_FIX}")
    model.load_state_dict(loaded, strict=False)
    missing = [k for k in target if k not in loaded]
    report = {
        "path": str(path),
        "loaded": len(loaded),
        "loaded_keys": sorted(loaded),
        "missing": missing,
        "unexpected": sorted(unexpected),
        "adapted": adapted,
    }
    log.info("pretrained weights %s: loaded %d tensors; fresh (not in file): %s; unused from file: %s%s",
             path, len(loaded), _summary(missing), _summary(report["unexpected"]),
             f"; adapted: {'; '.join(adapted)}" if adapted else "")
    return report


def _summary(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
