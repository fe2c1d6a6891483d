"""Mixup: blended batches, their masks, the engine's use of them and the trainer's parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from busi_web.specs import InvalidParameters
from busi_web.store import run_files as art
from busi_web.training.loop import Engine
from busi_web.training.mixup import mix_batch
from busi_web.training.params import validate_train_params
from busi_web.training.trainer import run_training
from tests.helpers import blob_batch, new_run

torch.set_num_threads(2)


def test_a_blend_mixes_images_and_masks_in_one_share_and_keeps_only_masks_both_images_have():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 6, 6, generator=gen)
    masks = (torch.rand(8, 6, 6, generator=gen) > 0.5).float()
    has = torch.tensor([True, True, False, True, True, True, False, True])
    torch.manual_seed(3)
    mix = mix_batch(0.4, x, (masks, has))
    assert 0.5 <= mix.share <= 1.0
    assert sorted(mix.partner.tolist()) == list(range(8))
    s, p = mix.share, mix.partner
    assert torch.allclose(mix.images, s * x + (1 - s) * x[p])
    assert mix.masks is not None
    assert torch.allclose(mix.masks[0], s * masks + (1 - s) * masks[p])
    assert torch.equal(mix.masks[1], has & has[p])
    torch.manual_seed(3)
    again = mix_batch(0.4, x, (masks, has))  # a seeded epoch draws the same blends again
    assert again.share == mix.share and torch.equal(again.partner, mix.partner)
    assert mix_batch(0.4, x).masks is None


def test_the_strength_sets_how_far_blends_go():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 2, 2)
    mild = [mix_batch(0.1, x).share for _ in range(200)]
    strong = [mix_batch(8.0, x).share for _ in range(200)]
    # Beta(0.1, 0.1) mostly draws near 0 or 1 (nearly unblended); Beta(8, 8) stays near one half.
    assert sum(mild) / 200 > 0.85 and sum(strong) / 200 < 0.65


def test_the_engine_trains_on_the_blended_batch_and_still_learns(registry):
    torch.manual_seed(0)
    model = registry.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=1)
    x, _masks = blob_batch(seed=2)
    x = torch.cat([x, torch.rand(16, 1, 32, 32) * 0.15])  # blobs, then plain dark noise
    y = torch.tensor([1] * 16 + [0] * 16)
    engine = Engine(model, torch.optim.Adam(model.parameters(), lr=1e-2), torch.nn.CrossEntropyLoss(),
                    torch.device("cpu"), mixup=0.4)
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(11)
    engine.train_epoch([(x, y)])
    handle.remove()
    torch.manual_seed(11)
    expected = mix_batch(0.4, x)
    assert len(seen) == 1 and torch.allclose(seen[0], expected.images)
    if expected.share < 1.0:
        assert not torch.allclose(seen[0], x)
    for _ in range(40):
        engine.train_epoch([(x, y)])
    labels, probs, _loss = engine.predict([(x, y)])
    assert (probs.argmax(1) == labels).mean() == 1.0
    with pytest.raises(ValueError, match="mixup strength"):
        Engine(model, engine.optimizer, torch.nn.CrossEntropyLoss(), torch.device("cpu"), mixup=-1.0)


def test_mixup_is_a_training_parameter_that_a_guided_run_uses(registry, store):
    with pytest.raises(InvalidParameters, match="mixup"):
        validate_train_params({"mixup": -0.1})
    assert validate_train_params({})["mixup"] == 0.0
    run = new_run(store, registry, train={"epochs": 2, "mixup": 0.3, "lesion_loss": 0.5})
    final = run_training(store, run["id"], registry)
    assert final["status"] == "finished", final.get("error")
    log = (Path(final["run_dir"]) / art.LOG_TXT).read_text()
    assert "mixup: every training image blended with another of its batch, shares from Beta(0.3, 0.3)" in log
    assert "lesion guidance on" in log
