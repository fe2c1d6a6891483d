"""Built-in backbones: ResNet50+CBAM (the default), ResNet50 and ResNet18 baselines, and a tiny CNN.

Every model built here follows one layout so that CAM-family explainers
work on all of them: a feature extractor whose last module is the default
target layer, then global average pooling (``avgpool``), ``dropout`` and the
final ``nn.Linear`` at ``fc``. ``fc`` is always a plain ``nn.Linear`` applied to
the pooled output of the target layer (dropout is the identity in eval mode),
so ``fc.weight[k]`` are the CAM weights of class ``k``.

Each model also carries ``model.target_layer``, the dotted module path of the
end of its feature extractor for the placement it was built with:

=================================  ===============  =======================================
backbone                           target layer     what it is
=================================  ===============  =======================================
``resnet50_cbam`` (placement end)  ``cbam``         CBAM applied to layer4's output
``resnet50_cbam`` (blocks)         ``layer4``       last bottleneck (CBAM inside each one)
``resnet50``, ``resnet18``         ``layer4``       last residual stage
``tiny_cnn``                       ``features``     last conv block
=================================  ===============  =======================================

The ResNets take ``output_stride`` 32 (standard) or 16: layer4 then keeps
layer3's grid, so the target layer's map has twice the side (the same
weights; see :func:`_keep_layer4_size`).

The spec's ``target_layer`` is the one of the default parameters; callers that
know the model should prefer ``model.target_layer`` (the checkpoint stores it).

Pretrained weights are never downloaded: ``pretrained_path`` names a local
torchvision ResNet ``state_dict`` file or a busi-web run's model file (see
:func:`load_pretrained`).
"""

from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from busi_web.hookspecs import hookimpl
from busi_web.specs import BackboneSpec, Param

from .cbam import CBAM
from .pretrained import PretrainedWeightsError, load_pretrained

__all__ = [
    "CBAMBottleneck", "ResNetClassifier", "TinyCNN", "PretrainedWeightsError", "load_pretrained",
    "build_resnet50_cbam", "build_resnet50", "build_resnet18", "build_tiny_cnn", "register_backbones",
]

CBAM_PLACEMENTS = ("end", "blocks")
OUTPUT_STRIDES = (32, 16)


def _check_sizes(num_classes: int, in_channels: int) -> None:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be at least 1 (1 grayscale, 3 RGB), got {in_channels}")


