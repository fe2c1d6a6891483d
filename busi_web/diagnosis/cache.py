"""The model cache: one loaded :class:`~busi_web.model.predictor.Predictor` per checkpoint file, hot-reloaded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry


class PredictorCache:
    """One :class:`Predictor` per checkpoint path, reloaded when the file changes (hot reload). Thread-safe.

    A file counts as changed when its modification time, size or inode
    changes (an atomic replace makes a new inode). At most ``max_entries``
    Predictors are kept, least recently used dropped first.
    """

    def __init__(self, registry: PluginRegistry, device: str | torch.device = "cpu",
                 max_entries: int = 2):
        self.registry = registry
        self.device = device
        self.max_entries = max(1, int(max_entries))
        self._entries: OrderedDict[str, tuple[tuple[int, int, int], Predictor]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was (re)loaded; for the health page and tests

    def get(self, path: str | Path) -> Predictor:
        """The Predictor for ``path``, loading it on first use or after the file changed."""
        key = str(Path(path).expanduser().resolve())
        try:
            st = Path(key).stat()
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            sig = (-1, -1, -1)  # let load_checkpoint raise its clear "not found" error
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == sig:
                self._entries.move_to_end(key)
                return entry[1]
            predictor = Predictor.from_checkpoint(key, self.registry, self.device)
            self.loads += 1
            self._entries[key] = (sig, predictor)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return predictor

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
