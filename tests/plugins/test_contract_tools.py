"""The tools of the plugin contract: ``plugins new`` writes a plugin that works, ``plugins check`` and the kit's
``check`` try every spec and name what fails, with the plugin's file and line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from busi_web import hookimpl
from busi_web.data.datasets import ImageDataset, Sample
from busi_web.specs import BackboneSpec, DatasetSpec, ExplainerSpec
from busi_web.testing import check
from tests.helpers import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "busi-web-example-plugin"


class OneLogit(nn.Module):
    """A classifier that ignores num_classes: one logit, whatever it is asked for."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.features = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Sideways:
    """An explainer whose maps are not of the image's size and cannot be resized to it (a 1-D vector)."""

    def explain(self, model, images, targets, target_layer):
        return torch.ones(images.shape[0], 7)


class Unreadable(ImageDataset):
    """A dataset whose images cannot be read."""

    def __init__(self, root):
        super().__init__(["benign", "malignant"], [Sample(key=f"k{i}", label=i % 2) for i in range(4)])

    def load_image(self, index):
        raise OSError("the scanner export is truncated")


class Broken:
    """A plugin with one mistake in each kind of spec."""

    @hookimpl
    def register_backbones(self):
        return [BackboneSpec(name="one_logit", title="One logit", description="Wrong output.", factory=OneLogit,
                             target_layer="features")]

    @hookimpl
    def register_explainers(self):
        return [ExplainerSpec(name="sideways", title="Sideways", description="Wrong map.", factory=Sideways)]

    @hookimpl
    def register_datasets(self):
        return [DatasetSpec(name="unreadable", title="Unreadable", description="Cannot read.", factory=Unreadable,
                            needs_data_dir=False, synthetic=True)]


def test_the_kits_check_names_each_broken_spec_and_where_it_broke():
    report = check(Broken())
    assert not report.ok
    found = {f.name: f for f in report.findings if f.kind != "plugin"}
    note = next(f for f in report.findings if f.kind == "plugin")
    assert note.ok and "declares no contract version" in note.detail  # said, not refused
    assert set(found) == {"one_logit", "sideways", "unreadable"} and not any(f.ok for f in found.values())
    assert "not (1, 3)" in found["one_logit"].detail and "num_classes" in found["one_logit"].detail
    assert found["sideways"].line().startswith("FAILED Broken: explainer sideways:") and "(1, 7)" in found[
        "sideways"].detail
    assert "the scanner export is truncated" in found["unreadable"].detail
    assert "test_contract_tools.py:" in found["unreadable"].detail  # the plugin's own file and line


def test_plugins_check_passes_for_every_built_in_and_names_a_plugin_that_is_not_installed():
    done = run_cli("plugins", "check", "--builtins")
    assert done.returncode == 0, done.stdout + done.stderr
    for spec in ("resnet50_cbam", "gradcam", "busi", "busbra", "mias"):
        assert f" {spec}:" in done.stdout, done.stdout
    missing = run_cli("plugins", "check", "no_such_plugin")
    assert missing.returncode == 1 and "no installed plugin is called 'no_such_plugin'" in missing.stdout


def test_plugins_new_refuses_a_bad_name_and_an_existing_folder(tmp_path):
    bad = run_cli("plugins", "new", "My_Plugin", "--into", str(tmp_path))
    assert bad.returncode == 1 and "is not a plugin name" in bad.stderr
    assert run_cli("plugins", "new", "busi-web-ward-plugin", "--into", str(tmp_path)).returncode == 0
    again = run_cli("plugins", "new", "busi-web-ward-plugin", "--into", str(tmp_path))
    assert again.returncode == 1 and "exists already" in again.stderr


@pytest.mark.slow
def test_a_new_plugin_passes_its_own_tests_without_being_installed(tmp_path):
    done = run_cli("plugins", "new", "busi-web-ward-plugin", "--into", str(tmp_path))
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "busi-web-ward-plugin"
    assert (folder / "busi_web_ward_plugin" / "__init__.py").read_text().count('BUSI_WEB_CONTRACT = "1.0"') == 1
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout


@pytest.mark.slow
def test_the_example_plugin_passes_its_own_tests_without_being_installed():
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                           capture_output=True, text=True, timeout=600, cwd=EXAMPLE.parent)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "4 passed" in tests.stdout
