"""The scan steps: the ultrasound region (found, or named by a DICOM), marks painted over, intensities normalised,
and a model that crops to the scan puts its maps back where the scan is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from busi_web.data.marks import detect_marks
from busi_web.data.preprocess import PreprocessConfig, crop_pixels, paste_map, train_transform
from busi_web.data.scan import ScanSteps, normalise_intensity, prepare_scan, scan_region
from busi_web.dicom.reading import scan_region_of
from busi_web.model.checkpoint import CheckpointMeta
from busi_web.model.predictor import Predictor


def framed_scan(h: int = 300, w: int = 400, box=(60, 40, 340, 260), seed: int = 0) -> np.ndarray:
    """A speckled 'scan' inside a black frame with white text and a caliper cross outside and inside it."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    left, top, right, bottom = box
    img[top:bottom, left:right] = np.clip(rng.normal(110, 35, (bottom - top, right - left)), 20, 235).astype(np.uint8)
    cv2.putText(img, "MAMA ESQUERDA", (5, h - 12), cv2.FONT_HERSHEY_PLAIN, 1.0, 255, 1)
    cv2.putText(img, "GE", (w - 40, 20), cv2.FONT_HERSHEY_PLAIN, 1.2, 255, 1)
    cy, cx = (top + bottom) // 2, (left + right) // 2
    img[cy, cx - 6:cx + 7] = 255
    img[cy - 6:cy + 7, cx] = 255
    return np.repeat(img[..., None], 3, axis=2)


def test_the_scan_region_is_found_inside_a_frame_with_text():
    image = framed_scan()
    left, top, right, bottom = scan_region(image)
    assert abs(left - 60) <= 4 and abs(top - 40) <= 4 and abs(right - 340) <= 4 and abs(bottom - 260) <= 4
    # A scan that fills its image keeps it whole, and so does an image with no convincing region.
    full = framed_scan(box=(0, 0, 400, 300))
    assert scan_region(full) == (0, 0, 400, 300)
    assert scan_region(np.zeros((50, 60), np.uint8)) == (0, 0, 60, 50)


def test_prepare_cuts_image_and_mask_alike_and_a_dicom_region_wins():
    image = framed_scan()
    mask = np.zeros(image.shape[:2], bool)
    mask[100:150, 150:200] = True
    out, cut, box = prepare_scan(image, ScanSteps(crop=True), mask=mask)
    left, top, right, bottom = box
    assert out.shape[:2] == (bottom - top, right - left) and cut.shape == out.shape[:2]
    assert cut.sum() == mask.sum()  # the lesion lies inside the scan: nothing of it is lost
    named, _, named_box = prepare_scan(image, ScanSteps(crop=True), region=(10, 20, 110, 120))
    assert named_box == (10, 20, 110, 120) and named.shape[:2] == (100, 100)
    same, _, whole = prepare_scan(image, ScanSteps())
    assert same is image or np.array_equal(same, image)
    assert whole == (0, 0, 400, 300)


def test_marks_are_painted_over_and_intensities_normalised():
    image = framed_scan()
    before = detect_marks(image)
    assert before.any()
    painted, _, _ = prepare_scan(image, ScanSteps(marks=True))
    assert detect_marks(painted).sum() < before.sum() / 4
    dim = (image // 3).astype(np.uint8)
    stretched = normalise_intensity(dim, "stretch")
    assert np.percentile(stretched, 99) >= 250 and np.percentile(stretched, 1) <= 5
    equalised = normalise_intensity(dim, "equalize")
    assert equalised.shape == dim.shape and equalised.std() > dim.std()
    assert (equalised[..., 0] == equalised[..., 1]).all()  # gray stays gray
    with pytest.raises(ValueError, match="normalise must be one of"):
        ScanSteps(normalise="histogram")


def test_dicom_ultrasound_regions_name_the_scan():
    ds = Dataset()
    strip, bmode = Dataset(), Dataset()
    for r, (x0, y0, x1, y1, fmt) in ((strip, (0, 400, 639, 479, 3)), (bmode, (80, 50, 560, 390, 1))):
        r.RegionSpatialFormat, r.RegionLocationMinX0, r.RegionLocationMinY0 = fmt, x0, y0
        r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
    ds.SequenceOfUltrasoundRegions = [strip, bmode]
    assert scan_region_of(ds, 480, 640) == (80, 50, 561, 391)  # the 2-D tissue region; the Doppler strip is not
    assert scan_region_of(Dataset(), 480, 640) is None


def test_the_geometry_places_the_crop_inside_the_region():
    cfg = PreprocessConfig(input_size=32, resize=32)
    box = (60, 40, 340, 260)
    x0, y0, x1, y1 = crop_pixels((300, 400), cfg, box)
    assert x0 >= 60 and y0 >= 40 and x1 <= 340 and y1 <= 260
    pasted = paste_map(np.ones((4, 4), np.float32), (300, 400), cfg, box)
    assert pasted[:40].sum() == 0 and pasted[:, :60].sum() == 0 and pasted[y0:y1, x0:x1].min() > 0.99


def test_a_model_trained_with_the_crop_maps_onto_the_scan(registry):
    torch.manual_seed(0)
    model = registry.backbone("tiny_cnn").build({}, num_classes=3, in_channels=3)
    meta = CheckpointMeta(backbone="tiny_cnn", classes=["benign", "malignant", "normal"], input_size=32, resize=36,
                          scan={"crop": True, "normalise": "equalize"})
    predictor = Predictor(model, meta, registry)
    image = framed_scan()
    pred = predictor.predict(image, explainer="gradcam")
    left, top, right, bottom = pred.region
    assert left >= 56 and top >= 36 and right <= 344 and bottom <= 264
    assert pred.heatmap.shape == image.shape[:2] and pred.heatmap[:30].max() == 0
    # A region named by the file is used instead of the found one.
    named = predictor.predict_batch([image], explainer=None, regions=[(0, 0, 200, 150)])[0]
    assert named.region[2] <= 200 and named.region[3] <= 150


def test_scanner_augmentation_is_seedable_and_changes_the_look():
    cfg = PreprocessConfig(input_size=32, resize=32)
    image = framed_scan(box=(0, 0, 400, 300))
    plain = train_transform(cfg, hflip=False, rotation=0, crop_scale=1.0)
    varied = train_transform(cfg, hflip=False, rotation=0, crop_scale=1.0, scanner=1.0)
    torch.manual_seed(3)
    a = varied(image)
    torch.manual_seed(3)
    b = varied(image)
    torch.manual_seed(3)
    c = plain(image)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == c.shape
    with pytest.raises(ValueError, match="scanner must be from 0 to 1"):
        train_transform(cfg, scanner=2.0)
