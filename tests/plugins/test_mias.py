"""The ``mias`` dataset, the ``mammo_cnn`` backbone and mammogram regions of interest in the app.

Everything runs on small synthetic MIAS-like folders the tests write: 256 px
"scans" with a bright breast on black and bright blobs as lesions, plus an
Info.txt with the quirks of the real one (header, stray text, rows without
coordinates, several rows for one scan).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from busi_web_plugins.mias import MiasDataset, balance_items, crop_for_model, pair_of, parse_info
from busi_web_plugins.mias_crops import CROP_MEAN, CROP_SD, breast_mask, crop_window, dihedral, mias_to_pixel, roi_crop
from PIL import Image

from busi_web.data.datasets import DatasetError
from busi_web.data.splits import PARTS, split_dataset
from busi_web.plugins import load_plugins
from tests.helpers import make_user_client
from tests.synthetic_data import SIDE, scan, synthetic_mias, write_folder

torch.set_num_threads(1)
INFO_QUIRKS = """REFNUM BG CLASS SEVERITY X Y RADIUS
mdb001 G CIRC B 100 150 20

this line is a stray note from the curator
mdb002 G NORM
mdb003 F CALC M 90 60 8
mdb003 F CALC B 120 200 6
mdb004 D CALC M *NOTE 3*
mdb005 F CIRC B
MDB006 F SPIC M 80 128 15
"""


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    scans = {f"mdb00{i}": scan(i) for i in range(1, 7)}
    scans["mdb001"] = scan(1, [(100, 150, 20)])
    scans["mdb003"] = scan(3, [(90, 60, 8), (120, 200, 6)])
    return write_folder(tmp_path / "all-mias", INFO_QUIRKS, scans, pgm=("mdb003",))


# -- Info.txt and the folder ---------------------------------------------------------------------------------
def test_info_rows_tolerate_header_blank_and_stray_lines_and_missing_coordinates(quirky: Path) -> None:
    rows = parse_info(quirky / "Info.txt")
    assert [r.refnum for r in rows] == ["mdb001", "mdb002", "mdb003", "mdb003", "mdb004", "mdb005", "mdb006"]
    assert (rows[0].abnormality, rows[0].severity, rows[0].x, rows[0].y, rows[0].radius) == ("CIRC", "B", 100, 150, 20)
    assert rows[1].normal and rows[1].severity is None and rows[1].x is None
    assert (rows[4].severity, rows[4].x) == ("M", None)  # *NOTE 3*: malignant, no coordinates
    assert (rows[5].severity, rows[5].x) == ("B", None)
    assert rows[0].line == 2 and rows[2].line == 6


def test_severity_task_keeps_lesions_with_coordinates_and_says_what_it_skipped(quirky: Path) -> None:
    ds = MiasDataset(quirky, task="severity")
    assert ds.classes == ["benign", "malignant"] and ds.channels == 1 and ds.modality == "mammography"
    assert [s.key for s in ds.samples] == ["mdb001#0", "mdb003#0", "mdb003#1", "mdb006#0"]
    assert ds.labels == [0, 1, 0, 1]
    assert Path(ds.samples[1].path).suffix == ".pgm"  # .pgm and .png scans both read
    assert len(ds.skipped) == 2 and any("mdb004" in s and "line 8" in s for s in ds.skipped)
    normal = MiasDataset(quirky, task="abnormality")
    assert normal.classes == ["normal", "abnormal"] and normal.class_counts() == {"normal": 1, "abnormal": 4}
    calc = MiasDataset(quirky, task="severity", classes="calc")
    assert [s.key for s in calc.samples] == ["mdb003#0", "mdb003#1"]
    with pytest.raises(DatasetError, match="unknown abnormality class.*BLOB"):
        MiasDataset(quirky, classes="CALC,BLOB")


def test_bad_folders_name_the_path_and_the_fix(tmp_path: Path, quirky: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere does not exist.*Info\.txt"):
        MiasDataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"empty has no Info\.txt"):
        MiasDataset(empty)
    (empty / "Info.txt").write_text(INFO_QUIRKS)
    with pytest.raises(DatasetError, match=r"holds no scans \(\.pgm or \.png\)"):
        MiasDataset(empty)
    (quirky / "mdb006.png").write_bytes(b"not a png")
    ds = MiasDataset(quirky)
    with pytest.raises(DatasetError, match=r"cannot read image .*mdb006\.png.*replace or remove"):
        ds.load_image(3)
    spec = load_plugins().dataset("mias")
    assert spec.modality == "mammography" and spec.to_dict()["roi"] is True


# -- crops ---------------------------------------------------------------------------------------------------
def test_lesion_crop_is_centred_with_y_measured_from_the_bottom(quirky: Path) -> None:
    assert mias_to_pixel(100, 150, SIDE) == (100, 106)
    ds = MiasDataset(quirky, crop_size=32, intensity="scan")  # the film's grey levels, to find the blob's 250
    crop = ds.load_image(0)  # mdb001: a radius-20 blob at x 100, y 150 (row 106)
    assert crop.shape == (32, 32) and crop.dtype == np.uint8
    assert crop[16, 16] == 250 and crop[12:20, 12:20].min() == 250  # the blob fills the centre
    # Had the Y axis not been flipped, the crop would sit at row 150 and miss the blob.
    assert (crop_window(scan(1, [(100, 150, 20)]), 100, 150, 32) == 250).sum() == 0
    scaled = MiasDataset(quirky, crop_size=32, scale_by_radius=True, intensity="scan").load_image(0)
    assert scaled.shape == (32, 32) and 0 < (scaled >= 240).mean() < (crop >= 240).mean()  # whole lesion in view
    assert (crop_window(np.full((10, 10), 7, np.uint8), 0, 0, 6)[:3, :3] == 0).all()  # black past the edge


def test_normal_crops_lie_inside_the_breast_never_on_the_background(quirky: Path) -> None:
    ds = MiasDataset(quirky, task="abnormality", crop_size=40, normal_crops=6, intensity="scan")
    picture = scan(2)
    mask = breast_mask(picture)
    assert mask[SIDE // 2, 10] and not mask[10, SIDE - 10]
    normals = [i for i, s in enumerate(ds.samples) if s.label == 0]
    assert len(normals) == 6
    centres = {ds.centre(i, picture) for i in normals}
    assert len(centres) > 1  # random places, one per crop
    for i in normals:
        assert ds.load_image(i).min() > 0, f"crop {ds.samples[i].key} touches the black background"
    assert ds.centre(normals[0], picture) == MiasDataset(quirky, "abnormality", crop_size=40,
                                                         normal_crops=6).centre(normals[0], picture)


def test_roi_crop_matches_the_dataset_crop(quirky: Path) -> None:
    ds = MiasDataset(quirky, crop_size=32)  # intensity 'crop', the default
    picture = np.asarray(Image.open(quirky / "mdb001.png"))
    crop, box = roi_crop(picture, 100, 106, 32, intensity="crop")
    assert np.array_equal(crop, ds.load_image(0)) and box == (90, 84, 32)
    assert np.array_equal(crop_for_model(picture, 100, 106, {"crop_size": 32, "intensity": "crop"})[0], crop)
    raw = MiasDataset(quirky, crop_size=32, intensity="scan").load_image(0)
    assert np.array_equal(roi_crop(picture, 100, 106, 32)[0], raw)
    # A checkpoint saved before 'intensity' existed was trained on the film's grey levels: keep feeding it those.
    assert np.array_equal(crop_for_model(picture, 100, 106, {"crop_size": 32})[0], raw)
    rgb = np.repeat(picture[..., None], 3, axis=2)
    assert roi_crop(rgb, 100, 106, 32)[0].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="intensity"):
        roi_crop(picture, 100, 106, 32, intensity="film")
    with pytest.raises(DatasetError, match="intensity"):
        MiasDataset(quirky, intensity="film")


def test_crops_do_not_depend_on_film_exposure(tmp_path: Path) -> None:
    """The same lesion on a dark and on a bright film gives the model the same crop (intensity 'crop').

    On mini-MIAS a crop's overall brightness (exposure, breast density) carries no severity signal, yet a
    small CNN fed the film's grey levels learned it first and scored below chance on held-out women.
    """
    lesion = (100, 150, 12)
    film = scan(1, [lesion]).astype(np.float32)
    info = "REFNUM BG CLASS SEVERITY X Y RADIUS\nmdb001 G CIRC B 100 150 12\nmdb003 G CIRC M 100 150 12\n"
    root = write_folder(tmp_path / "all-mias", info, {"mdb001": (film * 0.55).astype(np.uint8),
                                                       "mdb003": np.clip(film * 1.0 + 20, 0, 255).astype(np.uint8)})
    for scale_by_radius in (False, True):
        raw = MiasDataset(root, crop_size=32, intensity="scan", scale_by_radius=scale_by_radius)
        assert abs(float(raw.load_image(0).mean()) - float(raw.load_image(1).mean())) > 40  # exposures differ
        ds = MiasDataset(root, crop_size=32, jitter=0, scale_by_radius=scale_by_radius)
        dark, bright = ds.load_image(0).astype(int), ds.load_image(1).astype(int)
        assert np.abs(dark - bright).max() <= 3, "the model's input still follows the film's exposure"
        assert abs(dark.mean() - CROP_MEAN) < 2 and abs(dark.std() - CROP_SD) < 4
        assert dark[16, 16] > dark[0, 0]  # the lesion stays brighter than its surroundings
        # Training views are standardised the same way as the evaluation crop.
        assert np.array_equal(ds.training_image(0, 0), ds.load_image(0))
        assert np.array_equal(ds.training_image(1, 5), dihedral(ds.load_image(1), 5))
    flat = MiasDataset(root, crop_size=16, jitter=0)._finish(np.zeros((20, 20), np.uint8))
    assert (flat == int(CROP_MEAN)).all()  # a black patch becomes flat mid-grey, not amplified noise


# -- augmentation and balancing ------------------------------------------------------------------------------
def test_augmentation_gives_each_training_crop_its_8_rotations_and_mirrors(quirky: Path) -> None:
    ds = MiasDataset(quirky, crop_size=32, jitter=0, intensity="scan")  # 'crop' would flatten the blob's texture
    items = ds.training_items([0, 1])
    assert len(items) == 16 and sorted(v for i, v in items if i == 0) == list(range(8))
    base = ds.load_image(0)
    views = [ds.training_image(0, v) for v in range(8)]
    assert np.array_equal(views[0], base)
    assert len({v.tobytes() for v in views}) == 8  # the asymmetric crop differs in every orientation
    assert {dihedral(base, v).tobytes() for v in range(8)} == {v.tobytes() for v in views}
    assert np.array_equal(ds.load_image(0), base)  # evaluation crops stay unaugmented
    plain = MiasDataset(quirky, augment=False, jitter=0)
    assert plain.training_items([0, 1]) == [(0, 0), (1, 0)] and np.array_equal(plain.training_image(0, 0),
                                                                               plain.load_image(0))
    shifted = MiasDataset(quirky, crop_size=32, jitter=3, augment=False)
    torch.manual_seed(0)
    moved = {shifted.training_image(0, 0).tobytes() for _ in range(12)}
    assert len(moved) > 1 and all(len(m) == 32 * 32 for m in moved)


def test_class_and_full_balancing_counts() -> None:
    # Stratum CALC: 3 benign, 1 malignant; CIRC: 2 benign, 0 malignant; SPIC: 0 benign, 2 malignant.
    keys = [("CALC", 0)] * 3 + [("CALC", 1)] + [("CIRC", 0)] * 2 + [("SPIC", 1)] * 2
    items = [(i, 0) for i in range(len(keys))]
    by_class = balance_items(items, keys, "class")
    assert len(by_class) == 10  # CALC malignant topped up from 1 to 3; the others have one label only
    assert [it for it in by_class if it[0] == 3] == [(3, 0), (3, 8), (3, 16)]
    full = balance_items(items, [("", label) for _, label in keys], "full")
    labels = [keys[i][1] for i, _ in full]
    assert labels.count(0) == labels.count(1) == 5 and len(full) == 10
    assert balance_items(items, keys, "none") == items


def test_dataset_balancing_on_top_of_augmentation(quirky: Path) -> None:
    # Samples: 0 mdb001 CIRC benign, 1 mdb003 CALC malignant, 2 mdb003 CALC benign, 3 mdb006 SPIC malignant.
    full = MiasDataset(quirky, balance="full")
    assert len(full.training_items([0, 1, 2, 3])) == 32  # already balanced: 2 x 8 each
    assert len(full.training_items([0, 1, 2])) == 32  # 2 benign x 8; 1 malignant x 8 topped up to 16
    by_class = MiasDataset(quirky, balance="class")
    assert len(by_class.training_items([0, 1, 2])) == 24  # CALC already even; CIRC has no malignant to match
    assert len(by_class.training_items([0, 1, 3])) == 24  # each class holds one severity: nothing to top up


def test_inspect_lists_the_rows_the_dataset_skipped(quirky: Path) -> None:
    from busi_web.data.inspection import format_inspection, inspect_dataset

    report = inspect_dataset(MiasDataset(quirky))
    assert len(report["skipped"]) == 2 and report["total"] == 4 and not report["unreadable"]
    assert "skipped: 2" in format_inspection(report) and "mdb005" in format_inspection(report)


# -- the split -----------------------------------------------------------------------------------------------
def test_pairs_and_lesions_never_straddle_split_parts(tmp_path: Path) -> None:
    assert pair_of("mdb001") == pair_of("mdb002") != pair_of("mdb003") == pair_of("mdb004")
    root = synthetic_mias(tmp_path / "mias", pairs=20)
    ds = MiasDataset(root, task="abnormality", normal_crops=3)
    split = split_dataset(ds, 0.2, 0.2, seed=5)
    where = {}
    for part in PARTS:
        for i in split.part(part):
            s = ds.samples[i]
            assert where.setdefault(s.group, part) == part, f"{s.group} is in {where[s.group]} and {part}"
    assert sorted(split.train + split.val + split.test) == list(range(len(ds)))
    assert all(split.part(p) for p in PARTS)
    doc = split.to_dict()
    assert any({"mdb001#0", "mdb002#n0", "mdb002#n1"} <= set(g) for g in doc["groups"])


# -- the backbone --------------------------------------------------------------------------------------------
def test_mammo_cnn_and_resnet_take_one_channel() -> None:
    reg = load_plugins()
    model = reg.backbone("mammo_cnn").build({}, num_classes=2, in_channels=1).eval()
    names = [type(m).__name__ for m in model.features] + ["Dropout", "Linear", "Dropout", "Linear"]
    assert [n for n in names if n != "ReLU"] == ["Conv2d", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d",
                                                 "Dropout", "Linear", "Dropout", "Linear"]
    assert [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)] == [32, 64, 64]
    assert model.dense.out_features == 64 and model.features(torch.zeros(1, 1, 48, 48)).shape[-1] == 10
    for size in (48, 128):
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 2)
    resnet = reg.backbone("resnet18").build({}, num_classes=2, in_channels=1).eval()
    assert resnet.conv1.in_channels == 1 and resnet(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


# -- the app -------------------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    buf.seek(0)
    return buf


@pytest.mark.slow
def test_mammography_model_diagnoses_a_clicked_region_of_a_full_mammogram(app, tmp_path: Path) -> None:
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training
    from tests.helpers import finished_run

    store, registry = app.extensions["busi_web"].store, app.extensions["busi_web"].registry
    root = synthetic_mias(tmp_path / "all-mias", pairs=12)
    params = prepare_run_params(
        registry, "mammo_cnn", "mias", data_dir=str(root), backbone_params={"dense": 16},
        dataset_params={"crop_size": 32, "augment": True, "balance": "full"},
        train={"epochs": 1, "batch_size": 16, "lr": 1e-3, "input_size": 32, "resize": 32, "hflip": False,
               "rotation": 0, "val_frac": 0.2, "test_frac": 0.2, "device": "cpu", "workers": 0, "seed": 1})
    run = store.create_run("mammo_cnn", "mias", params, data_dir=str(root))
    done = run_training(store, run["id"], registry)
    assert done["status"] == "finished", done["error"]
    run_dir = Path(done["run_dir"])
    assert (run_dir / "split.json").is_file() and "mdb001#0" in (run_dir / "split.json").read_text()
    store.set_default(run["id"], by="test", reason="a test model")
    client = make_user_client(app, "clin", "velvet-cactus-17", "clinician")

    info = client.get("/api/models/active").get_json()
    assert info["roi"] is True and info["roi_size"] == 32 and info["modality"] == "mammography"
    assert client.get(f"/api/runs/{run['id']}/model").get_json()["roi"] is True

    x, y, r = 70, 130, 6
    full = scan(99, [(x, y, r)])
    col, row = mias_to_pixel(x, y, SIDE)
    resp = client.post("/api/predict", data={"image": [(_png(full), "m.png")], "roi_x": str(col),
                                             "roi_y": str(row)})
    assert resp.status_code == 200, resp.get_json()
    result = resp.get_json()["results"][0]
    assert (result["width"], result["height"]) == (32, 32)
    assert result["roi"] == {"x": col, "y": row, "top": row - 16, "left": col - 16, "side": 32}
    assert set(result["probabilities"]) == {"benign", "malignant"} and result["overlay_png"]
    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
    assert overlay.size == (32, 32)  # the heatmap is drawn on the crop
    audit = store.audit_log("diagnose")[0]["detail"]
    assert audit["roi"]["x"] == col

    def post(**fields):
        return client.post("/api/predict", data={"image": [(_png(full), "m.png")], **fields})

    for fields, word in (({}, "roi_x and roi_y"), ({"roi_x": "300", "roi_y": "10"}, "roi_x must be"),
                         ({"roi_x": "10", "roi_y": "-1"}, "roi_y must be"),
                         ({"roi_x": "abc", "roi_y": "5"}, "roi_x must be")):
        bad = post(**fields)
        assert bad.status_code == 400 and word in bad.get_json()["error"], (fields, bad.get_json())
    two = client.post("/api/predict", data={"image": [(_png(full), "a.png"), (_png(full), "b.png")],
                                            "roi_x": "5", "roi_y": "5"})
    assert two.status_code == 400 and "one mammogram at a time" in two.get_json()["error"]

    whole = finished_run(store, promote=True)  # the default ultrasound model: accepted, and it takes whole images
    r = post(run_id=str(whole["id"]), roi_x="5", roi_y="5")
    assert r.status_code == 400 and "takes no region of interest" in r.get_json()["error"]

