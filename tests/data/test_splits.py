"""Perceptual hashing, near-duplicate groups and the stratified, group-aware split."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from busi_web_plugins.imagefolder import ImageFolderDataset
from busi_web_plugins.phantom import PhantomDataset
from PIL import Image

from busi_web.data.datasets import DatasetError
from busi_web.data.splits import PARTS, Split, hamming, near_duplicate_groups, perceptual_hash, split_dataset
from tests.synthetic_data import ArrayDataset, noisy, pattern


def where(split: Split) -> dict[int, str]:
    return {i: p for p in PARTS for i in split.part(p)}


def test_hash_tolerates_noise_and_resizing_not_other_images() -> None:
    base = pattern(1)
    h = perceptual_hash(base)
    assert 0 <= h < 2**64
    assert perceptual_hash(np.repeat(base[..., None], 3, axis=2)) == h  # RGB of the same gray
    assert hamming(h, perceptual_hash(noisy(base))) <= 2
    assert hamming(h, perceptual_hash(cv2.resize(base, (160, 120)))) <= 4
    others = [perceptual_hash(pattern(s)) for s in range(2, 40)]
    assert min(hamming(h, o) for o in others) > 6


def test_near_duplicate_groups_on_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(pattern(i)).save(root / "benign" / f"b{i}.png")
        Image.fromarray(pattern(100 + i)).save(root / "malignant" / f"m{i}.png")
    Image.fromarray(noisy(pattern(0))).save(root / "benign" / "b0 copy.png")
    Image.fromarray(cv2.resize(pattern(0), (96, 96))).save(root / "benign" / "b0 big.jpg", quality=95)
    Image.fromarray(pattern(3)).save(root / "malignant" / "same as b3.png")  # filed under both classes
    ds = ImageFolderDataset(root)
    groups = [[ds.samples[i].key for i in g] for g in near_duplicate_groups(ds)]
    assert sorted(groups) == [["benign/b0 big.jpg", "benign/b0 copy.png", "benign/b0.png"],
                              ["benign/b3.png", "malignant/same as b3.png"]]
    # Threshold 0 joins only identical hashes: the exact copy is still found.
    exact = [[ds.samples[i].key for i in g] for g in near_duplicate_groups(ds, threshold=0)]
    assert ["benign/b3.png", "malignant/same as b3.png"] in exact


def make_dataset(per_class: tuple[int, int, int] = (30, 20, 12)) -> tuple[ArrayDataset, list[list[int]]]:
    """Distinct patterns per class plus a few near-duplicate pairs; returns the expected duplicate groups."""
    images, labels = [], []
    seed = 0
    for label, n in enumerate(per_class):
        for _ in range(n):
            images.append(pattern(seed))
            labels.append(label)
            seed += 1
    dupes = []
    for src in (0, 5, per_class[0] + 1):  # two benign scans and a malignant one saved twice
        dupes.append([src, len(images)])
        images.append(noisy(images[src], seed=src))
        labels.append(labels[src])
    dupes.append([per_class[0] + 2, len(images)])  # a malignant scan filed again as benign
    images.append(noisy(images[per_class[0] + 2], seed=99))
    labels.append(0)
    return ArrayDataset(images, labels), dupes


def test_split_is_stratified_disjoint_and_covers_all() -> None:
    ds, dupes = make_dataset()
    split = split_dataset(ds, val_frac=0.2, test_frac=0.2, seed=1)
    parts = [split.train, split.val, split.test]
    assert sorted(i for p in parts for i in p) == list(range(len(ds)))  # disjoint and complete
    counts = split.counts(ds)
    for cls, n in ds.class_counts().items():
        assert all(counts[p][cls] >= 1 for p in PARTS), counts
        # Close to the fractions: 60/20/20 give or take a duplicate pair.
        assert abs(counts["val"][cls] - 0.2 * n) <= 2 and abs(counts["test"][cls] - 0.2 * n) <= 2, counts
    assert sorted(split.groups) == sorted(dupes)


def test_near_duplicates_and_named_groups_stay_together() -> None:
    ds, dupes = make_dataset()
    named = [None] * len(ds)
    named[10] = named[11] = named[12] = "patient-7"  # e.g. two views of one woman
    ds = ArrayDataset(ds.images, ds.labels, named)
    for seed in range(8):
        split = split_dataset(ds, seed=seed)
        part = where(split)
        for group in dupes + [[10, 11, 12]]:
            assert len({part[i] for i in group}) == 1, (seed, group)
    assert [10, 11, 12] in split.groups


def test_split_is_reproducible_from_seed() -> None:
    ds, _ = make_dataset()
    a, b, c = split_dataset(ds, seed=5), split_dataset(ds, seed=5), split_dataset(ds, seed=6)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert (a.train, a.val, a.test) != (c.train, c.val, c.test)


def test_every_class_in_every_part_with_three_groups() -> None:
    ds = ArrayDataset([pattern(s) for s in range(13)], [0] * 10 + [1] * 3)
    for seed in range(5):
        counts = split_dataset(ds, val_frac=0.1, test_frac=0.1, seed=seed).counts(ds)
        assert all(counts[p]["malignant"] == 1 for p in PARTS), counts
    no_val = split_dataset(ds, val_frac=0.0, test_frac=0.3, seed=0)
    assert no_val.val == [] and len(no_val.train) + len(no_val.test) == 13


def test_json_round_trip(tmp_path: Path) -> None:
    ds, _ = make_dataset()
    split = split_dataset(ds, val_frac=0.1, test_frac=0.3, seed=2)
    path = tmp_path / "split.json"
    split.save(path)
    doc = json.loads(path.read_text())
    assert doc["seed"] == 2 and doc["test_frac"] == 0.3
    assert set(doc["train"]) | set(doc["val"]) | set(doc["test"]) == {s.key for s in ds.samples}
    back = Split.load(path, ds)
    assert (back.train, back.val, back.test, back.groups) == (split.train, split.val, split.test, split.groups)
    # Sample order may change between scans: keys, not indices, carry the split.
    shuffled = ArrayDataset(ds.images[::-1], ds.labels[::-1])
    shuffled.samples = ds.samples[::-1]
    again = Split.from_json(split.to_json(), shuffled)
    assert {shuffled.samples[i].key for i in again.test} == set(doc["test"])
    smaller = ArrayDataset(ds.images[:10], ds.labels[:10])
    with pytest.raises(DatasetError, match="does not have.*data folder changed"):
        Split.from_json(doc, smaller)
    with pytest.raises(DatasetError, match="not a busi-web split"):
        Split.from_json('{"train": []}', ds)


def test_bad_fractions_and_unreadable_images(tmp_path: Path) -> None:
    ds, _ = make_dataset()
    with pytest.raises(ValueError, match="val_frac"):
        split_dataset(ds, val_frac=-0.1)
    with pytest.raises(ValueError, match="below 1"):
        split_dataset(ds, val_frac=0.5, test_frac=0.5)
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(pattern(ord(cls))).save(root / cls / "ok.png")
    (root / "b" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="broken.png"):
        split_dataset(ImageFolderDataset(root))


def test_generated_dataset_skips_hashing() -> None:
    class NoPixels(PhantomDataset):
        def load_image(self, index: int) -> np.ndarray:
            raise AssertionError("a dataset declaring has_duplicates = False must not be decoded to split")

    ds = NoPixels(size=32, per_class=10, seed=0)
    split = split_dataset(ds, seed=0)
    assert split.groups == [] and len(split.train) + len(split.val) + len(split.test) == 30
    assert all(n >= 1 for part in split.counts(ds).values() for n in part.values())


def test_twins_of_training_are_the_leak_of_a_split_that_ignores_near_duplicates() -> None:
    keys = [f"k{i}" for i in range(8)]
    split = Split(train=[0, 1, 3], val=[2, 4], test=[5, 6, 7], keys=keys)
    groups = [[0, 5], [1, 2], [6, 7]]  # 5's twin was trained on; 2 is in val; 6 and 7 are twins of each other
    assert split.twins_of_training(groups) == {5}
    assert split.twins_of_training(groups, part="val") == {2}
    with pytest.raises(KeyError):
        split.twins_of_training(groups, part="train_set")
