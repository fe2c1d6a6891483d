"""Segmenting backbones: a ResNet encoder, a U-Net decoder that outlines the lesion, and a classifier that looks twice.

One model, one forward pass, three steps:

1. **First look.** The input (``input_size``, e.g. 256 px) is scaled to
   ``look_size`` (e.g. 128 px) and runs through a registered ResNet encoder
   (``resnet18``, ``resnet50`` or ``resnet50_cbam``).
2. **Outline.** A U-Net-style decoder climbs back from layer4 with skips from
   layer3, layer2, layer1 and the stem, to one lesion logit per pixel of the
   first look (``lesion_head``; half the input's resolution when
   ``look_size`` is half of ``input_size``).
3. **Second look.** A square crop around the predicted lesion, with a margin,
   is cut from the *input* (the higher resolution) and classified by a second
   encoder at ``crop_size``: the lesion's margin and echo pattern survive
   there, where at 128 px a lesion is some 30 px across. An image without a
   lesion (nothing above ``lesion_threshold``) is looked at whole.

The classifier (``fc``) reads one global average of the explained layer
``pooling`` (:class:`LesionPooling`), whose channels are layer4's features
as they are, pooled inside the lesion, pooled in a ring around it, and the
second look's features spread over the crop's cells. Each pooling is the
plain average of its channels over the map, so ``fc``'s weights are CAM
weights and every CAM explainer works on ``pooling`` unchanged: the map shows
the global evidence, the lesion's and its surroundings', and where the second
look looked.

The model's contract beyond a classifier's (``BackboneSpec.segments``):
``segment(x, masks=None)`` returns ``(logits, lesion_logits)``; while
training, ``masks`` (the lesion masks and which images have one) choose the
second look's crop for images with a lesion: their true lesion's box,
jittered, so the second look learns on lesions while the outline is still
learning. ``lesion_layer`` names the module whose output is the lesion map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.ops import roi_align

from busi_web.hookspecs import hookimpl
from busi_web.specs import BackboneSpec, Param

from .backbones import ResNetClassifier

__all__ = ["LesionPooling", "SegmentingResNet", "build_segmenting_resnet", "lesion_boxes", "register_backbones"]

ENCODERS = ("resnet18", "resnet50", "resnet50_cbam")
MIN_CROP = 0.25  # the second look's crop covers at least this share of the image side


def _encoder(name: str, output_stride: int) -> ResNetClassifier:
    trunk = tvm.resnet18(weights=None) if name == "resnet18" else tvm.resnet50(weights=None)
    return ResNetClassifier(trunk, num_classes=1, cbam_end=name == "resnet50_cbam", output_stride=output_stride)


class _Up(nn.Module):
    """Upsample to the skip's size, concatenate it, ``convs`` 3x3 convolutions."""

    def __init__(self, cin: int, skip: int, cout: int, convs: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(convs):
            layers += [nn.Conv2d(cin + skip if k == 0 else cout, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int] | None = None) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:] if skip is not None else size, mode="bilinear", align_corners=False)
        return self.block(x if skip is None else torch.cat([x, skip], 1))


def _cover(lo: Tensor, hi: Tensor, n: int) -> Tensor:
    """``(B, n)``: how much of each of ``n`` equal cells of [0, 1] the interval ``[lo, hi]`` covers (0 to 1)."""
    edges = torch.arange(n, device=lo.device, dtype=lo.dtype) / n
    return ((torch.minimum(hi[:, None], edges + 1.0 / n) - torch.maximum(lo[:, None], edges)) * n).clamp(min=0.0)


class LesionPooling(nn.Module):
    """The explained layer: layer4's map ``A`` widened to the channels the classifier pools.

    Its output is ``[A, A*w_in, A*w_ring, s*w_box]`` (the last part only with a
    second look), where ``w_in`` is the lesion probability at each cell,
    ``w_ring`` the band just outside it (a 3x3 dilation minus the lesion), and
    ``w_box`` the share of each cell the second look's crop covers, each scaled
    so that the map's mean is the weighted mean (with one cell's weight added
    to the sum, so that an image without a lesion pools to about 0, not to
    noise). ``s`` is the second look's pooled feature vector.
    """

    def forward(self, feats: Tensor, prob: Tensor, boxes: Tensor | None = None, crop: Tensor | None = None
                ) -> Tensor:
        h, w = feats.shape[-2:]
        cells = float(h * w)
        p = F.adaptive_avg_pool2d(prob, (h, w))
        ring = (F.max_pool2d(p, 3, stride=1, padding=1) - p).clamp(min=0.0)

        def spread(weight: Tensor) -> Tensor:
            return weight * (cells / (weight.sum((2, 3), keepdim=True) + 1.0))

        parts = [feats, feats * spread(p), feats * spread(ring)]
        if crop is not None and boxes is not None:
            box = _cover(boxes[:, 1], boxes[:, 3], h)[:, :, None] * _cover(boxes[:, 0], boxes[:, 2], w)[:, None, :]
            box = box[:, None]
            parts.append(crop[:, :, None, None] * box * (cells / box.sum((2, 3), keepdim=True).clamp(min=1e-6)))
        return torch.cat(parts, 1)


