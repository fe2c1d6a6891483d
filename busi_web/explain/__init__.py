"""Explaining a prediction: class-activation maps, and turning maps into pictures.

Owns the CAM base (hooks, targets, gradients from one forward pass, the
normalisation: :mod:`~busi_web.explain.base`), the methods (Grad-CAM,
Grad-CAM++, CAM, LayerCAM, HiResCAM, Score-CAM: :mod:`~busi_web.explain.methods`)
and every rendering of a map into a picture (:mod:`~busi_web.explain.render`).

May import: the contract. Knows nothing of models on disk, the store, the
web or the command line.
"""
