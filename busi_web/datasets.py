"""Moved in plugin contract 1.0: import these from :mod:`busi_web.data.datasets` (kept for one contract version;
each use warns with the new place)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from busi_web.specs import MOVED, moved_name  # only when a moved name is asked for

    if (__name__, name) in MOVED:
        return moved_name(__name__, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; the dataset contract is in "
                         "busi_web.data.datasets")
