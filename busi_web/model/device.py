"""Which torch device a model runs on (the one rule for the predictor, the trainer and the command line), and
what hardware that is (for a model's card)."""

from __future__ import annotations

import os
import platform
from typing import Any

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


def hardware(device: torch.device) -> dict[str, Any]:
    """What a model was trained on, for its card: the device, its name, the machine's CPU and core count."""
    info: dict[str, Any] = {"device": str(device), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
