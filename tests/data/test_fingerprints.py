"""Image fingerprints, and which images of a dataset an acceptance set claims (exact copies and near-duplicates),
which the splitter then leaves out with their whole duplicate groups."""

from __future__ import annotations

import numpy as np

from busi_web.data.fingerprints import data_hash, fingerprint, fingerprints, overlap, pixel_hash
from busi_web.data.splits import split_dataset
from tests.helpers import write_busi_folder
from tests.synthetic_data import ArrayDataset, noisy, pattern


def test_the_pixel_hash_sees_every_pixel_and_the_shape():
    image = pattern(1)
    assert pixel_hash(image) == pixel_hash(image.copy())
    changed = image.copy()
    changed[0, 0] ^= 1
    assert pixel_hash(changed) != pixel_hash(image)
    assert pixel_hash(image.reshape(24, 96)) != pixel_hash(image)


def test_an_acceptance_set_claims_its_copies_and_their_near_duplicates_and_the_split_leaves_their_groups_out():
    images = [pattern(i) for i in range(30)]
    images.append(images[0].copy())  # 30: an exact copy of image 0 under another name
    images.append(noisy(images[1], seed=3))  # 31: a near-duplicate of image 1
    images.append(noisy(images[2], seed=4))  # 32: a near-duplicate of image 2, which the set does not hold
    labels = [i % 3 for i in range(30)] + [0, 1, 2]
    ds = ArrayDataset(images, labels)
    accepted = fingerprints(ds, [0, 1])
    assert [a["key"] for a in accepted] == ["img000", "img001"] and accepted[0]["label"] == "benign"
    assert accepted[0]["sha256"] == fingerprint(images[0])[0] and len(accepted[0]["phash"]) == 16
    found = overlap(ds, accepted)
    assert found.exact == [0, 1, 30] and found.near == [31] and found.indices == [0, 1, 30, 31]
    split = split_dataset(ds, 0.2, 0.2, seed=0, exclude=found.indices, hashes=found.phashes)
    assert split.excluded == [0, 1, 30, 31]
    kept = set(split.train) | set(split.val) | set(split.test)
    assert not kept & set(split.excluded) and kept == set(range(33)) - set(split.excluded)
    assert 32 in kept and 2 in kept  # image 2 is not claimed: it stays, with its near-duplicate in its group
    assert split.to_dict()["excluded"] == ["img000", "img001", "img030", "img031"]
    # A generated dataset declares it has no duplicates: only exact copies count there.
    ds.has_duplicates = False
    assert overlap(ds, accepted).indices == [0, 1, 30]


def test_the_data_hash_follows_files_and_classes_and_generated_data_follows_its_parameters(tmp_path):
    from busi_web_plugins.busi import BusiDataset

    folder = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"])
    first = data_hash(BusiDataset(folder))
    assert first == data_hash(BusiDataset(folder)) and len(first) == 64
    (folder / "benign" / "benign (1).png").write_bytes((folder / "benign" / "benign (2).png").read_bytes())
    assert data_hash(BusiDataset(folder)) != first
    generated = ArrayDataset([np.zeros((4, 4), np.uint8)], [0])
    assert data_hash(generated, {"seed": 1}) != data_hash(generated, {"seed": 2})
