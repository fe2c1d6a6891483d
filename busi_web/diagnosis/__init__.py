"""Diagnosis: serving a model to many request threads.

Owns the model cache (:mod:`~busi_web.diagnosis.cache`), which checkpoint
serves (:mod:`~busi_web.diagnosis.active`), micro-batching of concurrent
requests (:mod:`~busi_web.diagnosis.batching`), regions of interest of
mammograms (:mod:`~busi_web.diagnosis.roi`) and upload decoding
(:mod:`~busi_web.diagnosis.uploads`).

May import: model, explain, data, store, plugins and the contract. Knows
nothing of training, the web or the command line.
"""
