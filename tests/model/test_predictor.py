"""Predictor: one forward for probabilities and heatmap, original-size maps, batches, threads, hot reload."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from busi_web.data.preprocess import PreprocessConfig, eval_transform
from busi_web.diagnosis.cache import PredictorCache
from busi_web.explain.methods import GradCAM
from busi_web.hookspecs import hookimpl
from busi_web.model.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from busi_web.model.device import resolve_device
from busi_web.model.prediction import Prediction
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry, UnknownPlugin, load_plugins
from busi_web.specs import ExplainerSpec, Param

REGISTRY = load_plugins()

torch.set_num_threads(2)
CLASSES = ["normal", "lesion"]
PNG = b"\x89PNG\r\n\x1a\n"


def _image(rng: np.random.Generator, hw=(40, 40), square: tuple[int, int] | None = None, size=10) -> np.ndarray:
    img = rng.integers(0, 80, hw, dtype=np.uint8)
    if square is not None:
        y, x = square
        img[y:y + size, x:x + size] = 230
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))


def _train_tiny(seed: int = 0, steps: int = 60) -> nn.Module:
    """A tiny CNN that tells a bright square (lesion) from plain noise (normal), trained in about a second."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    transform = eval_transform(PreprocessConfig(input_size=32, resize=36))
    images, labels = [], []
    for i in range(48):
        label = i % 2
        square = (int(rng.integers(0, 28)), int(rng.integers(0, 28))) if label else None
        images.append(transform(_image(rng, square=square)))
        labels.append(label)
    x, y = torch.stack(images), torch.tensor(labels)
    model = REGISTRY.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _save(path: Path, model: nn.Module, in_channels: int = 3, run_id: int = 1) -> Path:
    meta = CheckpointMeta(backbone="tiny_cnn", classes=CLASSES, backbone_params={"width": 8, "dropout": 0.0},
                          in_channels=in_channels, input_size=32, resize=36, dataset="squares",
                          extra={"run_id": run_id})
    save_checkpoint(path, model, meta, REGISTRY)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt") / "model.pt", _train_tiny())


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    return Predictor.from_checkpoint(trained, REGISTRY)


def test_predict_gives_probabilities_and_an_original_size_heatmap(predictor):
    rng = np.random.default_rng(1)
    img = _image(rng, hw=(50, 70), square=(20, 30))
    pred = predictor.predict(img)
    assert list(pred.probabilities) == CLASSES
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == "lesion" and pred.index == 1 and pred.target == 1 and pred.target_label == "lesion"
    assert pred.heatmap.shape == (50, 70) and pred.heatmap.dtype == np.float32
    assert pred.heatmap.min() >= 0.0 and pred.heatmap.max() <= 1.0 and pred.heatmap.max() > 0.5
    # The map points at the lesion: hotter inside the square than elsewhere in the image.
    inside = pred.heatmap[20:30, 30:40].mean()
    mask = np.ones_like(pred.heatmap, bool)
    mask[16:34, 26:44] = False
    assert inside > 2 * pred.heatmap[mask].mean()
    png = pred.overlay_png(alpha=0.4)
    assert png.startswith(PNG)
    assert pred.heatmap_png().startswith(PNG)
    json.dumps(pred.to_dict())


def test_no_explainer_classifies_only_and_targets_are_checked(predictor):
    img = _image(np.random.default_rng(2))
    pred = predictor.predict(img, explainer=None)
    assert pred.heatmap is None and pred.target is None and pred.label == "normal"
    with pytest.raises(ValueError, match="no heatmap"):
        pred.overlay_png()
    explained = predictor.predict(img, target=1)
    assert explained.target == 1 and explained.target_label == "lesion" and explained.label == "normal"
    # Grad-CAM of "lesion" on a normal image: a map of shape (40, 40), or, when it has no value above zero, no
    # picture and a note that says so (a flat picture would look like a finding of nothing).
    if explained.heatmap is None:
        assert "no evidence for lesion" in explained.map_note
    else:
        assert explained.heatmap.shape == (40, 40) and explained.map_note is None
    assert explained.probabilities == pytest.approx(pred.probabilities, abs=1e-6)
    with pytest.raises(ValueError, match=r"target class must be an index from 0 to 1 \(normal, lesion\), got 2"):
        predictor.predict(img, target=2)
    with pytest.raises(UnknownPlugin, match="unknown explainer 'nosuchcam'"):
        predictor.predict(img, explainer="nosuchcam")
    with pytest.raises(ValueError, match="layer 'layer4' is not a module of the 'tiny_cnn' model"):
        predictor.predict(img, target_layer="layer4")


