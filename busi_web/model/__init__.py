"""A trained model, as a file and as a loaded object ready to predict.

Owns the checkpoint format (:mod:`~busi_web.model.checkpoint`), which torch
device a model runs on (:mod:`~busi_web.model.device`), and the
:class:`~busi_web.model.predictor.Predictor`: a model with the preprocessing
it was trained with, predicting and explaining from one forward pass.

May import: data, explain, store, plugins and the contract.
"""
