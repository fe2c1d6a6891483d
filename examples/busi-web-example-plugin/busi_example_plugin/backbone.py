"""MobileNetV3-Small from torchvision, for any number of classes and input channels."""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v3_small


def build_mobilenet_v3(num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    """An untrained MobileNetV3-Small whose last layer gives ``num_classes`` logits.

    busi-web passes ``num_classes`` and ``in_channels`` (from the dataset); ``dropout`` is this spec's parameter.
    Weights are never downloaded: a hospital network is closed.
    """
    model = mobilenet_v3_small(weights=None, num_classes=num_classes, dropout=dropout)
    if in_channels != 3:  # a grayscale dataset: the first convolution takes one channel
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride,
                                          first.padding, bias=False)
    return model
