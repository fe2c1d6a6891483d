"""Resuming a run: the resumable state file (``last.pt``) and the seeds that make a resumed run repeat.

Every epoch draws its randomness from ``(seed, epoch)`` only (:func:`epoch_seed`),
and ``last.pt`` holds the model, the optimiser, the schedule, the training aids
and the random generators after the last completed epoch, so a run resumed from
it draws exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FORMAT = "busi-web-train-state"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: its shuffling and augmentation depend on (seed, epoch) only, so a resumed
    run draws exactly what an uninterrupted one would have drawn."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": STATE_FORMAT, **state}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The state saved by :func:`save_state`, or ``None`` when the file is missing or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start the run again rather than fail it
        return None
    return state if isinstance(state, dict) and state.get("format") == STATE_FORMAT else None
