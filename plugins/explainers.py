"""Built-in explainers: the CAM family (Grad-CAM, Grad-CAM++, CAM, LayerCAM, HiResCAM, Score-CAM).

Each spec's factory returns a :class:`busi_web.explain.base.CamExplainer`; its
``explain(model, images, targets, target_layer)`` gives the class
probabilities and ``(B, H, W)`` maps in [0, 1] from one forward pass (Score-CAM
adds one masked forward per channel). The maths is in :mod:`busi_web.explain.methods`.
"""

from __future__ import annotations

from busi_web.explain.methods import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from busi_web.hookspecs import hookimpl
from busi_web.specs import ExplainerSpec, Param

__all__ = ["register_explainers"]


@hookimpl
def register_explainers() -> list[ExplainerSpec]:
    return [
        ExplainerSpec(
            name="gradcam", title="Grad-CAM",
            description="Feature channels weighted by the average gradient of the class score. The standard "
                        "choice: fast (one forward, a short backward from the logits) and robust.",
            factory=GradCAM,
        ),
        ExplainerSpec(
            name="gradcampp", title="Grad-CAM++",
            description="Like Grad-CAM but with per-pixel weights on positive gradients; tends to cover "
                        "several lesions or a whole lesion rather than its most telling part.",
            factory=GradCAMPlusPlus,
        ),
        ExplainerSpec(
            name="cam", title="CAM",
            description="Class activation mapping: the classifier's own weights for the class, no gradient. "
                        "Only for the last feature layer (global average pooling, then the final layer); "
                        "there it equals Grad-CAM.",
            factory=CAM,
        ),
        ExplainerSpec(
            name="layercam", title="LayerCAM",
            description="Each position weighted by its own positive gradient: finer detail than Grad-CAM, "
                        "also usable on earlier layers.",
            factory=LayerCAM,
        ),
        ExplainerSpec(
            name="hirescam", title="HiResCAM",
            description="Gradient times activation at each position: shows exactly which locations raised "
                        "the class score when the model ends in average pooling and one linear layer.",
            factory=HiResCAM,
        ),
        ExplainerSpec(
            name="scorecam", title="Score-CAM",
            description="Gradient-free: each channel weighted by the class score of the image masked by it. "
                        "Needs one extra forward pass per channel (2048 for ResNet50): slow on a CPU (about 15 s "
                        "per image for ResNet18). Its map can light the image's border: the mask hides tissue as "
                        "mid-gray (the normalised image's zero), not as black, and channels that answer to the "
                        "image's edge then score high on such nearly blank inputs. Read it beside another CAM.",
            factory=ScoreCAM,
            params=(Param("batch_size", "int", 32, "masked images per forward pass; lower it to save memory",
                          minimum=1, maximum=1024, advanced=True),),
        ),
    ]
