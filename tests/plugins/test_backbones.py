"""Built-in backbones: CBAM modules, ResNet50+CBAM placements, baselines, tiny CNN, pretrained loading."""

from __future__ import annotations

import pytest
import torch
import torchvision
from busi_web_plugins.backbones import (
    CBAMBottleneck,
    PretrainedWeightsError,
    build_resnet18,
    build_resnet50,
    build_resnet50_cbam,
    build_tiny_cnn,
)
from busi_web_plugins.cbam import CBAM, ChannelGate, SpatialGate
from torch import nn

from busi_web.plugins import load_plugins
from busi_web.specs import InvalidParameters

torch.set_num_threads(2)


def test_channel_gate_is_x_times_sigmoid_of_one_shared_mlp():
    torch.manual_seed(0)
    gate = ChannelGate(64, reduction=16)
    convs = [m for m in gate.modules() if isinstance(m, nn.Conv2d)]
    # One MLP (two 1x1 convolutions, 64 -> 4 -> 64) serves both descriptors.
    assert [tuple(c.weight.shape) for c in convs] == [(4, 64, 1, 1), (64, 4, 1, 1)]
    x = torch.randn(2, 64, 5, 6)
    avg, mx = x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    expected = x * torch.sigmoid(gate.mlp(avg) + gate.mlp(mx))
    assert torch.allclose(gate(x), expected, atol=1e-6)
    # The weight is per channel: out / x is constant over the pixels of each channel.
    ratio = gate(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    # Changing the shared MLP changes both paths: zero last layer -> every weight is sigmoid(2 * bias).
    with torch.no_grad():
        gate.mlp[2].weight.zero_()
        gate.mlp[2].bias.fill_(1.0)
    assert torch.allclose(gate(x), x * torch.sigmoid(torch.tensor(2.0)), atol=1e-6)


def test_spatial_gate_uses_7x7_conv_over_mean_and_max():
    torch.manual_seed(0)
    gate = SpatialGate().eval()
    assert tuple(gate.conv.weight.shape) == (1, 2, 7, 7)
    assert gate.conv.padding == (3, 3)
    x = torch.randn(2, 8, 9, 11)
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    expected = x * torch.sigmoid(gate.bn(gate.conv(pooled)))
    out = gate(x)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-6)
    ratio = out / x  # one weight per pixel, shared by all channels
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_cbam_is_channel_then_spatial():
    torch.manual_seed(0)
    cbam = CBAM(32).eval()
    x = torch.randn(1, 32, 6, 6)
    assert torch.allclose(cbam(x), cbam.spatial(cbam.channel(x)), atol=1e-6)
    assert not torch.allclose(cbam(x), cbam.channel(cbam.spatial(x)), atol=1e-4)


@pytest.mark.parametrize("placement", ["end", "blocks"])
def test_resnet50_cbam_placements_build_and_forward(placement):
    torch.manual_seed(0)
    model = build_resnet50_cbam(num_classes=3, cbam_placement=placement).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 2048
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    blocks = [m for m in model.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16
    named = dict(model.named_modules())
    if placement == "end":
        assert isinstance(model.cbam, CBAM) and model.target_layer == "cbam"
        assert not any(isinstance(b, CBAMBottleneck) for b in blocks)
        assert sum(isinstance(m, CBAM) for m in model.modules()) == 1
    else:
        assert model.cbam is None and model.target_layer == "layer4"
        assert all(isinstance(b, CBAMBottleneck) and isinstance(b.cbam, CBAM) for b in blocks)
        assert sum(isinstance(m, CBAM) for m in model.modules()) == 16
        # Apart from CBAM, the same modules and shapes as torchvision's resnet50.
        ours = {k: v.shape for k, v in model.state_dict().items() if ".cbam." not in k and not k.startswith("fc.")}
        ref = {k: v.shape for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
               if not k.startswith("fc.")}
        assert ours == ref
    assert model.target_layer in named


def test_cbam_in_block_sits_between_bn3_and_the_addition():
    torch.manual_seed(0)
    model = build_resnet50_cbam(cbam_placement="blocks").eval()
    block = model.layer1[0]
    x = torch.randn(1, 64, 8, 8)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].clone(), output.clone())  # returns None: the output is kept
        return hook

    block.bn3.register_forward_hook(record("bn3"))
    block.cbam.register_forward_hook(record("cbam"))
    with torch.no_grad():
        out = block(x)
    assert torch.equal(seen["cbam"][0], seen["bn3"][1])
    assert torch.allclose(out, torch.relu(seen["cbam"][1] + block.downsample(x)), atol=1e-6)


