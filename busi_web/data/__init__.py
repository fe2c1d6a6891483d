"""Data: what a dataset is, how it is split, and how its images become the network's input.

Owns the dataset interface (:mod:`~busi_web.data.datasets`), duplicate-aware
splits (:mod:`~busi_web.data.splits`), preprocessing shared by training and
prediction (:mod:`~busi_web.data.preprocess`) and dataset inspection
(:mod:`~busi_web.data.inspection`).

May import: the contract. Datasets themselves are plugins.
"""
