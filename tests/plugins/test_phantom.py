"""The phantom dataset: deterministic, fast, masks where the lesions are, and learnable."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from busi_web_plugins.phantom import CLASSES, PhantomDataset, render_phantom

from busi_web.data.splits import split_dataset
from busi_web.plugins import load_plugins
from busi_web.specs import InvalidParameters


def test_spec_params_and_layout() -> None:
    spec = load_plugins().dataset("phantom")
    assert not spec.needs_data_dir
    ds = spec.build({"size": "64", "per_class": "5"}, root=None)
    assert ds.classes == CLASSES == ["benign", "malignant", "normal"]
    assert len(ds) == 15 and ds.class_counts() == {"benign": 5, "malignant": 5, "normal": 5}
    assert ds.samples[7].key == "phantom/malignant/0002" and ds.samples[7].path is None
    image, mask = ds.load_image(7), ds.load_mask(7)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()  # gray replicated
    assert mask.shape == (64, 64) and mask.dtype == bool
    with pytest.raises(InvalidParameters, match="size"):
        spec.build({"size": 16})
    with pytest.raises(InvalidParameters, match="per_class"):
        spec.build({"per_class": 2})


def test_deterministic_per_seed_class_and_index() -> None:
    a = PhantomDataset(size=64, per_class=4, seed=3)
    b = PhantomDataset(size=64, per_class=9, seed=3)  # more images must not change the first ones
    c = PhantomDataset(size=64, per_class=4, seed=4)
    for i in range(4):
        assert np.array_equal(a.load_image(i), b.load_image(i))
        assert np.array_equal(a.load_mask(i), b.load_mask(i))
        assert not np.array_equal(a.load_image(i), c.load_image(i))
    # Malignant 0 of a (index 4) is malignant 0 of b (index 9).
    assert np.array_equal(a.load_image(4), b.load_image(9))
    # DataLoader workers receive a pickled copy: it must draw the same pixels.
    assert np.array_equal(pickle.loads(pickle.dumps(a)).load_image(5), a.load_image(5))
    # Images within one dataset all differ.
    firsts = {a.load_image(i).tobytes() for i in range(len(a))}
    assert len(firsts) == len(a)


def test_masks_mark_dark_lesions() -> None:
    ds = PhantomDataset(size=96, per_class=6, seed=0)
    for i, sample in enumerate(ds.samples):
        gray = ds.load_image(i)[..., 0].astype(float)
        mask = ds.load_mask(i)
        kind = ds.classes[sample.label]
        if kind == "normal":
            assert not mask.any()
            continue
        assert 0.005 < mask.mean() < 0.15, (sample.key, mask.mean())
        # Lesions are hypoechoic: clearly darker than the tissue beside them (same depth band).
        rows = np.nonzero(mask.any(axis=1))[0]
        band = np.zeros_like(mask)
        band[rows.min():rows.max() + 1] = True
        beside = band & ~mask
        assert gray[mask].mean() < 0.6 * gray[beside].mean(), sample.key


def test_benign_and_malignant_differ_in_shape_and_shadow() -> None:
    stats: dict[str, list[tuple[float, float]]] = {"benign": [], "malignant": []}
    for kind, label in (("benign", 0), ("malignant", 1)):
        for i in range(12):
            gray, mask = render_phantom(kind, 96, 0, label, i)
            ys, xs = np.nonzero(mask)
            tall = (ys.max() - ys.min()) / (xs.max() - xs.min())
            # Posterior signal: the columns under the lesion vs the same rows elsewhere.
            cols = np.unique(xs)
            below = slice(ys.max() + 3, 96)
            others = np.setdiff1d(np.arange(96), np.arange(cols.min() - 4, cols.max() + 5))
            posterior = gray[below][:, cols].mean() / gray[below][:, others].mean()
            stats[kind].append((tall, posterior))
    benign, malignant = np.array(stats["benign"]), np.array(stats["malignant"])
    assert benign[:, 0].max() < 1.0 < malignant[:, 0].min()  # wider than tall vs taller than wide
    assert benign[:, 1].min() > 1.0 > 0.8 > malignant[:, 1].max()  # enhancement vs shadow


def test_generation_is_fast() -> None:
    render_phantom("malignant", 128, 0, 1, 0)  # warm up
    start = time.perf_counter()
    for i in range(30):
        render_phantom(CLASSES[i % 3], 128, 0, i % 3, i)
    per_image = (time.perf_counter() - start) / 30
    # About 4 ms on a free core; generous so a busy shared machine does not fail it.
    assert per_image < 0.03, f"{per_image * 1000:.1f} ms per 128 px phantom"


def test_tiny_cnn_learns_phantoms() -> None:
    from busi_web_plugins.backbones import build_tiny_cnn

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = PhantomDataset(size=64, per_class=24, seed=1)
        split = split_dataset(ds, val_frac=0.0, test_frac=0.25, seed=0)
        x = torch.tensor(np.stack([ds.load_image(i) for i in range(len(ds))])).permute(0, 3, 1, 2).float()
        x = (F.avg_pool2d(x, 2) / 255 - 0.5) / 0.25  # 32 px keeps it to a few seconds
        y = torch.tensor(ds.labels)
        train, test = torch.tensor(split.train), torch.tensor(split.test)
        model = build_tiny_cnn(num_classes=3, in_channels=3)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(25):
            model.train()
            for batch in train[torch.randperm(len(train))].split(16):
                loss = F.cross_entropy(model(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.8, accuracy
