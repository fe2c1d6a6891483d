"""Plugin contract 1.0: its version and public names (checked against docs/plugins.md), moved names, and every
mistake a plugin author makes caught at load or at submission, named, and on one line."""

from __future__ import annotations

import dataclasses
import importlib
import re
import warnings

import pytest
import torch
from torch import nn

from busi_web import hookimpl, hookspecs
from busi_web.specs import CONTRACT_VERSION, MOVED, PUBLIC_API, BackboneSpec, DatasetSpec, ExplainerSpec, Param, Spec
from busi_web.testing import client_as, info_of, isolated_registry, make_app, registry_with
from tests.helpers import ROOT, finished_run, image_bytes, run_cli, upload

DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
CHANGELOG = (ROOT / "docs" / "CHANGELOG.md").read_text(encoding="utf-8")


# -- the version, the public names and their documentation -------------------------------------------------------
def test_every_public_name_imports_from_its_module_and_the_docs_list_exactly_those():
    for name, module in PUBLIC_API.items():
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    table = dict(re.findall(r"^\| `(\w+)` \| `([\w.]+)` \|", DOC, re.M))
    assert table == PUBLIC_API, "docs/plugins.md's table of public names differs from busi_web.specs.PUBLIC_API"
    assert f"plugin contract {CONTRACT_VERSION}" in DOC and f"`\"{CONTRACT_VERSION}\"`" in DOC


def test_the_docs_cover_every_hook_and_every_field_of_each_spec():
    hooks = [n for n in dir(hookspecs) if callable(getattr(hookspecs, n)) and hasattr(getattr(hookspecs, n),
                                                                                      "busi_web_spec")]
    assert set(hooks) == {"register_backbones", "register_explainers", "register_datasets", "startup"}
    for hook in hooks:
        assert f"`{hook}(" in DOC, hook
    for spec in (Spec, BackboneSpec, ExplainerSpec, DatasetSpec, Param):
        for f in dataclasses.fields(spec):
            if f.init:
                assert f"`{f.name}`" in DOC, f"{spec.__name__}.{f.name} is not in docs/plugins.md"
    for attribute in ("needs_gradients", "needs_head", "raw_maps(self, inp)", "channels", "group",
                      "official_split()", "BUSI_WEB_CONTRACT", "busi_registry", "busi_train_tiny"):
        assert attribute in DOC, attribute


def test_the_changelog_records_this_contract_and_every_moved_name():
    assert f"## Plugin contract {CONTRACT_VERSION}" in CHANGELOG
    for (old, name), new in MOVED.items():
        assert f"`{old}.{name}`" in CHANGELOG and f"`{new}`" in CHANGELOG, name


@pytest.mark.parametrize(("old", "name"), sorted(MOVED))
def test_a_moved_name_still_imports_with_a_warning_that_says_its_new_place(old, name):
    new = MOVED[(old, name)]
    with pytest.warns(DeprecationWarning, match=re.escape(f"import it from {new}")):
        moved = getattr(importlib.import_module(old), name)
    assert moved is getattr(importlib.import_module(new), name)


def test_a_name_that_never_existed_is_still_an_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            importlib.import_module("busi_web.explain").NoSuchThing  # noqa: B018


# -- mistakes caught at load --------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, **_):
        super().__init__()
        self.features = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def plugin(**hooks):
    """A plugin object with the given hook functions (name -> function of no argument)."""
    cls = type("P", (), {name: hookimpl(staticmethod(fn)) for name, fn in hooks.items()})
    return cls()


def backbone(name="b", factory=Tiny, target_layer="features", params=()):
    return BackboneSpec(name=name, title=name, description="d", factory=factory, target_layer=target_layer,
                        params=params)


class FutureContract:
    BUSI_WEB_CONTRACT = "2.0"

    @hookimpl
    def register_backbones(self):
        return [backbone("from_the_future")]


class ThisContract:
    BUSI_WEB_CONTRACT = CONTRACT_VERSION

    @hookimpl
    def register_backbones(self):
        return [backbone("of_today")]


def test_a_plugin_for_another_major_contract_is_refused_naming_both_versions():
    registry = registry_with(FutureContract(), ThisContract(), allowed=[])
    future = info_of(registry, FutureContract())
    assert future.status == "failed" and "contract 2.0" in future.errors[0] and f"contract {CONTRACT_VERSION}" in \
        future.errors[0] and "CHANGELOG" in future.errors[0]
    assert "from_the_future" not in registry.backbones
    assert "of_today" in registry.backbones
    assert info_of(registry, ThisContract()).contract == CONTRACT_VERSION


@pytest.mark.parametrize(("params", "said"), [
    ((Param("mode", "choice", "fast", choices=("slow", "exact")),), "its default 'fast' is refused"),
    ((Param("width", "int", 2, minimum=4),), "its default 2 is refused"),
    ((Param("w", "int", 8), Param("w", "int", 16)), "parameter 'w' is declared twice"),
    ((Param("num_classes", "int", 3),), "parameter 'num_classes' is passed by busi-web itself"),
])
def test_a_spec_with_a_bad_parameter_is_refused_at_load(params, said):
    bad = plugin(register_backbones=lambda: [backbone("bad", params=params)])
    registry = isolated_registry(bad)
    info = info_of(registry, bad)
    assert info.status == "failed" and said in " ".join(info.errors), info.errors
    assert "bad" not in registry.backbones