def lesion_boxes(prob: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """Square crop boxes ``(B, 4)`` as ``(x0, y0, x1, y1)`` in [0, 1] around each map's lesion.

    ``prob`` is ``(B, h, w)``. The lesion is the connected region above
    ``threshold`` that holds the map's peak; its bounding box grows by
    ``margin`` times its longer side on every side, becomes square (at least
    ``MIN_CROP`` of the image) and is shifted inside the image. A map with
    nothing above the threshold gets the whole image.
    """
    import cv2  # only the second look needs it

    out = np.tile(np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32), (prob.shape[0], 1))
    for b, m in enumerate(prob):
        above = (m > threshold).astype(np.uint8)
        if not above.any():
            continue
        _n, labels = cv2.connectedComponents(above, connectivity=8)
        peak = np.unravel_index(int(np.argmax(np.where(above > 0, m, -1.0))), m.shape)
        ys, xs = np.nonzero(labels == labels[peak])
        h, w = m.shape
        out[b] = square_box(xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h, margin)
    return out


def square_box(x0: float, y0: float, x1: float, y1: float, margin: float) -> np.ndarray:
    """The square box around ``(x0, y0, x1, y1)`` (fractions of the image) with ``margin`` of its longer side added
    on each side, at least :data:`MIN_CROP` wide, moved inside [0, 1] (the whole image when it is larger)."""
    side = min(1.0, max(MIN_CROP, max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = min(max(cx - side / 2.0, 0.0), 1.0 - side)
    top = min(max(cy - side / 2.0, 0.0), 1.0 - side)
    return np.array([left, top, left + side, top + side], dtype=np.float32)


class SegmentingResNet(nn.Module):
    """See the module docstring. ``forward(x)`` gives logits; ``segment(x)`` gives the lesion logits too."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, encoder: str = "resnet18", look_size: int = 128,
                 second_look: bool = True, crop_size: int = 128, crop_margin: float = 0.25,
                 lesion_threshold: float = 0.5, dropout: float = 0.5, output_stride: int = 16):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if not 0.0 < lesion_threshold < 1.0:
            raise ValueError(f"lesion_threshold must be between 0 and 1, got {lesion_threshold}")
        self.look_size, self.crop_size = int(look_size), int(crop_size)
        self.crop_margin, self.lesion_threshold = float(crop_margin), float(lesion_threshold)
        self.encoder = _encoder(encoder, output_stride)
        if in_channels != 3:
            self.encoder.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        wide = encoder != "resnet18"
        c0, c1, c2, c3, c4 = (64, 256, 512, 1024, 2048) if wide else (64, 64, 128, 256, 512)
        self.up3, self.up2 = _Up(c4, c3, 128), _Up(128, c2, 64)
        self.up1, self.up0 = _Up(64, c1, 32), _Up(32, c0, 16, convs=1)
        self.up_full = _Up(16, 0, 8, convs=1)
        self.lesion_head = nn.Conv2d(8, 1, 1)
        self.lesion_layer = "lesion_head"
        self.second = _encoder(encoder, 32) if second_look else None
        if self.second is not None and in_channels != 3:
            self.second.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.pooling = LesionPooling()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c4 * (4 if second_look else 3), num_classes)
        self.target_layer = "pooling"

    def _first_look(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Layer4's features and the lesion logits (at the first look's size)."""
        if self.look_size and x.shape[-1] != self.look_size:
            x = F.interpolate(x, size=(self.look_size, self.look_size), mode="bilinear", align_corners=False,
                              antialias=True)
        e = self.encoder
        s0 = e.relu(e.bn1(e.conv1(x)))
        s1 = e.layer1(e.maxpool(s0))
        s2 = e.layer2(s1)
        s3 = e.layer3(s2)
        s4 = e.layer4(s3)
        if e.cbam is not None:
            s4 = e.cbam(s4)
        d = self.up0(self.up1(self.up2(self.up3(s4, s3), s2), s1), s0)
        return s4, self.lesion_head(self.up_full(d, None, tuple(x.shape[-2:])))

    def _boxes(self, prob: Tensor, masks: tuple[Tensor, Tensor] | None) -> Tensor:
        boxes = lesion_boxes(prob[:, 0].detach().float().cpu().numpy(), self.lesion_threshold, self.crop_margin)
        if masks is not None and self.training:
            truth, has = masks
            for b in range(truth.shape[0]):
                ys, xs = torch.nonzero(truth[b] > 0.5, as_tuple=True)
                if bool(has[b]) and ys.numel():
                    h, w = truth.shape[-2:]
                    jitter = np.random.uniform(-0.1, 0.1, 4) * float(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
                    boxes[b] = square_box((float(xs.min()) + jitter[0]) / w, (float(ys.min()) + jitter[1]) / h,
                                          (float(xs.max()) + 1 + jitter[2]) / w, (float(ys.max()) + 1 + jitter[3]) / h,
                                          self.crop_margin * np.random.uniform(0.6, 1.6))
        return torch.from_numpy(boxes).to(prob.device)

    def segment(self, x: Tensor, masks: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(logits (B, K), lesion logits (B, 1, look, look))``; ``masks`` (training only) as in the module doc."""
        feats, lesion = self._first_look(x)
        prob = torch.sigmoid(lesion.detach().float())
        boxes = crop = None
        if self.second is not None:
            boxes = self._boxes(prob, masks)
            side_h, side_w = x.shape[-2:]
            rois = torch.cat([torch.arange(x.shape[0], device=x.device, dtype=x.dtype)[:, None],
                              boxes.to(x.dtype) * torch.tensor([side_w, side_h, side_w, side_h], device=x.device,
                                                               dtype=x.dtype)], 1)
            crops = roi_align(x, rois, (self.crop_size, self.crop_size), spatial_scale=1.0, sampling_ratio=2,
                              aligned=True)
            crop = torch.flatten(self.avgpool(self.second.forward_features(crops)), 1)
        pooled = self.pooling(feats, prob.to(feats.dtype), boxes, crop)
        return self.fc(self.dropout(torch.flatten(self.avgpool(pooled), 1))), lesion

    def forward(self, x: Tensor) -> Tensor:
        return self.segment(x)[0]


def build_segmenting_resnet(num_classes: int = 3, in_channels: int = 3, encoder: str = "resnet18",
                            look_size: int = 128, second_look: bool = True, crop_size: int = 128,
                            crop_margin: float = 0.25, lesion_threshold: float = 0.5, dropout: float = 0.5,
                            output_stride: int = 16) -> SegmentingResNet:
    """A :class:`SegmentingResNet` (see the module docstring for the parameters)."""
    return SegmentingResNet(num_classes, in_channels, encoder, look_size, second_look, crop_size, crop_margin,
                            lesion_threshold, dropout, output_stride)


@hookimpl
def register_backbones() -> list[BackboneSpec]:
    return [BackboneSpec(
        name="segmenting_resnet",
        title="Segmenting ResNet (lesion outline + second look)",
        description="A ResNet encoder with a U-Net decoder that outlines the lesion (trained on the lesion masks "
                    "with Dice + BCE: set lesion_loss), and a classifier that pools the features inside and around "
                    "the outline and takes a second look at a crop around it at a higher resolution. The "
                    "diagnosis shows the outline, its size and its BI-RADS shape, orientation and margin.",
        factory=build_segmenting_resnet,
        params=(
            Param("encoder", "choice", "resnet18", "the registered ResNet the model is built on", choices=ENCODERS),
            Param("look_size", "int", 128, "side (px) of the first look at the whole image, and of the lesion map; "
                  "0: the input size", minimum=0, maximum=1024),
            Param("second_look", "bool", True, "classify a crop around the predicted lesion as well, cut from the "
                  "input at its full resolution"),
            Param("crop_size", "int", 128, "side (px) the second look's crop is classified at", minimum=32,
                  maximum=1024, advanced=True),
            Param("crop_margin", "float", 0.25, "context around the lesion in the crop, as a share of its longer "
                  "side on each side", minimum=0.0, maximum=2.0, advanced=True),
            Param("lesion_threshold", "float", 0.5, "lesion probability above which a pixel is inside the outline",
                  minimum=0.05, maximum=0.95, advanced=True),
            Param("dropout", "float", 0.5, "dropout before the final linear layer (0 disables it)", minimum=0.0,
                  maximum=0.9),
            Param("output_stride", "choice", 16, "input pixels per cell of layer4's map at the first look (16: an "
                  "8 x 8 grid at 128 px)", choices=(16, 32), advanced=True),
        ),
        target_layer="pooling",
        segments=True,
    )]
