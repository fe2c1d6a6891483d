"""busi_web.testing: a plugin's own tests register it without installing it, and see what a user would see."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busi_web import hookimpl
from busi_web.evaluation.evaluate import evaluate_run
from busi_web.specs import BackboneSpec, ExplainerSpec, Param
from busi_web.testing import info_of, make_app, registry_with
from tests.helpers import finished_run, image_bytes, make_user_client, upload


class Misspelled:
    """A plugin whose hook name has a typo: refused at load, not silently ignored."""

    @hookimpl
    def register_backbone(self):
        return []


class PlainMaps:
    """An explainer that returns only a (B, h, w) map of any range: the core adds the rest."""

    @hookimpl
    def register_explainers(self):
        return [ExplainerSpec(name="corner", title="Corner", description="A map that is hot in one corner.",
                              factory=Corner, params=(Param("scale", "float", 5.0, minimum=0.1),))]


class Corner:
    def __init__(self, scale: float):
        self.scale = scale

    def explain(self, model, images, targets, target_layer):
        maps = torch.zeros(images.shape[0], 4, 4)
        maps[:, 0, 0] = self.scale
        return maps


class Crashing:
    """An explainer with a bug: every call raises."""

    @hookimpl
    def register_explainers(self):
        return [ExplainerSpec(name="crashing", title="Crashing", description="Always fails.", factory=Boom)]


class Boom:
    def explain(self, model, images, targets, target_layer):
        raise TypeError("unsupported operand in the plugin's own code")


def test_a_misspelled_hook_is_refused_naming_the_hooks_there_are():
    registry = registry_with(Misspelled())
    info = info_of(registry, Misspelled())
    assert info.status == "failed" and "register_backbone" in info.errors[0] and "register_backbones" in info.errors[0]


def test_plain_maps_get_probabilities_and_the_usual_scaling(tmp_path):
    app = make_app(tmp_path / "instance", PlainMaps())
    store = app.extensions["busi_web"].store
    finished_run(store, promote=True)
    client = make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    r = client.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "a.png"), explainer="corner"))
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    assert result["explainer"] == "corner" and result["heatmap_png"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    predictor = app.extensions["busi_web"].predictor()
    heat = predictor.predict(np.zeros((40, 40, 3), np.uint8), explainer="corner").heatmap
    row, col = np.unravel_index(int(heat.argmax()), heat.shape)
    assert heat.max() == pytest.approx(1.0) and heat.min() == 0.0 and row < 20 and col < 20  # the hot corner


def test_an_explainer_that_raises_is_named_in_the_answer_and_skipped_by_evaluate(tmp_path):
    app = make_app(tmp_path / "instance", Crashing())
    services = app.extensions["busi_web"]
    run = finished_run(services.store, promote=True)
    client = make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    r = client.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "a.png"), explainer="crashing"))
    assert r.status_code == 500
    body = r.get_json()
    assert "plugin 'Crashing'" in body["error"] and "TypeError" in body["error"] and body["error_id"]

    report = evaluate_run(run["run_dir"], None, "phantom", registry=services.registry,
                          explainers=["crashing", "gradcam"], dataset_params={"size": 40, "per_class": 3, "seed": 0},
                          out_dir=tmp_path / "report")
    assert "crashing" in report["skipped"] and "TypeError" in report["skipped"]["crashing"]
    assert report["classification"]["n"] == 9 and report["mapped_images"]["gradcam"] == 9
    assert "crashing" in (tmp_path / "report" / "report.md").read_text()


class SevenOutputs:
    """A backbone whose factory ignores num_classes: refused when the run is submitted, not when it starts."""

    @hookimpl
    def register_backbones(self):
        def build(num_classes, in_channels):
            return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, 7))

        return [BackboneSpec(name="seven", title="Seven", description="Always seven logits.", factory=build,
                             target_layer="0")]


def test_a_backbone_with_the_wrong_number_of_outputs_is_refused_before_the_run_exists(tmp_path):
    app = make_app(tmp_path / "instance", SevenOutputs())
    admin = make_user_client(app, "admin", "amber-otter-42", "admin")
    r = admin.post("/api/runs", json={"backbone": "seven", "dataset": "phantom",
                                      "train": {"epochs": 1, "input_size": 32, "resize": 36},
                                      "dataset_params": {"size": 40, "per_class": 4}})
    assert r.status_code == 400
    body = r.get_json()
    assert "(1, 7)" in body["error"] and "one logit per class, (1, 3)" in body["error"] and "backbone" in body["fields"]
    assert app.extensions["busi_web"].store.count_runs() == 0
