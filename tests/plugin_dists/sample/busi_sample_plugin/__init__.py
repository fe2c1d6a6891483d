"""A complete third-party plugin: a backbone, an explainer and a dataset."""

import numpy as np
import torch
from torch import nn

from busi_web import hookimpl
from busi_web.data.datasets import ImageDataset, Sample
from busi_web.specs import BackboneSpec, DatasetSpec, ExplainerSpec, Param


class StripeNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InputGradient:
    """Saliency as |d score / d input|, averaged over channels."""

    def explain(self, model, images, targets=None, target_layer=None):
        from busi_web.specs import Explanation

        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            if targets is None:
                targets = logits.argmax(1)
            targets = torch.as_tensor(targets, device=logits.device)
            score = logits.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
        maps = grad.abs().mean(1)
        flat = maps.flatten(1)
        lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        maps = torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(maps))
        return Explanation(logits=logits.detach(), probs=logits.detach().softmax(1), targets=targets, maps=maps)


class Stripes(ImageDataset):
    name = "sample_stripes"

    def __init__(self, count: int, size: int):
        samples = [Sample(key=f"stripes/{i}", label=i % 2) for i in range(count)]
        super().__init__(["horizontal", "vertical"], samples)
        self.size = size

    def load_image(self, index):
        img = np.zeros((self.size, self.size), np.uint8)
        if self.samples[index].label == 0:
            img[::4] = 255
        else:
            img[:, ::4] = 255
        return np.repeat(img[..., None], 3, axis=2)


@hookimpl
def register_backbones():
    return [BackboneSpec(
        name="sample_stripenet", title="Stripe net", description="One convolution, for tests.",
        factory=lambda num_classes, in_channels, width: StripeNet(num_classes, in_channels, width),
        params=(Param("width", "int", 4, "convolution channels", minimum=1, maximum=64),),
        target_layer="features",
    )]


@hookimpl
def register_explainers():
    return [ExplainerSpec(name="sample_input_gradient", title="Input gradient",
                          description="Absolute input gradient.", factory=InputGradient)]


@hookimpl
def register_datasets():
    return [DatasetSpec(
        name="sample_stripes", title="Stripes", description="Horizontal or vertical stripes.",
        factory=lambda root, count, size: Stripes(count, size),
        params=(Param("count", "int", 8, minimum=2), Param("size", "int", 32, minimum=8)),
        needs_data_dir=False,
    )]