@pytest.mark.parametrize("builder", [build_resnet50_cbam, build_resnet18, build_tiny_cnn])
def test_one_channel_input_and_dropout(builder):
    model = builder(num_classes=2, in_channels=1, dropout=0.25).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert model.dropout.p == 0.25
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2)
    model.train()
    x = torch.randn(2, 1, 64, 64)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x)), "dropout must be active in training mode"


def test_baselines_have_no_attention_and_target_layer4():
    for model in (build_resnet50(), build_resnet18()):
        assert not any(isinstance(m, (CBAM, ChannelGate, SpatialGate)) for m in model.modules())
        assert model.target_layer == "layer4" and model.dropout.p == 0.5
    with torch.no_grad():
        assert build_resnet18(num_classes=4).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_registered_specs_match_the_builders():
    reg = load_plugins()
    assert {"resnet50_cbam", "resnet50", "resnet18", "tiny_cnn"} <= set(reg.backbones)
    spec = reg.backbone("resnet50_cbam")
    assert spec.target_layer == "cbam"
    assert spec.defaults() == {"cbam_placement": "end", "dropout": 0.5, "output_stride": 32, "pretrained_path": None}
    for s in reg.backbones.values():
        assert not {"num_classes", "in_channels"} & {p.name for p in s.params}
    with pytest.raises(InvalidParameters, match="cbam_placement"):
        spec.validate({"cbam_placement": "middle"})
    tiny = reg.backbone("tiny_cnn").build({"width": "8"}, num_classes=3, in_channels=3)
    assert tiny.fc.in_features == 32 and reg.backbone("tiny_cnn").target_layer == tiny.target_layer == "features"


@pytest.mark.parametrize("builder, kwargs", [(build_resnet18, {}), (build_resnet50, {}),
                                             (build_resnet50_cbam, {"cbam_placement": "end"}),
                                             (build_resnet50_cbam, {"cbam_placement": "blocks"})])
def test_output_stride_16_keeps_layer3s_grid_with_the_same_weights(builder, kwargs):
    coarse = builder(num_classes=3, **kwargs).eval()
    fine = builder(num_classes=3, output_stride=16, **kwargs).eval()
    fine.load_state_dict(coarse.state_dict())  # same tensors, same shapes: weights move between the two
    seen = {}

    def keep_shape(_module, _inputs, out):
        seen["layer3"] = out.shape

    fine.layer3.register_forward_hook(keep_shape)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert coarse.forward_features(x).shape[-2:] == (2, 2)
        feats = fine.forward_features(x)
        assert feats.shape[-2:] == (4, 4) == seen["layer3"][-2:]
        assert fine(x).shape == (2, 3)
        # Only the grid changed: the head is still a linear map of the pooled target-layer map (the CAM layout).
        pooled = feats.mean((2, 3))
        assert torch.allclose(fine(x), fine.fc(pooled), atol=1e-5)
    with pytest.raises(ValueError, match="output_stride must be 32 or 16"):
        builder(output_stride=8, **kwargs)


def test_output_stride_is_a_registered_choice_and_reaches_the_model():
    spec = load_plugins().backbone("resnet18")
    assert spec.defaults()["output_stride"] == 32
    model = spec.build(spec.validate({"output_stride": "16"}), num_classes=2, in_channels=1)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 32, 32)).shape[-2:] == (2, 2)
    with pytest.raises(InvalidParameters, match="output_stride"):
        spec.validate({"output_stride": "8"})


