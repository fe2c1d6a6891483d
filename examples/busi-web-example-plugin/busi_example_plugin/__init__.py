"""An example busi-web plugin: one module per thing it adds, and the hooks here.

The entry point ``example = "busi_example_plugin"`` (group ``busi_web``) names
this module; busi-web calls the three ``register_*`` hooks once at start.
"""

from __future__ import annotations

from busi_web import hookimpl
from busi_web.specs import BackboneSpec, DatasetSpec, ExplainerSpec, Param

from .backbone import build_mobilenet_v3
from .dataset import CsvListDataset
from .explainers import EigenCAM, GradientTimesInput

# The busi-web plugin contract this plugin was written for: busi-web refuses to load it, with a message, under a
# busi-web whose contract has another major version.
BUSI_WEB_CONTRACT = "1.0"


@hookimpl
def register_backbones() -> list[BackboneSpec]:
    return [BackboneSpec(
        name="mobilenet_v3_small",
        title="MobileNetV3-Small",
        description="torchvision's MobileNetV3-Small, trained from scratch: small and fast on a CPU.",
        factory=build_mobilenet_v3,
        params=(Param("dropout", "float", 0.2, "Dropout before the last layer.", minimum=0.0, maximum=0.9),),
        target_layer="features",  # the last block of the feature extractor: where the maps are made
    )]


@hookimpl
def register_explainers() -> list[ExplainerSpec]:
    return [
        ExplainerSpec(
            name="eigencam", title="EigenCAM",
            description="The first principal component of the target layer's activations: no gradient, and not "
                        "class-specific (every class gets the same map).",
            factory=EigenCAM,
            params=(Param("center", "bool", True, "Subtract each channel's mean before the decomposition."),),
        ),
        ExplainerSpec(
            name="grad_x_input", title="Gradient x input",
            description="The class score's gradient with respect to each pixel, times the pixel: fine-grained, "
                        "often noisy.",
            factory=GradientTimesInput,
            params=(Param("absolute", "bool", True, "Show the magnitude (else only what raised the score)."),),
        ),
    ]


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [DatasetSpec(
        name="csvlist",
        title="Images listed in a CSV file",
        description="A CSV file in the data folder names each image, its class and optionally its lesion mask "
                    "(columns path,label[,mask]; paths relative to the folder).",
        factory=CsvListDataset,
        params=(Param("file", "str", "labels.csv", "The CSV file, relative to the data folder."),),
        modality="ultrasound",
    )]
