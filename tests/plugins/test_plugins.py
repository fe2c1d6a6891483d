"""The plugin contract through real entry points: pip-installed distributions, not monkeypatches."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from busi_web import hookspecs
from busi_web.plugins import PluginRegistry, UnknownPlugin, load_plugins
from tests.helpers import ROOT, make_user_client, run_cli

DISTS = {"busi-web-sample-plugin": ROOT / "tests/plugin_dists/sample",
         "busi-web-broken-plugin": ROOT / "tests/plugin_dists/broken"}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def third_party():
    """pip-install the sample and the broken plugin distributions for this module only."""
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", *map(str, DISTS.values()))
    importlib.invalidate_caches()
    load_plugins()
    yield
    _pip("uninstall", "-y", *DISTS)
    importlib.invalidate_caches()
    for name in ("busi_sample_plugin", "busi_broken_plugin"):
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]
    load_plugins()


def by_name(registry, name):
    return next(p for p in registry.plugins if p.name == name)


def test_builtins_load_through_the_entry_point_group():
    registry = PluginRegistry().load_entry_points()
    builtins = [p for p in registry.plugins if p.builtin]
    assert {p.name for p in builtins} >= {"phantom", "busi", "imagefolder", "backbones", "explainers"}
    for p in builtins:
        assert p.status == "loaded", p.errors
        assert p.distribution == "busi-web" and p.module.startswith("busi_web_plugins.")
    assert {"phantom", "busi", "imagefolder"} <= set(registry.datasets)
    assert {"resnet50_cbam", "resnet50", "resnet18"} <= set(registry.backbones)
    assert {"gradcam", "gradcampp", "cam", "layercam", "hirescam", "scorecam"} <= set(registry.explainers)


def test_pip_install_alone_adds_a_backbone_an_explainer_and_a_dataset(third_party):
    registry = PluginRegistry().load_entry_points()
    sample = by_name(registry, "sample")
    assert sample.status == "loaded", sample.errors
    assert (sample.distribution, sample.version, sample.builtin) == ("busi-web-sample-plugin", "1.2.3", False)
    assert sample.registers == {"backbones": ["sample_stripenet"], "explainers": ["sample_input_gradient"],
                                "datasets": ["sample_stripes"]}
    # The registered things work: build the dataset and the backbone, explain a prediction.
    import torch

    ds = registry.dataset("sample_stripes").build({"count": "4"}, root=None)
    img = torch.from_numpy(ds.load_image(1)).permute(2, 0, 1).float()[None] / 255
    net = registry.backbone("sample_stripenet").build({"width": 3}, num_classes=2, in_channels=3).eval()
    out = registry.explainer("sample_input_gradient").build().explain(net, img)
    assert out.maps.shape == (1, 32, 32) and float(out.maps.min()) >= 0 and float(out.maps.max()) <= 1
    assert registry.version_of("backbones", "sample_stripenet") == "1.2.3"


def test_broken_plugins_are_reported_and_skipped(third_party):
    registry = PluginRegistry().load_entry_points()
    bad_import = by_name(registry, "broken_import")
    assert bad_import.status == "failed" and "busi_web_this_module_does_not_exist" in bad_import.errors[0]
    assert "busi_broken_plugin/bad_import.py:3" in bad_import.errors[0]  # the file and line, in one line
    assert "\n" not in bad_import.errors[0]
    bad_hook = by_name(registry, "broken_hook")
    assert bad_hook.status == "failed" and "the broken plugin's hook exploded" in bad_hook.errors[0]
    clash = by_name(registry, "name_clash")
    assert clash.status == "failed"
    assert any("'phantom' is already registered by plugin 'phantom'" in e for e in clash.errors)
    # The taken name keeps its owner, and nothing of the clashing plugin registers: half a plugin is worse.
    assert registry.dataset("phantom").title != "Impostor"
    assert clash.registers["datasets"] == [] and "clash_fresh" not in registry.datasets
    assert any("nothing of this plugin was registered" in e for e in clash.errors)
    # Everything else still loads.
    assert by_name(registry, "sample").status == "loaded"
    assert by_name(registry, "phantom").status == "loaded"


def test_allow_list_limits_third_parties_but_never_builtins(third_party):
    registry = PluginRegistry(allowed=["busi-web-sample-plugin"]).load_entry_points()
    assert by_name(registry, "sample").status == "loaded"
    for name in ("broken_import", "broken_hook", "name_clash"):
        p = by_name(registry, name)
        assert p.status == "disabled" and "ALLOWED_PLUGINS" in p.errors[0]
    assert by_name(registry, "busi").status == "loaded"


@pytest.mark.slow
def test_cli_and_api_and_start_page_show_plugins(third_party, app_config):
    result = run_cli("plugins", "--json", env={"BUSI_WEB_INSTANCE_PATH": app_config["INSTANCE_PATH"]})
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert listed["sample"]["version"] == "1.2.3" and listed["sample"]["status"] == "loaded"
    assert listed["broken_import"]["status"] == "failed" and listed["broken_import"]["errors"]

    text = run_cli("plugins", env={"BUSI_WEB_INSTANCE_PATH": app_config["INSTANCE_PATH"]})
    assert "broken_hook" in text.stdout and "exploded" in text.stdout
    # Any command says it in one line per broken plugin, not with a traceback.
    other = run_cli("runs", env={"BUSI_WEB_INSTANCE_PATH": app_config["INSTANCE_PATH"]})
    assert other.returncode == 0 and "Traceback" not in other.stderr, other.stderr
    warnings = [line for line in other.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(line.startswith("busi-web: plugin broken_") for line in warnings), warnings

    from busi_web import create_app

    client = make_user_client(create_app(app_config), "admin", "amber-otter-42", "admin")
    api = client.get("/api/plugins")
    assert api.status_code == 200
    names = {p["name"]: p["status"] for p in api.get_json()["plugins"]}
    assert names["sample"] == "loaded" and names["broken_hook"] == "failed"
    page = client.get("/").get_data(as_text=True)
    assert "busi-web-sample-plugin" in page and "the broken plugin&#39;s hook exploded" in page


def test_startup_hook_runs_and_its_failure_is_reported(app_config):
    from busi_web import create_app, hookimpl

    class GoodPlugin:
        @hookimpl
        def startup(self, app):
            app.config["SEEN_BY_PLUGIN"] = True

    class BadPlugin:
        @hookimpl
        def startup(self, app):
            raise RuntimeError("startup went wrong")

    app = create_app(app_config, plugins=[GoodPlugin(), BadPlugin()])
    assert app.config["SEEN_BY_PLUGIN"] is True
    bad = next(p for p in app.extensions["busi_web"].registry.plugins if p.name == "BadPlugin")
    assert bad.status == "failed" and "startup went wrong" in bad.errors[0]


def test_unknown_names_list_what_is_available():
    registry = load_plugins()
    with pytest.raises(UnknownPlugin) as info:
        registry.backbone("resnet51")
    assert "unknown backbone 'resnet51'" in str(info.value) and "resnet50_cbam" in str(info.value)


def test_a_plugin_object_registered_directly_adds_and_removes_cleanly():
    from busi_web import hookimpl
    from busi_web.specs import ExplainerSpec

    class Throwaway:
        @hookimpl
        def register_explainers(self):
            return [ExplainerSpec(name="throwaway", title="T", description="d", factory=object)]

    registry = PluginRegistry().load_entry_points()
    info = registry.register(Throwaway(), None)
    assert info.status == "loaded" and "throwaway" in registry.explainers
    registry.unregister(info.name)
    assert "throwaway" not in registry.explainers


def test_wrong_return_types_are_reported():
    from busi_web import hookimpl

    class WrongType:
        @hookimpl
        def register_datasets(self):
            return "phantom"

    class WrongItems:
        @hookimpl
        def register_backbones(self):
            return [object()]

    registry = PluginRegistry()
    a = registry.register(WrongType(), None)
    b = registry.register(WrongItems(), None)
    assert a.status == "failed" and "must return a list of DatasetSpec" in a.errors[0]
    assert b.status == "failed" and "not a BackboneSpec" in b.errors[0]


def test_every_hook_has_a_test():
    hooks = {name for name in dir(hookspecs) if name.startswith(("register_", "startup"))}
    tested = {
        "register_backbones": test_pip_install_alone_adds_a_backbone_an_explainer_and_a_dataset,
        "register_explainers": test_a_plugin_object_registered_directly_adds_and_removes_cleanly,
        "register_datasets": test_broken_plugins_are_reported_and_skipped,
        "startup": test_startup_hook_runs_and_its_failure_is_reported,
    }
    assert hooks == set(tested)


@pytest.mark.slow
def test_an_explainer_that_fails_is_one_line_naming_its_plugin_in_the_cli(third_party, tmp_path):
    from busi_web.store import JobStore
    from tests.helpers import finished_run, image_bytes

    instance = tmp_path / "instance"
    finished_run(JobStore(instance / "busi.db", instance / "runs"), promote=True)
    (tmp_path / "scan.png").write_bytes(image_bytes(hw=(40, 40)))
    out = run_cli("predict", str(tmp_path / "scan.png"), "--explainer", "broken_explainer", "--out",
                  str(tmp_path / "maps"), env={"BUSI_WEB_INSTANCE_PATH": str(instance)})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    # The plugin, the spec, and the line in the plugin's own file.
    assert ("plugin 'broken_explainer' failed in explainer 'broken_explainer' at " in out.stderr
            and "busi_broken_plugin/bad_explainer.py:9: ZeroDivisionError" in out.stderr), out.stderr
