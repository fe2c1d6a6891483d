"""``busi-web plugins new NAME``: a plugin distribution to start from, with a spec of each kind and its tests.

The files are written from the templates below (``{name}`` the distribution, ``{package}`` the module, ``{prefix}``
the specs' name prefix). The plugin works as written: its backbone trains, its explainer maps, its dataset
generates images, and its tests (which use :mod:`busi_web.testing`) pass installed or not.
"""

from __future__ import annotations

import re
from pathlib import Path

from busi_web.errors import UserError
from busi_web.specs import CONTRACT_VERSION

NAME = re.compile(r"^[a-z][a-z0-9-]{1,40}[a-z0-9]$")

FILES: dict[str, str] = {
    "pyproject.toml": '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A busi-web plugin: a backbone, an explainer and a dataset"
requires-python = ">=3.10"
dependencies = ["busi-web"]

[project.entry-points.busi_web]
{package} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
pythonpath = ["."]
''',
    "README.md": '''# {name}

A busi-web plugin (contract {contract}): the backbone `{prefix}_cnn`, the explainer `{prefix}_saliency` and the
generated dataset `{prefix}_stripes`. Install it into busi-web's environment and restart the server:

    .venv/bin/pip install -e {name}
    .venv/bin/busi-web plugins check {package}

Its tests use busi-web's testing kit and pass installed or not:

    .venv/bin/python -m pytest {name}/tests

The guide to the contract is busi-web's docs/plugins.md.
''',
    "{package}/__init__.py": '''"""The {name} plugin: one backbone, one explainer and one dataset.

Written for busi-web plugin contract {contract}.
"""

from busi_web.hookspecs import hookimpl
from busi_web.specs import BackboneSpec, DatasetSpec, ExplainerSpec, Param

from .models import SmallCNN, Saliency, Stripes

BUSI_WEB_CONTRACT = "{contract}"


@hookimpl
def register_backbones():
    return [BackboneSpec(name="{prefix}_cnn", title="{name}: a small CNN", description="Two convolutions.",
                         factory=SmallCNN, target_layer="features",
                         params=(Param("width", "int", 16, "Channels of the first convolution.", minimum=4,
                                       maximum=256),))]


@hookimpl
def register_explainers():
    return [ExplainerSpec(name="{prefix}_saliency", title="{name}: saliency",
                          description="The absolute gradient of the class score with respect to the image.",
                          factory=Saliency)]


@hookimpl
def register_datasets():
    return [DatasetSpec(name="{prefix}_stripes", title="{name}: stripes",
                        description="Generated images: benign ones have horizontal stripes, malignant ones "
                                    "vertical.", factory=Stripes, needs_data_dir=False, synthetic=True,
                        params=(Param("per_class", "int", 12, "Images of each class.", minimum=2, maximum=1000),))]
''',
    "{package}/models.py": '''"""The plugin's backbone, explainer and dataset."""

import numpy as np
import torch
from torch import nn

from busi_web.data.datasets import ImageDataset, Sample


class SmallCNN(nn.Module):
    """factory(num_classes=..., in_channels=..., width=...): logits (B, num_classes)."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class Saliency:
    """explain(model, images, targets, target_layer): maps (B, H, W) of any range (the core normalises them)."""

    def explain(self, model, images, targets, target_layer):
        images = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(images)
            chosen = logits.argmax(1) if targets is None else targets
            logits.gather(1, chosen[:, None]).sum().backward()
        return images.grad.abs().amax(1)


class Stripes(ImageDataset):
    """Generated 64 px gray images: benign stripes run across, malignant ones down; no data folder needed."""

    name = "stripes"
    has_duplicates = False

    def __init__(self, root: str | None = None, per_class: int = 12):
        # root is the data folder; busi-web passes None here, as the spec says needs_data_dir=False
        samples = [Sample(key=f"stripes/{{c}}/{{i}}", label=k) for k, c in enumerate(("benign", "malignant"))
                   for i in range(per_class)]
        super().__init__(["benign", "malignant"], samples)

    def load_image(self, index):
        rng = np.random.default_rng(index)
        period = int(rng.integers(6, 12))
        wave = (np.arange(64) // (period // 2)) % 2 * 160 + 40
        image = np.tile(wave[:, None], (1, 64)) if self.samples[index].label == 0 else np.tile(wave, (64, 1))
        return np.clip(image + rng.normal(0, 20, (64, 64)), 0, 255).astype(np.uint8)
''',
    "tests/test_plugin.py": '''"""The plugin through busi-web's testing kit.

It loads, each spec works, it trains and it diagnoses.
"""

import io

import numpy as np
from PIL import Image

from busi_web.testing import check

import {package}


def test_it_loads_with_its_three_specs(busi_registry):
    registry = busi_registry({package})
    assert "{prefix}_cnn" in registry.backbones and "{prefix}_saliency" in registry.explainers
    assert "{prefix}_stripes" in registry.datasets


def test_every_spec_passes_busi_webs_check():
    report = check({package})
    assert report.ok and len(report.findings) == 3, [f.line() for f in report.findings]


def test_it_trains_and_diagnoses_with_its_own_explainer(busi_app, busi_client_as, busi_train_tiny):
    app = busi_app({package})
    run_id = busi_train_tiny(app, "{prefix}_cnn", "{prefix}_stripes")
    admin = busi_client_as(app, "admin")
    image = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image, "PNG")
    image.seek(0)
    answer = admin.post("/api/predict", data={{"image": [(image, "blank.png")], "run_id": str(run_id),
                                              "explainer": "{prefix}_saliency"}})
    assert answer.status_code == 200, answer.get_json()
    assert set(answer.get_json()["results"][0]["probabilities"]) == {{"benign", "malignant"}}
''',
}


def write_plugin(name: str, into: str | Path) -> Path:
    """Write the distribution ``name`` into folder ``into`` (created); returns its folder. A 400 for a name that
    is not a distribution name, a 409 when the folder exists."""
    if not NAME.match(name or ""):
        raise UserError(f"{name!r} is not a plugin name: 3 to 42 lower-case letters, digits and dashes, starting "
                        "with a letter (e.g. busi-web-hospital-plugin)", 400)
    folder = Path(into) / name
    if folder.exists():
        raise UserError(f"{folder} exists already; choose another name or folder", 409)
    package = name.replace("-", "_")
    prefix = package.removeprefix("busi_web_").removesuffix("_plugin") or package
    values = {"name": name, "package": package, "prefix": prefix, "contract": CONTRACT_VERSION}
    for template, text in FILES.items():
        path = folder / template.format(**values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**values), encoding="utf-8")
    return folder
