"""The segmenting backbone: its contract, the crop of its second look, the pooled layer CAM explains, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from busi_web_plugins.segmenting import MIN_CROP, LesionPooling, build_segmenting_resnet, lesion_boxes, square_box

from busi_web.evaluation.segmentation import OutlineTally, dice_at
from busi_web.training.aids import segmentation_loss
from busi_web.training.loop import Engine, build_optimizer
from busi_web.training.params import validate_train_params
from tests.helpers import blob_batch

SMALL = {"look_size": 32, "crop_size": 32}


def small(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenting_resnet(**{**SMALL, **kw}).eval()


def test_the_spec_declares_that_it_segments_and_the_core_lists_it(registry):
    spec = registry.backbone("segmenting_resnet")
    assert spec.segments and spec.target_layer == "pooling"
    assert spec.to_dict()["segments"] is True
    assert registry.backbone("resnet18").to_dict()["segments"] is False
    assert registry.owner_of("backbones", "segmenting_resnet") == "segmenting"  # a built-in through the entry point


@pytest.mark.parametrize("kw", [{}, {"second_look": False}, {"encoder": "resnet50_cbam", "look_size": 0}])
def test_forward_gives_logits_and_segment_the_lesion_map_of_the_first_look(kw):
    model = small(**kw)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, lesion = model.segment(x)
        assert torch.allclose(model(x), logits)
    assert logits.shape == (2, 3)
    side = 64 if kw.get("look_size") == 0 else 32
    assert lesion.shape == (2, 1, side, side)
    assert model.lesion_layer == "lesion_head" and model.target_layer == "pooling"


def test_lesion_layers_are_refused_for_a_model_that_outlines_lesions(registry):
    from busi_web.specs import InvalidParameters
    from busi_web.training.params import prepare_run_params

    with pytest.raises(InvalidParameters, match="learns its own lesion map"):
        prepare_run_params(registry, "segmenting_resnet", "phantom", train={"input_size": 64, "resize": 64,
                                                                            "lesion_loss": 1, "lesion_layers": "x"},
                           backbone_params=SMALL, dataset_params={"size": 64, "per_class": 4})


def test_one_channel_inputs_and_bad_parameters():
    model = small(in_channels=1)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="encoder"):
        build_segmenting_resnet(encoder="vgg")
    with pytest.raises(ValueError, match="lesion_threshold"):
        build_segmenting_resnet(lesion_threshold=1.0)


def test_the_second_look_crops_a_square_around_the_lesion_or_takes_the_whole_image():
    prob = np.zeros((3, 40, 40), np.float32)
    prob[0, 10:20, 24:30] = 0.9  # a lesion 6 wide, 10 tall
    prob[1, 2:4, 2:4] = 0.3  # below the threshold: no lesion
    prob[2, 5:9, 5:9] = 0.6
    prob[2, 30:34, 30:34] = 0.95  # two regions: the crop goes to the one holding the peak
    boxes = lesion_boxes(prob, 0.5, 0.25)
    x0, y0, x1, y1 = boxes[0]
    assert x1 - x0 == pytest.approx(y1 - y0)  # square
    assert x0 <= 24 / 40 and x1 >= 30 / 40 and y0 <= 10 / 40 and y1 >= 20 / 40  # holds the lesion...
    assert x1 - x0 == pytest.approx(10 / 40 * 1.5)  # ...with a quarter of its longer side on each side
    assert boxes[1].tolist() == [0, 0, 1, 1]
    assert boxes[2][0] >= 0.5 and boxes[2][1] >= 0.5
    # Small lesions get at least MIN_CROP of the image; boxes stay inside it.
    tiny = square_box(0.98, 0.98, 1.0, 1.0, 0.25)
    assert tiny[2] - tiny[0] == pytest.approx(MIN_CROP) and tiny[2] == pytest.approx(1.0)


def test_training_crops_take_the_true_lesion_while_inference_uses_the_prediction():
    model = small().train()
    masks = torch.zeros(2, 64, 64)
    masks[0, 40:56, 4:20] = 1.0
    has = torch.tensor([True, False])
    prob = torch.zeros(2, 1, 32, 32)
    boxes = model._boxes(prob, (masks, has)).numpy()
    assert boxes[0][0] < 4 / 64 + 0.1 and boxes[0][2] > 20 / 64 and boxes[0][3] > 56 / 64 - 0.01
    assert boxes[1].tolist() == [0, 0, 1, 1]  # no lesion in its mask and none predicted: the whole image
    model.eval()
    assert model._boxes(prob, (masks, has)).numpy()[0].tolist() == [0, 0, 1, 1]


def test_the_pooled_layer_averages_to_the_features_inside_around_and_the_second_looks_vector():
    feats = torch.rand(1, 4, 8, 8)
    prob = torch.zeros(1, 1, 8, 8)
    prob[0, 0, 2:4, 2:4] = 1.0
    crop = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    pooled = LesionPooling()(feats, prob, boxes, crop).mean((2, 3))[0]
    assert torch.allclose(pooled[:4], feats.mean((2, 3))[0])
    inside = feats[0, :, 2:4, 2:4].sum((1, 2)) / (4 + 1)  # the weighted mean, one cell added to the weights
    assert torch.allclose(pooled[4:8], inside, atol=1e-6)
    assert torch.allclose(pooled[12:], crop[0])
    # The crop's vector sits where the crop was: only the lower right quarter of the map carries it.
    spread = LesionPooling()(feats, prob, boxes, crop)[0, 12]
    assert spread[:4].abs().sum() == 0 and spread[4:, 4:].min() > 0


def test_every_cam_explainer_works_on_it_and_cam_equals_gradcam(registry):
    model = small(look_size=0, crop_size=16)
    x = torch.randn(2, 3, 32, 32)
    maps = {}
    for name in ("gradcam", "gradcampp", "cam", "layercam", "hirescam", "scorecam"):
        spec = registry.explainer(name)
        params = {"batch_size": 256} if name == "scorecam" else {}
        result = spec.factory(**spec.validate(params)).explain(model, x[:1] if name == "scorecam" else x, None,
                                                               "pooling")
        assert result.maps.shape[-2:] == (32, 32) and torch.isfinite(result.maps).all(), name
        maps[name] = result.maps
    assert torch.allclose(maps["cam"], maps["gradcam"], atol=1e-4)


def test_the_outline_loss_is_dice_plus_bce_and_ignores_images_without_masks():
    target = torch.zeros(2, 16, 16)
    target[0, 4:12, 4:12] = 1.0
    right = (target[:, None] * 2 - 1) * 12  # confident and right
    wrong = -right
    has = torch.tensor([True, True])
    assert segmentation_loss(right, target, has) < 0.01 < 1.0 < segmentation_loss(wrong, target, has)
    none = segmentation_loss(wrong.requires_grad_(), target, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad
    # A normal image's empty mask asks for an empty map: a map of "lesion everywhere" costs.
    assert segmentation_loss(torch.full((1, 1, 16, 16), 5.0), torch.zeros(1, 16, 16), torch.tensor([True])) > 1.0


def test_training_with_the_outline_loss_learns_to_outline_blobs():
    x, masks = blob_batch(seed=4, n=16, size=32)
    x = x.repeat(1, 3, 1, 1)
    y = torch.zeros(16, dtype=torch.long)
    model = build_segmenting_resnet(look_size=0, crop_size=32, second_look=False)
    p = validate_train_params({"lr": 3e-3, "optimizer": "adamw"})
    engine = Engine(model, build_optimizer(model, p), torch.nn.CrossEntropyLoss(), torch.device("cpu"),
                    segment_loss=1.0)
    batch = [(x, y, masks, torch.ones(16, dtype=torch.bool))]
    torch.manual_seed(0)
    first = engine.train_epoch(batch).loss
    for _ in range(15):
        last = engine.train_epoch(batch).loss
    assert last < first / 2
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model.segment(x)[1])[:, 0].numpy()
    dice = np.mean([dice_at(p, m.numpy()) for p, m in zip(prob, masks, strict=True)])
    assert dice > 0.5, dice
    with pytest.raises(ValueError, match="segmenting model"):
        Engine(torch.nn.Linear(2, 2), build_optimizer(model, p), torch.nn.CrossEntropyLoss(), torch.device("cpu"),
               segment_loss=1.0)


def test_the_outline_tally_scores_lesions_and_counts_false_lesions_on_normals():
    tally = OutlineTally(threshold=0.5)
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True
    half = np.zeros((10, 10), np.float32)
    half[2:6, 2:4] = 0.9  # half the lesion: Dice 2*8/(8+16), IoU 8/16, peak inside
    tally.add("a", half, True, mask)
    elsewhere = np.zeros((10, 10), np.float32)
    elsewhere[8, 8] = 0.9
    tally.add("b", elsewhere, False, mask)
    tally.add("n1", np.zeros((10, 10), np.float32), False, np.zeros((10, 10), bool))
    tally.add("n2", elsewhere, True, np.zeros((10, 10), bool), confident=False)
    tally.add("unknown", half, True, None)  # no mask file: counts for neither
    s = tally.summary()
    assert (s["n_lesion"], s["n_normal"]) == (2, 2)
    assert s["dice"] == pytest.approx((2 * 8 / 24 + 0.0) / 2)
    assert s["iou"] == pytest.approx(0.25) and s["pointing"] == 0.5 and s["found"] == 0.5
    assert s["false_lesion_rate"] == 0.5 and s["false_confident_rate"] == 0.0


def test_a_dataset_without_masks_trains_the_classifier_alone(registry, tmp_path):
    from busi_web.specs import InvalidParameters
    from busi_web.store import JobStore
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training
    from tests.helpers import make_image_folder

    root = make_image_folder(tmp_path / "folder", {"benign": 8, "malignant": 8, "normal": 8})
    train = {"epochs": 1, "batch_size": 8, "input_size": 32, "resize": 32, "device": "cpu", "workers": 0,
             "val_frac": 0.2, "test_frac": 0.2}
    with pytest.raises(InvalidParameters, match="no lesion masks"):
        prepare_run_params(registry, "segmenting_resnet", "imagefolder", train={**train, "lesion_loss": 1},
                           backbone_params={"look_size": 0, "crop_size": 32}, data_dir=str(root))
    params = prepare_run_params(registry, "segmenting_resnet", "imagefolder", train=train,
                                backbone_params={"look_size": 0, "crop_size": 32}, data_dir=str(root))
    store = JobStore(tmp_path / "busi.db", tmp_path / "runs")
    run = store.create_run("segmenting_resnet", "imagefolder", params, data_dir=str(root))
    done = run_training(store, run["id"], registry)
    assert done["status"] == "finished", done["error"]
    log = (tmp_path / "runs").glob("*/training_log.txt")
    assert "its outline is not trained (the classifier still is)" in next(log).read_text()