def test_a_hook_with_the_wrong_arguments_is_refused_on_one_line_with_its_file_and_line():
    class WrongArguments:
        @hookimpl
        def register_backbones(self, extra):
            return []

    registry = isolated_registry(WrongArguments())
    info = info_of(registry, WrongArguments())
    assert info.status == "failed" and len(info.errors) == 1 and "\n" not in info.errors[0]
    assert "extra" in info.errors[0] and "test_contract.py:" in info.errors[0], info.errors


def test_a_hook_that_raises_is_refused_with_its_file_and_line():
    def explode():
        raise KeyError("the registry of this hospital")

    bad = plugin(register_datasets=explode)
    info = info_of(isolated_registry(bad), bad)
    assert info.status == "failed" and "test_contract.py:" in info.errors[0] and "KeyError" in info.errors[0]


def test_a_typo_in_allowed_plugins_is_said_on_the_page_the_api_and_the_command_line(tmp_path, caplog):
    app = make_app(tmp_path / "instance", isolated=False, ALLOWED_PLUGINS=["hopsital"])
    assert "'hopsital'" in caplog.text and "typo" in caplog.text
    admin = client_as(app, "admin")
    assert admin.get("/api/plugins").get_json()["allowed_unknown"] == ["hopsital"]
    assert admin.get("/api/plugins").get_json()["contract_version"] == CONTRACT_VERSION
    page = admin.get("/plugins").get_data(as_text=True)
    assert "<code>hopsital</code>, which" in page and "no installed plugin is called" in page
    done = run_cli("plugins", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance"),
                                   "BUSI_WEB_ALLOWED_PLUGINS": "hopsital"})
    assert done.returncode == 0 and "ALLOWED_PLUGINS names 'hopsital'" in done.stdout


# -- mistakes caught at submission --------------------------------------------------------------------------------
def _factory_that_raises(num_classes, in_channels):
    raise RuntimeError("the weights file of this hospital is missing")


class Headless(nn.Module):
    """A model with no module called what its spec names."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4, num_classes))

    def forward(self, x):
        return self.body(x)


def _submit(app, backbone_name):
    admin = client_as(app, "admin")
    return admin.post("/api/runs", json={"backbone": backbone_name, "dataset": "phantom",
                                         "dataset_params": {"size": 40, "per_class": 8},
                                         "train": {"epochs": 1, "input_size": 32, "resize": 36}})


@pytest.mark.parametrize(("spec", "said"), [
    (backbone("raising", factory=_factory_that_raises),
     ["plugin 'P'", "backbone 'raising'", "test_contract.py:", "the weights file of this hospital is missing",
      "nothing was queued"]),
    (backbone("headless", factory=Headless, target_layer="features"),
     ["plugin 'P'", "backbone 'headless'", "no usable target layer", "target_layer"]),
    (backbone("unnamed", factory=Headless, target_layer=""),
     ["plugin 'P'", "backbone 'unnamed'", "no usable target layer"]),
])
def test_a_backbone_that_cannot_train_is_refused_at_submission_naming_the_plugin(tmp_path, spec, said):
    app = make_app(tmp_path / "instance", plugin(register_backbones=lambda: [spec]))
    # An installed plugin would reach the trainer: take the in-process check out of the way to see the others.
    app.extensions["busi_web"].registry.in_process_only = lambda kind, name: False
    answer = _submit(app, spec.name)
    assert answer.status_code == 400, answer.get_json()
    for words in said:
        assert words in answer.get_json()["error"], answer.get_json()["error"]
    assert app.extensions["busi_web"].store.list_runs() == []  # nothing trains for nothing


def test_a_run_on_a_plugin_the_trainer_will_not_have_is_refused(tmp_path):
    app = make_app(tmp_path / "instance", plugin(register_backbones=lambda: [backbone("local_only")]))
    answer = _submit(app, "local_only")
    assert answer.status_code == 400
    assert "registered in this process only" in answer.get_json()["error"]
    assert "train_tiny" in answer.get_json()["error"]
    assert app.extensions["busi_web"].store.list_runs() == []


# -- maps that cannot be shown ---------------------------------------------------------------------------------
class Filled:
    def __init__(self, value: str):
        self.value = float(value)

    def explain(self, model, images, targets, target_layer):
        return torch.full((images.shape[0], 4, 4), self.value)


@pytest.mark.parametrize(("value", "said"), [("nan", "NaN or infinite values"), ("0", "zero everywhere")])
def test_a_nan_or_all_zero_map_gets_a_note_instead_of_a_picture(tmp_path, value, said):
    explainers = plugin(register_explainers=lambda: [ExplainerSpec(
        name="filled", title="Filled", description="A constant map.", factory=Filled,
        params=(Param("value", "str", value),))])
    app = make_app(tmp_path / "instance", explainers)
    finished_run(app.extensions["busi_web"].store, promote=True)
    answer = client_as(app, "clinician").post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "a.png"),
                                                                        explainer="filled"))
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()["results"][0]
    assert result["heatmap_png"] is None and said in result["map_note"] and "filled" in result["map_note"]
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-4


def test_dataset_specs_refuse_a_modality_that_is_not_a_name():
    with pytest.raises(ValueError, match="lower-case name"):
        DatasetSpec(name="d", title="d", description="d", factory=dict, modality="Ultra Sound")
