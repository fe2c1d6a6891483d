"""The ``mammo_cnn`` backbone: the small CNN of the original mini-MIAS study, for one-channel ROI crops.

Layout (3x3 convolutions with ReLU, no padding, as in the study)::

    conv 32 -> conv 64 -> max-pool 2 -> conv 64 -> max-pool 2      (``features``: the explainers' layer)
    -> dropout -> dense 64 -> ReLU -> dropout -> dense num_classes

The study flattens the last feature map of a 48 px crop (10 x 10 x 64) into
the dense layer, which ties the network to one input size. Here the map is
first average-pooled to ``grid`` x ``grid`` (10 by default, so at 48 px it is
exactly the study's flatten); any crop size then works, and Grad-CAM-style
explainers read the ``features`` map. CAM proper needs global pooling
straight into the last layer, which this network does not have: use Grad-CAM.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from busi_web.hookspecs import hookimpl
from busi_web.specs import BackboneSpec, Param

__all__ = ["MammoCNN", "build_mammo_cnn", "register_backbones"]


class MammoCNN(nn.Module):
    """The study's small CNN (see the module docstring); ``in_channels`` 1 for mammograms."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, dropout: float = 0.5, grid: int = 10,
                 dense: int = 64):
        super().__init__()
        if int(num_classes) < 1 or int(in_channels) < 1:
            raise ValueError(f"num_classes and in_channels must be at least 1, got {num_classes}, {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(64 * grid * grid, dense)
        self.dropout2 = nn.Dropout(dropout)
        self.fc = nn.Linear(dense, num_classes)
        self.target_layer = "features"

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map ``(B, 64, h, w)`` at the target layer."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc(self.dropout2(torch.relu(self.dense(self.dropout(z)))))


def build_mammo_cnn(num_classes: int = 2, in_channels: int = 1, dropout: float = 0.5, grid: int = 10,
                    dense: int = 64) -> MammoCNN:
    """The original study's mammography CNN (about 0.5M parameters at the defaults)."""
    return MammoCNN(num_classes, in_channels, dropout, grid, dense)


@hookimpl
def register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="mammo_cnn",
            title="Mammography CNN (mini-MIAS study)",
            description="The small CNN of the original mini-MIAS study for 48 px one-channel ROI crops: conv 32, "
                        "conv 64, pool, conv 64, pool, dropout, dense 64, dropout, dense. Trains in minutes on a "
                        "CPU. Use Grad-CAM (not CAM) to explain it.",
            factory=build_mammo_cnn,
            params=(
                Param("dropout", "float", 0.5, "dropout before each dense layer (0 disables it)", minimum=0.0,
                      maximum=0.9),
                Param("grid", "int", 10, "the last feature map is average-pooled to grid x grid before the "
                      "dense layer (10: the study's flatten at 48 px)", minimum=1, maximum=32, advanced=True),
                Param("dense", "int", 64, "units of the hidden dense layer", minimum=4, maximum=4096,
                      advanced=True),
            ),
            target_layer="features",
        )
    ]
