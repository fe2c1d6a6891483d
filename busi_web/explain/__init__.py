"""Explaining a prediction: class-activation maps, and turning maps into pictures.

Owns the CAM base (hooks, targets, gradients from one forward pass, the
normalisation: :mod:`~busi_web.explain.base`), the methods (Grad-CAM,
Grad-CAM++, CAM, LayerCAM, HiResCAM, Score-CAM: :mod:`~busi_web.explain.methods`)
and every rendering of a map into a picture (:mod:`~busi_web.explain.render`).

May import: the contract. Knows nothing of models on disk, the store, the
web or the command line.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """Names that moved out of this package in contract 1.0 still import, with a warning naming the new place."""
    from busi_web.specs import MOVED, moved_name  # only when a moved name is asked for

    if (__name__, name) in MOVED:
        return moved_name(__name__, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
