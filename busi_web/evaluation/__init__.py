"""Evaluation: how good a model is, and whether its heatmaps are honest.

Owns classification metrics (:mod:`~busi_web.evaluation.metrics`), plots
(:mod:`~busi_web.evaluation.plots`), heatmap quality against lesion masks
(:mod:`~busi_web.evaluation.heatmap_quality`), the shortcut check
(:mod:`~busi_web.evaluation.shortcuts`), and ``busi-web evaluate`` with its
report (:mod:`~busi_web.evaluation.evaluate`, :mod:`~busi_web.evaluation.report`).

May import: model, data, explain, store, plugins and the contract.
"""