def test_tiny_cnn_learns_a_simple_task_quickly():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 32, 32) * 0.3
    y = torch.arange(32) % 2
    x[y == 1, :, 10:22, 10:22] += 0.7  # class 1: a bright square
    model = build_tiny_cnn(num_classes=2, in_channels=1, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert acc == 1.0


# -- pretrained weights ------------------------------------------------------

def _save(tmp_path, net: nn.Module, name: str = "w.pth"):
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


def test_pretrained_resnet18_loads_backbone_and_keeps_head_fresh(tmp_path, caplog):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = _save(tmp_path, ref)
    with caplog.at_level("INFO"):
        model = build_resnet18(num_classes=3, pretrained_path=str(path))
    report = model.pretrained_report
    ref_sd, sd = ref.state_dict(), model.state_dict()
    trunk = [k for k in ref_sd if not k.startswith("fc.")]
    assert report["loaded"] == len(trunk) and sorted(report["loaded_keys"]) == sorted(trunk)
    assert report["missing"] == ["fc.weight", "fc.bias"] and report["unexpected"] == ["fc.bias", "fc.weight"]
    for k in trunk:
        assert torch.equal(sd[k], ref_sd[k]), k
    assert sd["fc.weight"].shape == (3, 512)
    assert f"loaded {len(trunk)} tensors" in caplog.text


def test_pretrained_one_channel_sums_rgb_filters(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    model = build_resnet18(in_channels=1, pretrained_path=str(_save(tmp_path, ref)))
    assert torch.allclose(model.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert model.pretrained_report["adapted"] == ["conv1.weight: (64, 3, 7, 7) -> (64, 1, 7, 7)"]


@pytest.mark.parametrize("placement", ["end", "blocks"])
def test_pretrained_resnet50_into_cbam_model(tmp_path, placement):
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    path = _save(tmp_path, ref)
    model = build_resnet50_cbam(cbam_placement=placement, pretrained_path=path)
    report = model.pretrained_report
    assert report["loaded"] == len(ref.state_dict()) - 2
    assert all("cbam" in k or k.startswith("fc.") for k in report["missing"])
    assert sum("cbam" in k for k in report["missing"]) > 0
    assert torch.equal(model.layer3[5].conv2.weight, ref.layer3[5].conv2.weight)
    assert torch.equal(model.bn1.running_var, ref.bn1.running_var)


def test_pretrained_errors_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match=r"not found: .*nope\.pth.*pretrained_path empty"):
        build_resnet18(pretrained_path=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 50)
    with pytest.raises(PretrainedWeightsError, match=r"garbage\.pth: not a PyTorch weights file"):
        build_resnet18(pretrained_path=str(garbage))
    listfile = tmp_path / "list.pth"
    torch.save([1, 2, 3], listfile)
    with pytest.raises(PretrainedWeightsError, match=r"list\.pth holds a list, not a state_dict"):
        build_resnet18(pretrained_path=str(listfile))
    r18 = _save(tmp_path, torchvision.models.resnet18(weights=None), "r18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"r18\.pth do not fit this backbone: .*shape mismatch"):
        build_resnet50(pretrained_path=str(r18))
    with pytest.raises(PretrainedWeightsError, match=r"model does not have"):
        # resnet50's file into resnet18: extra blocks and conv3 layers the model lacks
        build_resnet18(pretrained_path=str(_save(tmp_path, torchvision.models.resnet50(weights=None), "r50.pth")))


def _model_file(tmp_path, model: nn.Module, backbone: str, params: dict, classes: list[str]):
    """A busi-web model file, as a run writes its best_model.pt."""
    from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint

    path = tmp_path / f"{backbone}_best_model.pt"
    save_checkpoint(path, model, CheckpointMeta(backbone=backbone, classes=classes, backbone_params=params,
                                                input_size=64, resize=64, dataset="phantom"))
    return path


def test_pretrained_from_a_busi_web_model_file_loads_trunk_and_cbam_with_a_fresh_head(tmp_path):
    torch.manual_seed(1)
    earlier = build_resnet50_cbam(num_classes=2, cbam_placement="end")
    with torch.no_grad():  # weights no fresh model has, so a copy is told apart from a re-initialisation
        for p in earlier.parameters():
            p.add_(0.5)
    path = _model_file(tmp_path, earlier, "resnet50_cbam", {"cbam_placement": "end"}, ["lesion", "normal"])
    # Other classes and another output stride: the same weight shapes, a new head.
    model = build_resnet50_cbam(num_classes=3, cbam_placement="end", output_stride=16, pretrained_path=str(path))
    report = model.pretrained_report
    sd, ref = model.state_dict(), earlier.state_dict()
    assert report["missing"] == ["fc.weight", "fc.bias"]
    assert report["unexpected"] == ["fc.bias", "fc.weight"]
    cbam_keys = [k for k in ref if "cbam" in k]
    assert cbam_keys and all(k in report["loaded_keys"] for k in cbam_keys)
    for k in ref:
        if not k.startswith("fc."):
            assert torch.equal(sd[k], ref[k]), k
    assert sd["fc.weight"].shape == (3, 2048) and not torch.equal(sd["fc.bias"][:2], ref["fc.bias"])
    model.eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)

    # The same file into a ResNet50 without CBAM: the trunk loads, the file's CBAM goes unused.
    plain = build_resnet50(num_classes=3, pretrained_path=str(path))
    assert all(k in plain.pretrained_report["unexpected"] for k in cbam_keys)
    assert torch.equal(plain.layer4[2].conv3.weight, earlier.layer4[2].conv3.weight)


def test_pretrained_from_a_busi_web_model_of_another_backbone_is_refused_with_the_fix(tmp_path):
    path = _model_file(tmp_path, build_resnet18(num_classes=3), "resnet18", {}, ["benign", "malignant", "normal"])
    with pytest.raises(PretrainedWeightsError, match=r"do not fit this backbone: .*best_model\.pt of a busi-web run"):
        build_resnet50(pretrained_path=str(path))
