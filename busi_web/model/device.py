"""Which torch device a model runs on: the one rule for the predictor, the trainer and the command line."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or empty): the first CUDA GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N``.

    Raises ``ValueError`` naming the fix for an unknown name, or for CUDA on a machine without a GPU.
    """
    text = str(name if name is not None else "auto").strip().lower() or "auto"
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available; use auto or cpu (the DEVICE "
                         "setting, or the device parameter)")
    return device
