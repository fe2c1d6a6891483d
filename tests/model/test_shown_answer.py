"""What a clinician is shown: no class for an image unlike the training images, and a lesion's sizes and
descriptors only when the answer is a lesion and its outline is confident."""

from __future__ import annotations

import numpy as np

from busi_web.explain.lesion import find_lesion
from busi_web.model.prediction import Prediction
from busi_web.model.shown import WITHHELD


def _lesion_map(strength: float) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return np.where((yy - 30) ** 2 + (xx - 34) ** 2 <= 100, strength, 0.05).astype(np.float32)


def _green(picture) -> int:
    rgb = np.asarray(picture.convert("RGB"), dtype=int)
    return int(((rgb[..., 1] > 200) & (rgb[..., 0] < 60)).sum())


def _prediction(label: str, strength: float = 0.95, ood: bool = False) -> Prediction:
    probs = {"benign": 0.1, "malignant": 0.1, "normal": 0.1}
    probs[label] = 0.8
    lesion_map = _lesion_map(strength)
    return Prediction(label=label, index=list(probs).index(label), probabilities=probs, lesion_map=lesion_map,
                      lesion=find_lesion(lesion_map, 0.5), image=np.zeros((64, 64), np.uint8),
                      ood={"score": 9.0, "threshold": 1.0, "out_of_distribution": ood},
                      operating={"suspicious": True, "threshold": 0.3, "p_malignant": 0.8, "text": "x"})


def test_a_lesion_answer_with_a_confident_outline_shows_its_sizes_and_descriptors():
    info = _prediction("malignant").lesion_info((0.1, 0.1))
    assert info["found"] and info["measurements"]["long_axis_mm"] > 0 and set(info["descriptors"]) == {
        "shape", "orientation", "margin"}


def test_an_outline_on_an_image_called_normal_is_not_described():
    pred = _prediction("normal")
    info = pred.lesion_info((0.1, 0.1))
    assert info == {"found": False, "suppressed": "the answer is normal", "peak": info["peak"],
                    "statement": "no lesion outlined: the answer is normal"}
    assert _green(pred.picture()) == 0 and _green(_prediction("malignant").picture()) > 20  # no outline drawn


def test_a_low_confidence_outline_is_not_described():
    pred = _prediction("benign", strength=0.52)
    assert pred.lesion is not None and pred.lesion.low_confidence
    assert pred.lesion_info()["statement"] == "no lesion outlined: the outline is of low confidence"


def test_an_image_unlike_the_training_images_gets_no_class():
    pred = _prediction("malignant", ood=True)
    assert pred.withheld and pred.shown_label is None
    out = pred.to_dict()
    assert out["label"] is None and out["withheld"] == WITHHELD and out["operating_point"] is None
    assert out["probabilities"]["malignant"] == 0.8  # still there, for whoever unfolds them
    assert out["lesion"]["statement"] == "no lesion outlined: the image is unlike the training images"
    assert not _prediction("malignant").withheld
