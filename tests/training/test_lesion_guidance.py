"""Lesion guidance: masks follow the augmentation, the auxiliary loss learns, the trainer wires it end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from busi_web.data.preprocess import PreprocessConfig, train_transform
from busi_web.explain.base import resolve_layer
from busi_web.model.checkpoint import read_checkpoint
from busi_web.specs import InvalidParameters
from busi_web.store import run_files as art
from busi_web.training.aids import LesionGuide
from busi_web.training.loop import Engine
from busi_web.training.params import prepare_run_params
from busi_web.training.resume import load_state
from busi_web.training.trainer import run_training
from tests.helpers import PHANTOM, TINY, blob, blob_batch, make_image_folder, new_run

torch.set_num_threads(2)


def _guided_engine(model: torch.nn.Module, guide: LesionGuide) -> Engine:
    opt = torch.optim.Adam(list(model.parameters()) + list(guide.parameters()), lr=1e-2)
    return Engine(model, opt, torch.nn.CrossEntropyLoss(), torch.device("cpu"), guide=guide)


def test_the_mask_moves_with_the_image_through_every_augmentation():
    cfg = PreprocessConfig(input_size=48, resize=56, channels=1, mean=(0.0,), std=(1.0,))
    t = train_transform(cfg, hflip=True, rotation=30, crop_scale=0.4, intensity=0.3)
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    ious = []
    for _ in range(25):
        image, mask = blob(64, rng)
        x, m = t(image, mask)
        assert x.shape == (1, 48, 48) and m.shape == (48, 48) and m.dtype == torch.float32
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
        lit, inside = x[0] > 0.5, m > 0.5
        if inside.sum() == 0 and lit.sum() == 0:
            continue  # the crop missed the disc: both agree
        ious.append(float((lit & inside).sum()) / float((lit | inside).sum()))
    assert len(ious) >= 15 and float(np.mean(ious)) > 0.85
    with pytest.raises(ValueError, match="mask's size"):
        t(np.zeros((64, 64), np.uint8), np.zeros((32, 32), bool))


def test_guide_loss_learns_where_the_lesion_is_and_ignores_images_without_masks(registry):
    torch.manual_seed(0)
    model = registry.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=1)
    layer = resolve_layer(model, model.target_layer)
    guide = LesionGuide(model, layer, torch.zeros(1, 1, 32, 32), weight=1.0)
    x, masks = blob_batch(seed=1)
    y = torch.zeros(16, dtype=torch.long)
    engine = _guided_engine(model, guide)
    has = torch.ones(16, dtype=torch.bool)

    def guide_loss(has_mask: torch.Tensor) -> float:
        with guide.capture(), torch.no_grad():
            model.eval()
            model(x)
            return float(guide.loss(masks, has_mask))

    before = guide_loss(has)
    for _ in range(60):
        engine.train_epoch([(x, y, masks, has)])
    after = guide_loss(has)
    assert after < 0.7 * before, (before, after)
    assert guide_loss(torch.zeros(16, dtype=torch.bool)) == 0.0  # no mask: no lesion loss
    with pytest.raises(ValueError, match="needs batches of"):
        engine.train_epoch([(x, y)])
    assert not layer._forward_hooks  # the hook is gone after every epoch, also after a failure


def test_a_guided_run_finishes_and_keeps_the_head_out_of_the_saved_model(registry, store):
    run = new_run(store, registry, train={"epochs": 2, "lesion_loss": 0.5, "ema": 0.9,
                                          "lesion_layers": " features.6 ,"})
    assert run["params"]["train"]["lesion_layers"] == "features.6"
    final = run_training(store, run["id"], registry)
    assert final["status"] == "finished", final.get("error")
    run_dir = Path(final["run_dir"])
    assert "lesion guidance on features, features.6 (weight 0.5)" in (run_dir / art.LOG_TXT).read_text()
    state = load_state(run_dir / art.LAST_PT)
    assert state is not None and set(state["lesion_head"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert state["lesion_head"]["1.weight"].shape == (1, 32, 1, 1)  # features.6: the second block, 2 x width 16
    _meta, weights = read_checkpoint(run_dir / art.BEST_PT)
    model = registry.backbone("tiny_cnn").build(_meta.backbone_params, num_classes=3, in_channels=3)
    assert set(weights) == set(model.state_dict())  # the saved model is the plain backbone


def test_lesion_loss_is_refused_for_data_without_masks(registry, store, tmp_path):
    folder = make_image_folder(tmp_path / "nomasks", {"benign": 4, "malignant": 4})
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "imagefolder", train={**TINY, "lesion_loss": 1.0},
                           data_dir=str(folder))
    assert "no lesion masks" in exc.value.errors["lesion_loss"]
    ok = prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "lesion_loss": 1.0},
                            dataset_params=PHANTOM)
    assert ok["train"]["lesion_loss"] == 1.0
    assert store.list_runs() == []


def test_guidance_on_several_layers_learns_at_each_resolution_and_reads_old_heads(registry):
    torch.manual_seed(0)
    model = registry.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=1)
    layers = [resolve_layer(model, n) for n in ("features", "features.2", "features.6")]
    guide = LesionGuide(model, layers, torch.zeros(1, 1, 32, 32), weight=1.0)
    assert [h.in_channels for h in guide.heads] == [32, 8, 16]
    x, masks = blob_batch(seed=2)
    has = torch.ones(16, dtype=torch.bool)
    engine = _guided_engine(model, guide)

    def per_layer() -> list[float]:
        out = []
        for i in range(3):  # each head alone, with the others' weights unchanged
            one = LesionGuide(model, layers[i], x[:1], weight=1.0)
            one.load_state_dict({k[2:]: v for k, v in guide.state_dict().items() if k.startswith(f"{i}.")})
            with one.capture(), torch.no_grad():
                model.eval()
                model(x)
                out.append(float(one.loss(masks, has)))
        return out

    before = per_layer()
    for _ in range(60):
        engine.train_epoch([(x, torch.zeros(16, dtype=torch.long), masks, has)])
    after = per_layer()
    assert all(a < 0.8 * b for a, b in zip(after, before, strict=True)), (before, after)
    assert not any(layer._forward_hooks for layer in layers)
    with pytest.raises(RuntimeError, match="Missing key"):
        guide.load_state_dict({"weight": torch.zeros(1, 32, 1, 1), "bias": torch.zeros(1)})  # 1 head of 3


def test_lesion_layers_are_checked_before_the_run_exists(registry, store):
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "lesion_loss": 1.0,
                                                                   "lesion_layers": "features.6,feature.2"},
                           dataset_params=PHANTOM)
    message = exc.value.errors["lesion_layers"]
    assert "tiny_cnn" in message and "feature.2" in message and "features.2" in message  # the close names
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "lesion_layers": "features.6"},
                           dataset_params=PHANTOM)
    assert "lesion_loss is 0" in exc.value.errors["lesion_layers"]
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "lesion_loss": 1.0,
                                                                   "lesion_layers": "features 6"},
                           dataset_params=PHANTOM)
    assert "commas" in exc.value.errors["lesion_layers"]
    with pytest.raises(InvalidParameters) as exc:
        prepare_run_params(registry, "tiny_cnn", "phantom", train={**TINY, "lesion_loss": 1.0, "lesion_layers": "fc"},
                           dataset_params=PHANTOM)
    assert "(N, C, H, W)" in exc.value.errors["lesion_layers"]  # a layer without a feature map
    assert store.list_runs() == []
