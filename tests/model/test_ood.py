"""The out-of-distribution reference: fitted on features, its threshold on validation, kept in a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from busi_web.model.ood import OodReference, first_batch, loader_features, record_features


def _features(n: int, seed: int, shift: float = 0.0, d: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(0, 1, (6, d))  # the same low-rank structure for every call
    return rng.normal(0, 1, (n, 6)) @ basis + rng.normal(0, 0.1, (n, d)) + shift


def test_the_threshold_flags_about_the_chosen_share_of_like_images_and_all_far_ones():
    ref = OodReference.fit("layer4", _features(400, 0), _features(300, 1), quantile=0.95)
    like = (ref.scores(_features(2000, 2)) > ref.threshold).mean()
    assert 0.02 < like < 0.09
    assert (ref.scores(_features(50, 3, shift=1.5)) > ref.threshold).all()
    # Off the training images' directions: a small step that a diagonal distance would not see.
    off = _features(50, 4) + np.random.default_rng(5).normal(0, 0.6, (50, 48))
    assert (ref.scores(off) > ref.threshold).mean() > 0.95
    verdict = ref.verdicts(np.zeros((1, 48)) + 5)[0]
    assert verdict["out_of_distribution"] and verdict["score"] > verdict["threshold"]


def test_the_reference_survives_the_checkpoint_metadata_and_damage_is_none():
    ref = OodReference.fit("features", _features(100, 0), _features(50, 1))
    back = OodReference.from_meta(ref.to_meta())
    x = _features(10, 7)
    assert back is not None and back.layer == "features"
    assert np.allclose(back.scores(x), ref.scores(x), rtol=1e-4) and back.threshold == ref.threshold
    broken = {**ref.to_meta(), "variances": [-1.0] * len(ref.variances)}
    assert OodReference.from_meta(broken) is None and OodReference.from_meta(None) is None
    assert OodReference.from_meta({"layer": "x"}) is None
    with pytest.raises(ValueError, match="features must be"):
        ref.scores(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="at least 2 training images"):
        OodReference.fit("x", np.zeros((1, 4)), np.zeros((1, 4)))


def test_features_are_recorded_pooled_and_the_hook_is_removed():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(3, 1, 8, 8)
    with record_features(model[1]) as calls:
        model(x)
        model(x[:1])
    assert len(calls) == 2 and first_batch(calls, 3).shape == (3, 4) and first_batch(calls, 5) is None
    assert np.allclose(first_batch(calls, 3), torch.relu(model[0](x)).mean(dim=(2, 3)).detach().numpy(), atol=1e-6)
    assert not model[1]._forward_hooks
    batches = [(x, torch.zeros(3)), (x[:2], torch.zeros(2))]
    assert loader_features(model, model[1], batches, torch.device("cpu")).shape == (5, 4)
