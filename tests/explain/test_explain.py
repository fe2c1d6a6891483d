"""The CAM family against pytorch-grad-cam (the oracle), CAM = Grad-CAM, hooks, targets, devices, edge cases."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from busi_web_plugins.backbones import build_resnet50_cbam, build_tiny_cnn
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPlusPlus
from pytorch_grad_cam import HiResCAM as RefHiResCAM
from pytorch_grad_cam import LayerCAM as RefLayerCAM
from pytorch_grad_cam import ScoreCAM as RefScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from busi_web.explain.base import CamExplainer, classify, feature_map_grid, normalise_maps
from busi_web.explain.methods import CAM, METHODS, GradCAM, ScoreCAM
from busi_web.plugins import load_plugins

torch.set_num_threads(2)
ORACLES = {"gradcam": RefGradCAM, "gradcampp": RefGradCAMPlusPlus, "layercam": RefLayerCAM,
           "hirescam": RefHiResCAM, "scorecam": RefScoreCAM}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def resnets() -> dict[str, nn.Module]:
    out = {}
    for placement in ("end", "blocks"):
        torch.manual_seed(0)
        out[placement] = build_resnet50_cbam(num_classes=3, cbam_placement=placement).eval()
    return out


def _tiny(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_tiny_cnn(num_classes=classes, in_channels=3, width=8).eval()


def _oracle(method: str, model: nn.Module, layer: str, x: torch.Tensor, targets: list[int]):
    """pytorch-grad-cam's raw (unnormalised) maps and its final output for the same inputs."""
    module = dict(model.named_modules())[layer]
    raws = []
    with ORACLES[method](model=model, target_layers=[module]) as cam:
        cam.batch_size = 64  # Score-CAM's chunk size; the result does not depend on it
        inner = cam.get_cam_image

        def spy(*args, **kwargs):
            raws.append(inner(*args, **kwargs))
            return raws[-1]

        cam.get_cam_image = spy
        final = cam(x, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(raws[0]).float(), torch.from_numpy(final)


def _check_against_oracle(method, model, layer, x, targets, ours_kwargs=None):
    ours = METHODS[method](**(ours_kwargs or {})).explain(model, x, targets, layer)
    raw, final = _oracle(method, model, layer, x, targets)
    size = tuple(x.shape[-2:])
    # The same normalisation (ours) applied to the oracle's raw maps.
    assert (ours.maps - normalise_maps(raw, size)).abs().max().item() <= 1e-4
    # The oracle's own output differs only by its epsilon (x / (max + 1e-7), applied twice), which matters
    # only for maps whose values are all near 1e-7 or below; everywhere else our maps are its maps.
    span = torch.relu(raw).flatten(1).amax(1)
    usable = span > 1e-5
    assert usable.any(), "the test inputs give only near-zero maps; pick another seed"
    assert (ours.maps[usable] - final[usable]).abs().max().item() <= 1e-4
    assert ours.targets.tolist() == targets
    return ours


@pytest.mark.parametrize("placement", ["end", "blocks"])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam", "hirescam"])
@pytest.mark.parametrize("layer", ["default", "layer3"])
def test_gradient_methods_equal_pytorch_grad_cam(resnets, placement, method, layer):
    model = resnets[placement]
    torch.manual_seed(1)
    x = torch.randn(3, 3, 96, 64)  # non-square: catches (H, W) mix-ups; layer4 gives 3x2 maps, layer3 6x4
    _check_against_oracle(method, model, model.target_layer if layer == "default" else layer, x, [0, 2, 1])


@pytest.mark.parametrize("placement", ["end", "blocks"])
def test_scorecam_equals_pytorch_grad_cam(resnets, placement):
    # Score-CAM costs one forward per channel: 256 channels of layer1 on a 32 px image keep this fast.
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32)
    _check_against_oracle("scorecam", resnets[placement], "layer1", x, [1], {"batch_size": 48})


@pytest.mark.parametrize("placement", ["end", "blocks"])
def test_cam_equals_gradcam_after_global_average_pooling(resnets, placement):
    # With GAP then one Linear, d logit_k / dA_c,ij = W[k, c] / (h w): Grad-CAM's weights are CAM's over h w.
    model = resnets[placement]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 96, 64)
    cam = CAM().explain(model, x, [2, 0], None)
    grad = GradCAM().explain(model, x, [2, 0], None)
    assert torch.allclose(cam.maps, grad.maps, atol=1e-5)
    assert torch.allclose(cam.probs, grad.probs, atol=1e-6)
    with pytest.raises(ValueError, match="CAM needs global average pooling .* 'layer3'"):
        CAM().explain(model, x, [2, 0], "layer3")


def test_cam_equals_gradcam_on_the_tiny_cnn():
    model = _tiny()
    x = torch.randn(4, 3, 40, 56)
    assert torch.allclose(CAM().explain(model, x).maps, GradCAM().explain(model, x).maps, atol=1e-5)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class Exploding(nn.Module):
    """The tiny CNN, but its head raises: the target layer's hook has fired when the error comes."""

    def __init__(self):
        super().__init__()
        self.net = _tiny()

    def forward(self, x):
        self.net.features(x)
        raise RuntimeError("head exploded")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hooks_are_gone_and_grad_mode_restored_after_an_exception(name):
    model = Exploding().eval()
    before = _hook_count(model)
    for grad_mode in (True, False):
        torch.set_grad_enabled(grad_mode)
        try:
            with pytest.raises(RuntimeError, match="head exploded"):
                METHODS[name]().explain(model, torch.randn(1, 3, 32, 32), None, "net.features")
            assert torch.is_grad_enabled() is grad_mode
        finally:
            torch.set_grad_enabled(True)
    assert _hook_count(model) == before == 0
    # An error raised by the method itself (CAM on a layer without GAP + Linear after it) cleans up too.
    tiny = _tiny()
    with pytest.raises(ValueError, match="CAM needs"):
        CAM().explain(tiny, torch.randn(1, 3, 32, 32), None, "features.4")
    assert _hook_count(tiny) == 0


