"""Checkpoints: one file, round trip through the plugin registry, clear errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from busi_web.data.preprocess import GRAY_MEAN
from busi_web.model.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from busi_web.plugins import PluginRegistry, load_plugins

REGISTRY = load_plugins()

torch.set_num_threads(2)


def _meta(backbone="tiny_cnn", **kw) -> CheckpointMeta:
    base = dict(backbone=backbone, classes=["benign", "malignant", "normal"], backbone_params={"width": 8,
                "dropout": 0.0}, input_size=32, resize=36, dataset="phantom", extra={"run_id": 7, "val_acc": 0.9})
    base.update(kw)
    return CheckpointMeta(**base)


def _tiny(width=8, in_channels=3):
    torch.manual_seed(0)
    return REGISTRY.backbone("tiny_cnn").build({"width": width}, num_classes=3, in_channels=in_channels)


def test_round_trip_gives_the_same_outputs_and_meta(tmp_path):
    model = _tiny().eval()
    path = tmp_path / "runs" / "model.pt"
    saved = save_checkpoint(path, model, _meta(), REGISTRY)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    assert saved.backbone_version == REGISTRY.version_of("backbones", "tiny_cnn") is not None
    assert saved.target_layer == "features" and saved.created_at > 0
    assert saved.mean == [0.485, 0.456, 0.406]

    loaded, meta = load_checkpoint(path, REGISTRY)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta == saved
    assert meta.classes == ["benign", "malignant", "normal"] and meta.num_classes == 3
    assert meta.run_id == 7 and meta.extra["val_acc"] == 0.9
    assert meta.preprocess_config().input_size == 32 and meta.preprocess_config().resize == 36
    # Plain data only: the file loads with weights_only=True, the safe unpickler.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["meta"]["num_classes"] == 3


def test_round_trip_resnet50_cbam_grayscale_and_pretrained_path_not_needed(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "r50.pth"
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    params = {"cbam_placement": "blocks", "dropout": 0.5, "pretrained_path": str(weights)}
    model = REGISTRY.backbone("resnet50_cbam").build(params, num_classes=2, in_channels=1).eval()
    meta = save_checkpoint(tmp_path / "m.pt", model, _meta("resnet50_cbam", classes=["benign", "malignant"],
                                                           backbone_params=params, in_channels=1,
                                                           modality="mammography"))
    assert meta.target_layer == "layer4"  # the model's own target layer for this placement
    assert meta.mean == list(GRAY_MEAN)
    weights.unlink()  # the pretrained file is gone: the checkpoint alone must suffice
    loaded, meta2 = load_checkpoint(tmp_path / "m.pt", REGISTRY)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert meta2.modality == "mammography" and meta2.in_channels == 1


def test_save_is_atomic_replace(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _tiny(), _meta())
    ino = os.stat(path).st_ino
    save_checkpoint(path, _tiny(width=4), _meta(backbone_params={"width": 4}))
    assert os.stat(path).st_ino != ino  # replaced by rename, never rewritten in place
    assert read_checkpoint(path)[0].backbone_params["width"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_meta_as_a_dict(tmp_path):
    meta = save_checkpoint(tmp_path / "m.pt", _tiny(), {"backbone": "tiny_cnn", "classes": ["a", "b", "c"],
                                                        "num_classes": 3, "backbone_params": {"width": 8}})
    assert meta.num_classes == 3 and meta.input_size == 224 and meta.target_layer == "features"
    assert load_checkpoint(tmp_path / "m.pt", REGISTRY)[1] == meta
    with pytest.raises(CheckpointError, match="unknown checkpoint metadata field.*: run_id.*put anything else"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), {"backbone": "tiny_cnn", "classes": ["a"], "run_id": 3})
    with pytest.raises(CheckpointError, match="num_classes=2 but names 3 classes"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), {"backbone": "tiny_cnn", "classes": ["a", "b", "c"],
                                                     "num_classes": 2})
    with pytest.raises(CheckpointError, match="incomplete checkpoint metadata"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), {"classes": ["a", "b", "c"]})


def test_bad_metadata_is_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError, match="classes must be a list of non-empty class names"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), _meta(classes=[]))
    with pytest.raises(CheckpointError, match="extra holds a object"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), _meta(extra={"run_id": object()}))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["random", "random_zip_head", "garbled", "truncated", "empty"])
def test_corrupt_files_give_a_clear_error(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind in ("random", "random_zip_head", "garbled"):
        # Many seeded buffers: the unpickler fails on garbage in many different ways (IndexError, KeyError, ...).
        good = b""
        if kind == "garbled":
            save_checkpoint(path, _tiny(), _meta())
            good = path.read_bytes()
        for seed in range(40):
            rng = np.random.default_rng(seed)
            if kind == "garbled":  # a real checkpoint with a run of bytes overwritten in the middle
                data = bytearray(good)
                start = int(rng.integers(64, len(data) - 256))
                data[start:start + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
                data = bytes(data)
            else:
                data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
                if kind == "random_zip_head":
                    data = b"PK\x03\x04" + data
            path.write_bytes(data)
            try:
                load_checkpoint(path, REGISTRY)
            except CheckpointError as exc:
                assert "model.pt" in str(exc)
            # A garbled byte run may land in padding and leave a loadable file; it must then load fully.
        if kind != "garbled":
            with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model\.pt: the file is corrupt"):
                load_checkpoint(path, REGISTRY)
        return
    if kind == "empty":
        path.write_bytes(b"")
    else:
        save_checkpoint(path, _tiny(), _meta())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model\.pt: the file is corrupt, truncated"):
        load_checkpoint(path, REGISTRY)


def test_foreign_torch_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a busi-web checkpoint .*'epoch', 'weights'"):
        load_checkpoint(path, REGISTRY)
    torch.save(_tiny().state_dict(), path)  # a bare state_dict is not enough to rebuild a model
    with pytest.raises(CheckpointError, match="not a busi-web checkpoint"):
        load_checkpoint(path, REGISTRY)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt", REGISTRY)


def _rewrite(path, change):
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def test_newer_format_and_damaged_parts(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _tiny(), _meta())
    _rewrite(path, lambda raw: raw.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="written by a newer busi-web .*upgrade busi-web"):
        load_checkpoint(path, REGISTRY)
    save_checkpoint(path, _tiny(), _meta())
    _rewrite(path, lambda raw: raw["meta"].pop("classes"))
    with pytest.raises(CheckpointError, match="damaged checkpoint: invalid metadata"):
        load_checkpoint(path, REGISTRY)
    save_checkpoint(path, _tiny(), _meta())
    _rewrite(path, lambda raw: raw.pop("state_dict"))
    with pytest.raises(CheckpointError, match="state_dict is missing"):
        load_checkpoint(path, REGISTRY)


def test_weights_that_do_not_fit_the_backbone(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _tiny(width=8), _meta())
    # Same backbone, but the saved parameters say width 16: the tensors no longer fit.
    _rewrite(path, lambda raw: raw["meta"]["backbone_params"].update(width=16))
    with pytest.raises(CheckpointError, match=r"saved weights do not fit the 'tiny_cnn' backbone.*size mismatch"):
        load_checkpoint(path, REGISTRY)
    save_checkpoint(path, _tiny(width=8), _meta())
    _rewrite(path, lambda raw: raw["state_dict"].pop("fc.bias"))
    with pytest.raises(CheckpointError, match="1 missing keys: fc.bias"):
        load_checkpoint(path, REGISTRY)


def test_unregistered_backbone_names_the_plugin_to_install(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _tiny(), _meta(backbone_version="2.1"))
    _rewrite(path, lambda raw: raw["meta"].update(backbone="fancynet"))
    with pytest.raises(CheckpointError, match=r"needs backbone 'fancynet' \(from a plugin version 2.1\).*install"):
        load_checkpoint(path, REGISTRY)
    # A registry without the backbones plugin cannot rebuild even the built-in one.
    empty = PluginRegistry()
    save_checkpoint(path, _tiny(), _meta())
    with pytest.raises(CheckpointError, match="needs backbone 'tiny_cnn'"):
        load_checkpoint(path, registry=empty)
    with pytest.raises(CheckpointError, match="does not accept the saved parameters"):
        _rewrite(path, lambda raw: raw["meta"]["backbone_params"].update(colour="red"))
        load_checkpoint(path, REGISTRY)


def test_trained_dataset_params_come_from_the_checkpoint_else_the_run_folder(tmp_path):
    import json

    from busi_web.model.predictor import Predictor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.json").write_text(json.dumps({"params": {"dataset": {"size": 40, "per_class": 5}}}))
    old = run_dir / "old.pt"  # a checkpoint from before the trainer saved its dataset parameters
    save_checkpoint(old, _tiny(), _meta())
    assert Predictor.from_checkpoint(old, REGISTRY).dataset_params == {"size": 40, "per_class": 5}
    new = run_dir / "new.pt"
    save_checkpoint(new, _tiny(), _meta(extra={"run_id": 7, "dataset_params": {"size": 48}}))
    assert Predictor.from_checkpoint(new, REGISTRY).dataset_params == {"size": 48}  # the checkpoint wins
    (run_dir / "params.json").write_text("{not json")
    assert Predictor.from_checkpoint(old, REGISTRY).dataset_params == {}