class CBAMBottleneck(Bottleneck):
    """torchvision's Bottleneck with CBAM on the residual branch, after ``bn3`` and before the addition."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cbam = CBAM(self.conv3.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class ResNetClassifier(nn.Module):
    """A torchvision ResNet trunk, an optional CBAM after ``layer4``, then ``avgpool``, ``dropout``, ``fc``.

    Module names match torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``,
    ``fc``), so a torchvision ``state_dict`` loads key for key.
    """

    def __init__(self, trunk: tvm.ResNet, num_classes: int, in_channels: int = 3, dropout: float = 0.5,
                 cbam_end: bool = False, output_stride: int = 32):
        super().__init__()
        _check_sizes(num_classes, in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if int(output_stride) == 16:
            _keep_layer4_size(trunk.layer4)
        elif int(output_stride) != 32:
            raise ValueError(f"output_stride must be 32 or 16 (input pixels per feature-map cell), "
                             f"got {output_stride}")
        conv1 = trunk.conv1
        if in_channels != conv1.in_channels:
            conv1 = nn.Conv2d(in_channels, conv1.out_channels, kernel_size=conv1.kernel_size, stride=conv1.stride,
                              padding=conv1.padding, bias=False)
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
        self.conv1, self.bn1, self.relu, self.maxpool = conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        width = trunk.fc.in_features
        self.cbam = CBAM(width) if cbam_end else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        self.target_layer = "cbam" if cbam_end else "layer4"
        self.pretrained_report: dict | None = None

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map ``(B, C, h, w)`` at the target layer."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x if self.cbam is None else self.cbam(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(self.forward_features(x)), 1)))


def _keep_layer4_size(layer4: nn.Sequential) -> None:
    """Make ``layer4`` keep layer3's grid (stride 1 where it halved it): an output stride of 16, not 32.

    The weights keep their shapes (a torchvision state_dict still loads);
    only the first block's strided convolution and its shortcut change. The
    target layer's map then has twice the side (8 x 8 at 128 px, not 4 x 4),
    for finer heatmaps and lesion guidance, at about 1.4 times the compute (ResNet18).
    """
    block = layer4[0]
    for conv in (block.conv1, getattr(block, "conv2", None), block.downsample[0] if block.downsample else None):
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (1, 1)


def _finish(model: nn.Module, pretrained_path: str | None) -> nn.Module:
    if pretrained_path:
        model.pretrained_report = load_pretrained(model, pretrained_path)
    return model


def build_resnet50_cbam(num_classes: int = 3, in_channels: int = 3, cbam_placement: str = "end",
                        dropout: float = 0.5, pretrained_path: str | None = None,
                        output_stride: int = 32) -> ResNetClassifier:
    """ResNet50 with CBAM, ``placement`` ``end`` (one CBAM after layer4) or ``blocks`` (one per bottleneck)."""
    if cbam_placement not in CBAM_PLACEMENTS:
        raise ValueError(f"cbam_placement must be one of {', '.join(CBAM_PLACEMENTS)}, got {cbam_placement!r}")
    if cbam_placement == "blocks":
        # Same stage layout as torchvision.models.resnet50 ([3, 4, 6, 3] bottlenecks), CBAM in each block.
        trunk = tvm.ResNet(CBAMBottleneck, [3, 4, 6, 3])
    else:
        trunk = tvm.resnet50(weights=None)
    model = ResNetClassifier(trunk, num_classes, in_channels, dropout, cbam_end=cbam_placement == "end",
                             output_stride=output_stride)
    return _finish(model, pretrained_path)  # type: ignore[return-value]


def build_resnet50(num_classes: int = 3, in_channels: int = 3, dropout: float = 0.5,
                   pretrained_path: str | None = None, output_stride: int = 32) -> ResNetClassifier:
    """Plain torchvision ResNet50 (no attention) with our head: the baseline for the CBAM ablation."""
    model = ResNetClassifier(tvm.resnet50(weights=None), num_classes, in_channels, dropout, output_stride=output_stride)
    return _finish(model, pretrained_path)  # type: ignore[return-value]


def build_resnet18(num_classes: int = 3, in_channels: int = 3, dropout: float = 0.5,
                   pretrained_path: str | None = None, output_stride: int = 32) -> ResNetClassifier:
    """Plain torchvision ResNet18 with our head: a lighter baseline."""
    model = ResNetClassifier(tvm.resnet18(weights=None), num_classes, in_channels, dropout, output_stride=output_stride)
    return _finish(model, pretrained_path)  # type: ignore[return-value]


class TinyCNN(nn.Module):
    """Four conv blocks (conv3x3, BN, ReLU; max-pool between them), GAP, dropout, Linear.

    Widths ``w, 2w, 4w, 4w``; at ``w=16`` it has about 60k parameters and
    learns the phantom dataset at 64 to 128 px in about a minute on two CPU cores.
    """

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: int = 16, dropout: float = 0.0):
        super().__init__()
        _check_sizes(num_classes, in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chans[-1], num_classes)
        self.target_layer = "features"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(self.features(x)), 1)))


def build_tiny_cnn(num_classes: int = 3, in_channels: int = 3, width: int = 16, dropout: float = 0.0) -> TinyCNN:
    """A tiny, fast CNN for the first-start demo model and the tests."""
    return TinyCNN(num_classes, in_channels, width, dropout)


def _dropout(default: float) -> Param:
    return Param("dropout", "float", default, "dropout before the final linear layer (0 disables it)",
                 minimum=0.0, maximum=0.9)


_OUTPUT_STRIDE = Param("output_stride", "choice", 32,
                        "input pixels per cell of the last feature map: 32 (standard) or 16 (layer4 keeps "
                        "layer3's grid: heatmaps and lesion guidance twice as fine, about 1.4x the compute "
                        "for ResNet18)",
                        choices=OUTPUT_STRIDES, advanced=True)

_PRETRAINED = Param("pretrained_path", "path", None,
                    "optional local weights to start from: a torchvision ResNet state_dict (.pth) or a busi-web "
                    "run's best_model.pt of the same backbone; nothing is downloaded. The backbone (and CBAM, "
                    "when the file has it) loads from it; the classifier head starts fresh.", advanced=True)


@hookimpl
def register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="resnet50_cbam",
            title="ResNet50 + CBAM",
            description="ResNet50 with CBAM channel-then-spatial attention: one CBAM after the last stage "
                        "(placement 'end', the default; Grad-CAM targets its output) or one inside every "
                        "bottleneck (placement 'blocks', as in the CBAM paper; target layer4).",
            factory=build_resnet50_cbam,
            params=(
                Param("cbam_placement", "choice", "end", "where CBAM sits: 'end' after layer4, or 'blocks' "
                      "in every bottleneck", choices=CBAM_PLACEMENTS),
                _dropout(0.5),
                _OUTPUT_STRIDE,
                _PRETRAINED,
            ),
            target_layer="cbam",
        ),
        BackboneSpec(
            name="resnet50",
            title="ResNet50",
            description="Plain ResNet50 without attention: the baseline for ResNet50 + CBAM.",
            factory=build_resnet50,
            params=(_dropout(0.5), _OUTPUT_STRIDE, _PRETRAINED),
            target_layer="layer4",
        ),
        BackboneSpec(
            name="resnet18",
            title="ResNet18",
            description="Plain ResNet18: a lighter baseline that trains several times faster on a CPU.",
            factory=build_resnet18,
            params=(_dropout(0.5), _OUTPUT_STRIDE, _PRETRAINED),
            target_layer="layer4",
        ),
        BackboneSpec(
            name="tiny_cnn",
            title="Tiny CNN",
            description="Four small convolution blocks: trains in a minute on a CPU. For demos and tests.",
            factory=build_tiny_cnn,
            params=(
                Param("width", "int", 16, "channels of the first block (later blocks 2x and 4x)",
                      minimum=4, maximum=128),
                _dropout(0.0),
            ),
            target_layer="features",
        ),
    ]
