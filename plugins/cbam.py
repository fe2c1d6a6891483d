"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018), as three small modules.

``CBAM(channels)`` refines a feature map ``(B, C, H, W)`` in two steps,
channel first, then spatial, each a multiplication by a sigmoid gate:

- :class:`ChannelGate`: the average- and the max-pooled ``(B, C, 1, 1)``
  descriptors go through ONE shared MLP (1x1 convolutions ``C -> C/r -> C``
  with a ReLU between them), the two outputs are summed and squashed by a
  sigmoid into per-channel weights.
- :class:`SpatialGate`: the channel-wise mean and max ``(B, 2, H, W)`` go
  through a 7x7 convolution (padding 3, so the size is kept) and a
  BatchNorm, then a sigmoid into a per-pixel weight ``(B, 1, H, W)``.
  The paper's text has no BatchNorm; its authors' code has one. We keep it
  (``bn=True``): it stabilises the gate's scale when CBAM sits in every
  bottleneck, and it is cheap.

Each gate remembers nothing between calls (no cached attention tensors):
the modules are safe to share across threads in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelGate(nn.Module):
    """Channel attention: ``x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with one shared ``mlp``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"ChannelGate needs channels >= 1 and reduction >= 1, got {channels}, {reduction}")
        hidden = max(channels // reduction, 1)
        # 1x1 convolutions on the (B, C, 1, 1) descriptors are a Linear MLP without reshaping.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def attention(self, x: Tensor) -> Tensor:
        """The per-channel weights ``(B, C, 1, 1)`` in (0, 1)."""
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class SpatialGate(nn.Module):
    """Spatial attention: ``x * sigmoid(bn(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, kernel_size: int = 7, bn: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SpatialGate kernel_size must be odd to keep the map's size, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(1) if bn else nn.Identity()

    def attention(self, x: Tensor) -> Tensor:
        """The per-pixel weights ``(B, 1, H, W)`` in (0, 1)."""
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CBAM(nn.Module):
    """Channel gate, then spatial gate. Keeps the input's shape."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, spatial_bn: bool = True):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size, bn=spatial_bn)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))