def test_targets_are_checked():
    model, x = _tiny(), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="got 1 targets for 2 images; give one target class per image"):
        GradCAM().explain(model, x, [1])
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        GradCAM().explain(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target class must be an index from 0 to 2, got 3"):
        GradCAM().explain(model, x, [0, 3])
    with pytest.raises(ValueError, match="target class must be an index"):
        GradCAM().explain(model, x, [0, 1.5])
    with pytest.raises(ValueError, match="add a batch dimension"):
        GradCAM().explain(model, x[0], None)
    with pytest.raises(ValueError, match="layer 'feature' is not a module of TinyCNN; did you mean features"):
        GradCAM().explain(model, x, None, "feature")
    with pytest.raises(ValueError, match="must output a feature map"):
        GradCAM().explain(model, x, None, "fc")
    # None explains each image's predicted class.
    out = GradCAM().explain(model, x)
    assert torch.equal(out.targets, out.logits.argmax(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_maps_are_b_h_w_in_unit_range_on_the_input_device(name, device):
    model = _tiny().to(device)
    x = torch.randn(3, 3, 36, 52, device=device)
    params = list(model.parameters())
    out = METHODS[name]().explain(model, x, [0, 1, 2], None)
    assert out.maps.shape == (3, 36, 52) and out.maps.dtype == torch.float32
    assert out.maps.device.type == device and out.probs.device.type == device
    assert out.maps.min() >= 0 and out.maps.max() <= 1 and torch.isfinite(out.maps).all()
    assert torch.allclose(out.probs.sum(1), torch.ones(3, device=device), atol=1e-5)
    assert torch.allclose(out.probs, classify(model, x).probs, atol=1e-6)  # the same forward's probabilities
    # Only the target layer's activation got a gradient: parameters are untouched.
    assert all(p.grad is None and p.requires_grad for p in params)
    assert not out.maps.requires_grad and not out.probs.requires_grad


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_all_zero_activation_stays_zero(name):
    model = _tiny()
    with torch.no_grad():
        model.features[-3].weight.zero_()  # the last conv: its ReLU'd BN output (bias 0) is all zero
        model.features[-2].bias.zero_()
    out = METHODS[name]().explain(model, torch.randn(2, 3, 32, 32), [0, 1], "features")
    assert torch.equal(out.maps, torch.zeros(2, 32, 32))


def test_normalise_maps_relu_upsample_min_max():
    raw = torch.tensor([[[-1.0, 2.0], [0.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]], [[-2.0, -1.0], [-3.0, -4.0]]])
    out = normalise_maps(raw, (2, 2))
    assert torch.equal(out[0], torch.tensor([[0.0, 0.5], [0.0, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2)) and torch.equal(out[2], torch.zeros(2, 2))  # no NaN
    up = normalise_maps(raw[:1], (4, 6))
    assert up.shape == (1, 4, 6) and up.min() == 0 and up.max() == 1


def test_scorecam_chunks_do_not_change_the_result():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    ref = ScoreCAM(batch_size=64).explain(model, x, [1, 2]).maps
    assert torch.allclose(ScoreCAM(batch_size=3).explain(model, x, [1, 2]).maps, ref, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
        ScoreCAM(batch_size=0)


def test_registry_builds_every_method():
    reg = load_plugins()
    assert set(METHODS) <= set(reg.explainers)
    for name, cls in METHODS.items():
        obj = reg.explainer(name).build()
        assert type(obj) is cls and isinstance(obj, CamExplainer)
    assert reg.explainer("scorecam").build({"batch_size": "8"}).batch_size == 8
    with pytest.raises(ValueError, match="batch_size"):
        reg.explainer("scorecam").build({"batch_size": 0})


def test_explainers_on_a_shared_model_from_many_threads():
    # No lock here: the hooks ignore forward passes of other threads.
    model = _tiny()
    inputs = [torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    names = ["gradcam", "cam", "layercam", "hirescam", "gradcampp", "gradcam"]
    expected = [METHODS[n]().explain(model, x).maps for n, x in zip(names, inputs, strict=True)]
    got: dict[int, torch.Tensor] = {}
    start = threading.Barrier(6)

    def work(i: int) -> None:
        start.wait()
        for _ in range(5):
            got[i] = METHODS[names[i]]().explain(model, inputs[i]).maps

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 6
    for i in range(6):
        assert torch.allclose(got[i], expected[i], atol=1e-6), names[i]
    assert _hook_count(model) == 0


def test_feature_map_grid():
    model = _tiny()
    grid = feature_map_grid(model, torch.randn(1, 3, 32, 32), "features.0", channels=5, min_tile=32)
    # 5 tiles of 32x32 px in a 3-column grid with 1 px gaps.
    assert grid.dtype == np.uint8 and grid.shape == (2 * 32 + 1, 3 * 32 + 2)
    with pytest.raises(ValueError, match="one image"):
        feature_map_grid(model, torch.randn(2, 3, 32, 32), "features")