def test_bad_images_are_refused_clearly(predictor):
    with pytest.raises(ValueError, match="expected a uint8 image"):
        predictor.predict(np.zeros((20, 20), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(20, 20, 2\)"):
        predictor.predict(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ValueError, match="image 1: .*got shape"):
        predictor.predict_batch([np.zeros((20, 20), np.uint8), np.zeros((2, 20, 20, 3), np.uint8)])
    with pytest.raises(ValueError, match="no images given"):
        predictor.predict_batch([])


def test_grayscale_and_rgb_inputs_for_rgb_and_grayscale_models(predictor, tmp_path):
    rng = np.random.default_rng(3)
    rgb = _image(rng, hw=(44, 36), square=(10, 10))
    gray = rgb[:, :, 0].copy()
    a, b = predictor.predict(rgb), predictor.predict(gray)  # gray is expanded to R=G=B: the same input
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert np.allclose(a.heatmap, b.heatmap, atol=1e-5)
    torch.manual_seed(0)
    mono = REGISTRY.backbone("tiny_cnn").build({"width": 8}, num_classes=2, in_channels=1)
    p1 = Predictor.from_checkpoint(_save(tmp_path / "gray.pt", mono, in_channels=1), REGISTRY)
    assert p1.config.channels == 1
    assert p1.predict(rgb).heatmap.shape == p1.predict(gray).heatmap.shape == (44, 36)


def test_batch_equals_single_predictions(predictor):
    rng = np.random.default_rng(4)
    images = [_image(rng, hw=(40, 40), square=(5, 5)), _image(rng, hw=(64, 48)),
              _image(rng, hw=(36, 90), square=(12, 40))[:, :, 0].copy()]
    batch = predictor.predict_batch(images, "gradcam", targets=[1, 0, 1])
    for img, target, b in zip(images, [1, 0, 1], batch, strict=True):
        single = predictor.predict(img, "gradcam", target=target)
        assert b.label == single.label and b.target == single.target == target
        assert b.probabilities == pytest.approx(single.probabilities, abs=1e-5)
        assert b.heatmap.shape == img.shape[:2]
        assert np.allclose(b.heatmap, single.heatmap, atol=1e-4)
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        predictor.predict_batch(images, targets=[0, 1])
    with pytest.raises(ValueError, match="every image or for none"):
        predictor.predict_batch(images, targets=[0, None, 1])


def test_every_registered_explainer_maps_onto_the_original_image(predictor):
    img = _image(np.random.default_rng(5), hw=(45, 60), square=(15, 25))
    names = sorted(REGISTRY.explainers)
    assert "gradcam" in names
    for name in names:
        pred = predictor.predict(img, explainer=name)
        assert pred.heatmap.shape == (45, 60), name
        assert pred.heatmap.min() >= 0 and pred.heatmap.max() <= 1, name


def test_many_threads_give_the_sequential_results(predictor):
    rng = np.random.default_rng(6)
    images = [_image(rng, hw=(40 + 4 * i, 48), square=(8 + i, 6 + 2 * i) if i % 2 else None) for i in range(5)]
    expected = [predictor.predict(img) for img in images]
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(5):
                k = (i + t) % 5  # threads run different images at the same moment
                results[(t, k)] = predictor.predict(images[k])
        except BaseException as exc:  # reported below, with the thread's own traceback in pytest's output
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert len(results) == 40
    for (_, k), got in results.items():
        assert got.label == expected[k].label and got.target == expected[k].target
        assert got.probabilities == pytest.approx(expected[k].probabilities, abs=1e-6)
        assert np.allclose(got.heatmap, expected[k].heatmap, atol=1e-6)


def test_a_thread_pool_mixing_explainers_and_batches(predictor):
    rng = np.random.default_rng(9)
    images = [_image(rng, hw=(36 + 3 * i, 44), square=(6 + i, 4 + i) if i % 2 else None) for i in range(4)]
    jobs = [(name, i) for name in ("gradcam", "cam", "hirescam", None) for i in range(4)]
    expected = {job: predictor.predict(images[job[1]], explainer=job[0]) for job in jobs}
    batch_expected = predictor.predict_batch(images, "layercam")

    def run(job):
        if job == "batch":
            return job, predictor.predict_batch(images, "layercam")
        return job, predictor.predict(images[job[1]], explainer=job[0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs * 3 + ["batch"] * 4))
    assert len(results) == 52
    for job, got in results:
        pairs = zip(got, batch_expected, strict=True) if job == "batch" else [(got, expected[job])]
        for g, e in pairs:
            assert g.probabilities == pytest.approx(e.probabilities, abs=1e-6) and g.target == e.target
            assert (g.heatmap is None and e.heatmap is None) or np.allclose(g.heatmap, e.heatmap, atol=1e-6)


class _Inverted(GradCAM):
    """A plugin's explainer: Grad-CAM turned upside down (so it is recognisably different)."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def raw_maps(self, inp):
        raw = super().raw_maps(inp)
        return self.gain * (raw.amax(dim=(-2, -1), keepdim=True) - raw)


class _ExplainerPlugin:
    @hookimpl
    def register_explainers(self):
        return [ExplainerSpec(name="inverted", title="Inverted", description="test", factory=_Inverted,
                              params=(Param("gain", "float", 1.0, minimum=0.1),))]


def test_explainers_come_from_the_plugin_registry(trained):
    registry = PluginRegistry().load_entry_points()
    registry.register(_ExplainerPlugin())
    pred = Predictor.from_checkpoint(trained, registry)
    img = _image(np.random.default_rng(10), square=(10, 10))
    inv = pred.predict(img, explainer="inverted", explainer_params={"gain": "2"})
    assert inv.explainer == "inverted" and inv.heatmap.shape == (40, 40)
    assert not np.allclose(inv.heatmap, pred.predict(img).heatmap, atol=1e-3)
    with pytest.raises(ValueError, match="gain"):
        pred.predict(img, explainer="inverted", explainer_params={"gain": 0})
    with pytest.raises(UnknownPlugin, match="unknown explainer 'inverted'"):
        Predictor.from_checkpoint(trained, REGISTRY).predict(img, explainer="inverted")


def test_feature_maps_and_meta(predictor, trained):
    img = _image(np.random.default_rng(7), square=(5, 5))
    assert predictor.feature_maps(img, "features", channels=8).startswith(PNG)
    assert predictor.feature_maps(img).startswith(PNG)  # default: the model's target layer
    with pytest.raises(ValueError, match="not a module"):
        predictor.feature_maps(img, "nope")
    meta = predictor.meta
    assert meta["classes"] == CLASSES and meta["backbone"] == "tiny_cnn" and meta["run_id"] == 1
    assert meta["input_size"] == 32 and meta["modality"] == "ultrasound" and meta["target_layer"] == "features"
    assert meta["path"] == str(trained)
    json.dumps(meta)


def test_cache_reloads_when_the_file_changes(tmp_path, trained):
    path = tmp_path / "active.pt"
    path.write_bytes(trained.read_bytes())
    cache = PredictorCache(REGISTRY)
    first = cache.get(path)
    assert cache.get(str(path)) is first and cache.loads == 1
    img = _image(np.random.default_rng(8), square=(12, 12))
    before = first.predict(img, explainer=None).probabilities
    _save(path, _train_tiny(seed=1, steps=0), run_id=2)  # a new model promoted at the same path
    second = cache.get(path)
    assert second is not first and cache.loads == 2 and second.meta["run_id"] == 2
    assert second.predict(img, explainer=None).probabilities != pytest.approx(before, abs=1e-4)
    assert cache.get(path) is second
    path.unlink()
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        cache.get(path)


def test_cache_loads_once_under_concurrent_requests(trained):
    cache = PredictorCache(REGISTRY)
    got: list[Predictor] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(trained))) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(got) == 8 and all(p is got[0] for p in got) and cache.loads == 1


def test_device_names():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available; use auto or cpu"):
            resolve_device("cuda")


def test_a_heatmap_of_an_unlikely_class_comes_with_a_caution():
    heat = np.zeros((4, 4), np.float32)
    probs = {"benign": 0.899, "malignant": 0.1, "normal": 0.001}
    pred = Prediction("benign", 0, probs, target=2, target_label="normal", explainer="gradcam", heatmap=heat)
    assert "explains normal, which the model gives only 0.1%" in pred.caution
    assert pred.to_dict()["caution"] == pred.caution
    assert Prediction("benign", 0, probs, target=0, target_label="benign", heatmap=heat).caution is None
    assert Prediction("benign", 0, probs, target=2, target_label="normal").caution is None  # no heatmap
