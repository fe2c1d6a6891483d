"""The busi and imagefolder dataset plugins and ``inspect_dataset`` on tiny folders built with PIL."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from busi_web_plugins.busi import BusiDataset
from busi_web_plugins.imagefolder import ImageFolderDataset
from PIL import Image

from busi_web.data.datasets import DatasetError
from busi_web.data.inspection import format_inspection, inspect_dataset
from busi_web.plugins import load_plugins


def smooth_image(seed: int, w: int = 48, h: int = 48) -> np.ndarray:
    """A distinct, smooth gray pattern (stable perceptual hash), as RGB uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (8, 8)).astype(np.float32)
    gray = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def box_mask(w: int, h: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture
def busi_root(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset_BUSI_with_GT"
    for i in (1, 2, 10):
        save(root / "benign" / f"benign ({i}).png", smooth_image(i))
        save(root / "benign" / f"benign ({i})_mask.png", box_mask(48, 48, 5, 5, 15, 15))
    # A second lesion of benign (2) in its own mask file: merged with the first.
    save(root / "benign" / "benign (2)_mask_1.png", box_mask(48, 48, 30, 30, 40, 40))
    # A malignant image of another size whose mask was saved at half resolution.
    save(root / "malignant" / "malignant (1).png", smooth_image(20, w=64, h=40))
    save(root / "malignant" / "malignant (1)_mask.png", box_mask(32, 20, 8, 4, 16, 12))
    save(root / "malignant" / "malignant (2).png", smooth_image(21))
    save(root / "malignant" / "malignant (2)_mask.png", box_mask(48, 48, 20, 20, 30, 30))
    save(root / "normal" / "normal (1).png", smooth_image(30))
    save(root / "normal" / "normal (1)_mask.png", np.zeros((48, 48), np.uint8))
    save(root / "normal" / "normal (2).png", smooth_image(31))
    (root / "normal" / "notes.txt").write_text("not an image")
    return root


def test_busi_layout_samples_and_masks(busi_root: Path) -> None:
    ds = BusiDataset(busi_root)
    assert ds.classes == ["benign", "malignant", "normal"]
    keys = [s.key for s in ds.samples]
    # Mask files are never samples; names with spaces and parentheses are kept as they are.
    assert keys == ["benign/benign (1).png", "benign/benign (2).png", "benign/benign (10).png",
                    "malignant/malignant (1).png", "malignant/malignant (2).png",
                    "normal/normal (1).png", "normal/normal (2).png"]
    assert not any("_mask" in k for k in keys)
    assert ds.class_counts() == {"benign": 3, "malignant": 2, "normal": 2}
    assert ds.labels == [0, 0, 0, 1, 1, 2, 2]  # natural order: (2) before (10)
    two = ds.samples[keys.index("benign/benign (2).png")]
    assert [Path(p).name for p in two.mask_paths] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    ds.check_usable()


def test_busi_masks_merged_and_resized(busi_root: Path) -> None:
    ds = BusiDataset(busi_root)
    keys = [s.key for s in ds.samples]
    merged = ds.load_mask(keys.index("benign/benign (2).png"))
    assert merged.dtype == bool and merged.shape == (48, 48)
    assert merged[10, 10] and merged[35, 35] and not merged[25, 25]
    assert merged.sum() == 200  # two 10x10 boxes

    i = keys.index("malignant/malignant (1).png")
    image = ds.load_image(i)
    assert image.shape == (40, 64, 3) and image.dtype == np.uint8
    mask = ds.load_mask(i)
    assert mask.shape == (40, 64)  # resized to the image, nearest: still a sharp box at twice the size
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 31, 8, 23)

    assert not ds.load_mask(keys.index("normal/normal (1).png")).any()
    assert ds.load_mask(keys.index("normal/normal (2).png")) is None  # no mask file at all


def test_busi_errors_name_the_path(tmp_path: Path, busi_root: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere.*does not exist.*benign,malignant,normal"):
        BusiDataset(missing)
    with pytest.raises(DatasetError, match="needs a data folder"):
        BusiDataset(None)
    # Pointing at the parent of the class folders: the error says which folder was meant.
    with pytest.raises(DatasetError, match=r"no class folder\(s\) benign, malignant, normal.*did you mean .*GT"):
        BusiDataset(tmp_path)
    for f in (busi_root / "malignant").iterdir():
        if "_mask" not in f.name:
            f.unlink()
    with pytest.raises(DatasetError, match=r"class folder .*malignant holds no images"):
        BusiDataset(busi_root)
    for f in (busi_root / "malignant").iterdir():
        f.unlink()
    (busi_root / "malignant").rmdir()
    with pytest.raises(DatasetError, match=r"has no class folder\(s\) malignant"):
        BusiDataset(busi_root)


def test_busi_unreadable_image_named_at_load(busi_root: Path) -> None:
    bad = busi_root / "benign" / "benign (3).png"
    bad.write_bytes(b"this is not a png")
    ds = BusiDataset(busi_root)  # scanning does not decode
    i = [s.key for s in ds.samples].index("benign/benign (3).png")
    with pytest.raises(DatasetError, match=r"benign \(3\)\.png"):
        ds.load_image(i)


def test_busi_class_subset_and_spec(busi_root: Path) -> None:
    ds = BusiDataset(busi_root, "malignant, benign")
    assert ds.classes == ["benign", "malignant"]  # standard order whatever the order asked
    with pytest.raises(DatasetError, match="unknown BUSI class.*cancer"):
        BusiDataset(busi_root, "benign,cancer")
    spec = load_plugins().dataset("busi")
    built = spec.build({}, root=str(busi_root))
    assert isinstance(built, BusiDataset) and len(built) == 7
    assert spec.needs_data_dir and spec.modality == "ultrasound"


def test_imagefolder_arbitrary_classes(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    save(root / "zebra" / "z1.jpg", smooth_image(1))
    save(root / "cat" / "c1.png", smooth_image(2))
    save(root / "cat" / "c1_mask.png", box_mask(48, 48, 0, 0, 8, 8))
    save(root / "cat" / "sub" / "c2.bmp", smooth_image(3))
    save(root / "dog" / "d1.tif", smooth_image(4))
    save(root / "dog" / ".hidden.png", smooth_image(5))
    save(root / "dog" / "lost_mask.png", box_mask(48, 48, 0, 0, 8, 8))
    (root / "dog" / "readme.txt").write_text("x")
    (root / ".git").mkdir()
    ds = ImageFolderDataset(root)
    assert ds.classes == ["cat", "dog", "zebra"]
    assert [s.key for s in ds.samples] == ["cat/c1.png", "cat/sub/c2.bmp", "dog/d1.tif", "zebra/z1.jpg"]
    assert ds.labels == [0, 0, 1, 2]
    assert ds.load_mask(0).sum() == 64 and ds.load_mask(1) is None
    assert ds.orphan_masks == ["dog/lost_mask.png"]
    assert ds.load_image(3).shape == (48, 48, 3)

    picked = load_plugins().dataset("imagefolder").build({"classes": "zebra,cat"}, root=str(root))
    assert picked.classes == ["zebra", "cat"] and picked.labels == [0, 1, 1]
    with pytest.raises(DatasetError, match="horse not found in .*folders.*cat, dog, zebra"):
        ImageFolderDataset(root, "cat,horse")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="class folder .*empty holds no images"):
        ImageFolderDataset(root)
    with pytest.raises(DatasetError, match="no class folders in"):
        ImageFolderDataset(root / "cat" / "sub")


def test_inspect_reports_counts_masks_and_duplicates(busi_root: Path) -> None:
    noisy = smooth_image(1).astype(np.int16) + np.random.default_rng(0).integers(-3, 4, (48, 48, 1))
    save(busi_root / "benign" / "benign (11).png", noisy.clip(0, 255).astype(np.uint8))
    # The same scan filed under malignant too, saved at another size.
    save(busi_root / "malignant" / "malignant (3).png", cv2.resize(smooth_image(10), (96, 96)))
    (busi_root / "normal" / "normal (3).png").write_bytes(b"\x89PNG broken")
    save(busi_root / "normal" / "normal (9)_mask.png", np.zeros((48, 48), np.uint8))

    report = inspect_dataset(BusiDataset(busi_root))
    assert report["class_counts"] == {"benign": 4, "malignant": 3, "normal": 3}
    assert report["total"] == 10
    assert report["image_sizes"]["counts"] == {"48x48": 7, "64x40": 1, "96x96": 1}
    assert (report["image_sizes"]["min_width"], report["image_sizes"]["max_height"]) == (48, 96)
    masks = report["masks"]
    assert masks["images_with_masks"] == 6
    assert masks["multi_mask_images"] == ["benign/benign (2).png"]
    assert [m["key"] for m in masks["size_mismatch"]] == ["malignant/malignant (1).png"]
    assert masks["empty_by_class"] == {"normal": 1}
    assert masks["orphan_masks"] == ["normal/normal (9)_mask.png"]
    assert [u["key"] for u in report["unreadable"]] == ["normal/normal (3).png"]
    groups = {tuple(m["key"] for m in g["members"]): g for g in report["duplicates"]["groups"]}
    assert set(groups) == {("benign/benign (1).png", "benign/benign (11).png"),
                           ("benign/benign (10).png", "malignant/malignant (3).png")}
    assert not groups[("benign/benign (1).png", "benign/benign (11).png")]["cross_class"]
    cross = groups[("benign/benign (10).png", "malignant/malignant (3).png")]
    assert cross["cross_class"] and cross["classes"] == ["benign", "malignant"]
    assert report["duplicates"]["cross_class_groups"] == 1

    text = format_inspection(report)
    assert "10 images in 3 classes" in text
    assert "UNREADABLE: 1" in text and "normal (3).png" in text
    assert "benign/benign (10).png, malignant/malignant (3).png  CROSS-CLASS" in text
    assert "2 group(s)" in text
