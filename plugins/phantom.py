"""The ``phantom`` dataset: synthetic breast-ultrasound images with lesion masks.

Each image is drawn from a seed, so no data folder is needed and sample ``i``
of class ``c`` is the same picture for a given ``seed`` on every machine.
The pictures imitate a linear-probe B-mode scan:

* tissue layers in gently curved horizontal bands: a bright skin line,
  hypoechoic subcutaneous fat with fat lobules and bright Cooper ligaments,
  a brighter fibroglandular layer, then retromammary fat and striated muscle;
* multiplicative speckle (the magnitude of blurred complex Gaussian noise,
  which is Rayleigh distributed), depth attenuation and, now and then, a faint
  shadow column cast by a ligament;
* ``benign``: a smooth oval hypoechoic mass, wider than tall, with a sharp
  echogenic capsule and slight posterior enhancement;
* ``malignant``: an irregular, spiculated hypoechoic mass, taller than wide,
  with a blurred margin and a posterior acoustic shadow (a dark column below);
* ``normal``: no mass; the mask is all false.

The mass has a random position, size and orientation inside the
fibroglandular layer, so a classifier has to find it, and a heatmap can be
scored against the mask.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from busi_web.data.datasets import ImageDataset, Sample
from busi_web.hookspecs import hookimpl
from busi_web.specs import DatasetSpec, Param

CLASSES = ["benign", "malignant", "normal"]
_CACHE_SIZE = 32


class PhantomDataset(ImageDataset):
    """Generated phantoms: ``per_class`` images of each class, ``size`` x ``size`` pixels."""

    name = "phantom"
    modality = "ultrasound"
    # Every image is drawn from its own seed: there are no duplicates to group.
    has_duplicates = False

    def __init__(self, size: int = 128, per_class: int = 60, seed: int = 0, noise: float = 1.0):
        samples = [
            Sample(key=f"phantom/{c}/{i:04d}", label=label, extra={"index": i})
            for label, c in enumerate(CLASSES)
            for i in range(per_class)
        ]
        super().__init__(CLASSES, samples, root=None)
        self.size, self.per_class, self.seed, self.noise = size, per_class, seed, noise
        # Training reads the image and then the mask of the same sample: keep the last few.
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()  # the web app may read one dataset from several threads

    def __getstate__(self) -> dict:
        # DataLoader workers may pickle the dataset: send the parameters, not the lock or the cache.
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        sample = self.samples[index]
        out = render_phantom(self.classes[sample.label], self.size, self.seed, sample.label,
                             sample.extra["index"], self.noise)
        with self._lock:
            self._cache[index] = out
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return out

    def load_image(self, index: int) -> np.ndarray:
        gray = self._render(index)[0]
        return np.repeat(gray[..., None], 3, axis=2)

    def load_mask(self, index: int) -> np.ndarray:
        return self._render(index)[1].copy()

    def has_masks(self) -> bool:
        return True


def render_phantom(kind: str, size: int, seed: int, class_index: int, index: int,
                   noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom: ``(uint8 gray image (size, size), bool lesion mask (size, size))``.

    ``kind`` is ``benign``, ``malignant`` or ``normal``. The random stream is
    seeded from ``(seed, class_index, index)`` only, so the picture does not
    depend on how many others are drawn or in which order.
    """
    if kind not in CLASSES:
        raise ValueError(f"unknown phantom class {kind!r}; expected one of {', '.join(CLASSES)}")
    rng = np.random.default_rng([seed, class_index, index])
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / np.float32(s)
    echo = _tissue(rng, xx, yy)
    mask = np.zeros((s, s), np.uint8)
    if kind != "normal":
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.38, 0.6)
        radius = rng.uniform(0.08, 0.14)
        if kind == "benign":
            pts = _oval(rng, cx, cy, radius)
        else:
            pts = _spiculated(rng, cx, cy, radius)
        cv2.fillPoly(mask, [np.round(pts * s * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        echo = _mass(rng, echo, mask, kind, s)
    speckle = _speckle(rng, s, noise)
    img = echo * speckle * np.exp(-0.6 * yy)  # depth attenuation
    img = np.clip(img * rng.uniform(0.9, 1.1), 0, None) ** 0.8  # gain, then mild log-like compression
    gray = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return gray, mask.astype(bool)


def _tissue(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Echogenicity of the layered background, values around 0.1 to 0.9."""
    x = xx[0]
    # Layer boundaries: gently curved bands, each with its own small wave.
    bend = rng.uniform(-0.08, 0.08) * (x - 0.5) ** 2 * 4

    def boundary(base: float) -> np.ndarray:
        wave = rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * x + rng.uniform(0, 2 * np.pi))
        return (base + bend + wave).astype(np.float32)

    skin = boundary(rng.uniform(0.03, 0.05))
    fat = boundary(rng.uniform(0.18, 0.26))
    gland = boundary(rng.uniform(0.68, 0.76))
    muscle = boundary(rng.uniform(0.84, 0.9))
    echo = np.full(xx.shape, 0.05, np.float32)  # coupling gel above the skin
    echo = np.where(yy >= skin, 0.9, echo)
    echo = np.where(yy >= skin + 0.02, 0.38, echo)  # subcutaneous fat
    echo = np.where(yy >= fat, 0.66, echo)  # fibroglandular
    echo = np.where(yy >= gland, 0.33, echo)  # retromammary fat
    in_muscle = yy >= muscle
    # Muscle: bright horizontal striations.
    stripes = 0.42 + 0.12 * np.sin(2 * np.pi * (yy - muscle) * rng.uniform(25, 40))
    echo = np.where(in_muscle, stripes, echo).astype(np.float32)
    s = xx.shape[0]
    # Fat lobules: faint darker ovals in the subcutaneous fat, in every class.
    lob = np.zeros((s, s), np.float32)
    for _ in range(rng.integers(1, 4)):
        c = (rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.16) * s)
        axes = (rng.uniform(0.05, 0.09) * s, rng.uniform(0.02, 0.035) * s)
        _fill_ellipse(lob, c, axes, rng.uniform(-15, 15))
    echo = echo * (1 - 0.25 * cv2.GaussianBlur(lob, (0, 0), max(s / 128, 0.5)))
    # Cooper ligaments: thin bright oblique lines crossing the fat.
    lig = np.zeros((s, s), np.float32)
    for _ in range(rng.integers(2, 5)):
        x0 = rng.uniform(0, 1)
        p0 = (x0 * s, float(np.interp(x0, x, skin)) * s + 2)
        p1 = ((x0 + rng.uniform(-0.25, 0.25)) * s, rng.uniform(0.2, 0.3) * s)
        cv2.line(lig, _pt(p0), _pt(p1), 1.0, max(1, s // 128), cv2.LINE_AA)
    echo = echo + 0.35 * lig * (yy < fat)
    # Low-frequency heterogeneity of the glandular tissue.
    # (Upsampled coarse noise: as smooth as a wide blur, at a fraction of its cost.)
    blob = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
    blob /= max(float(np.abs(blob).max()), 1e-6)
    echo = echo * (1 + 0.2 * blob * (yy >= fat))
    # Now and then a faint shadow column behind a ligament, so that not every shadow means cancer.
    if rng.random() < 0.4:
        col = np.exp(-(((xx - rng.uniform(0.1, 0.9)) / rng.uniform(0.01, 0.03)) ** 2))
        echo = echo * (1 - 0.3 * col * (yy > fat))
    return echo.astype(np.float32)


def _fill_ellipse(canvas: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float) -> None:
    pts = _ellipse_points(centre[0], centre[1], axes[0], axes[1], np.deg2rad(angle), 48)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)


def _ellipse_points(cx: float, cy: float, a: float, b: float, angle: float, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _oval(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """A smooth ellipse, wider than tall (parallel to the skin), in unit coordinates."""
    aspect = rng.uniform(1.35, 1.9)
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    return _ellipse_points(cx, cy, a, b, np.deg2rad(rng.uniform(-20, 20)), 64)


def _spiculated(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """An irregular, taller-than-wide outline with sharp spicules, in unit coordinates."""
    n = 180
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 6):  # lumpy, angular body
        radius += rng.uniform(0.04, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    for centre in rng.uniform(0, 2 * np.pi, rng.integers(7, 13)):  # spicules: narrow spikes
        d = np.angle(np.exp(1j * (t - centre)))
        radius += rng.uniform(0.35, 0.8) * np.clip(1 - np.abs(d) / rng.uniform(0.07, 0.12), 0, None)
    aspect = rng.uniform(1.2, 1.6)  # taller than wide
    x = r * radius * np.cos(t) / np.sqrt(aspect)
    y = r * radius * np.sin(t) * np.sqrt(aspect)
    ang = np.deg2rad(rng.uniform(-20, 20))
    ca, sa = np.cos(ang), np.sin(ang)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _mass(rng: np.random.Generator, echo: np.ndarray, mask: np.ndarray, kind: str, s: int) -> np.ndarray:
    """Paint the mass and its posterior feature (enhancement or shadow) into ``echo``."""
    m = mask.astype(np.float32)
    # Everything below the mass within its columns: running maximum down each column, minus the mass.
    below = np.maximum.accumulate(m, axis=0) - m
    soft = cv2.GaussianBlur(below, (0, 0), max(s / 48, 0.7))
    depth_fade = np.exp(-np.cumsum(below, axis=0) / (0.35 * s))
    if kind == "benign":
        alpha = cv2.GaussianBlur(m, (0, 0), max(s / 256, 0.4))  # sharp margin
        inside = rng.uniform(0.1, 0.16)
        rim = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=max(1, s // 128)) - mask
        echo = echo * (1 + 0.6 * soft * depth_fade)  # posterior enhancement
        echo = echo * (1 - alpha) + inside * alpha
        echo = echo + 0.3 * cv2.GaussianBlur(rim.astype(np.float32), (0, 0), 0.5)  # echogenic capsule
    else:
        alpha = cv2.GaussianBlur(m, (0, 0), max(s / 180, 0.5))  # slightly indistinct, angular margin
        inside = rng.uniform(0.06, 0.12)
        halo = cv2.GaussianBlur(cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=max(1, s // 48)).astype(
            np.float32), (0, 0), max(s / 64, 1.0)) - alpha
        echo = echo * (1 - rng.uniform(0.55, 0.75) * soft)  # posterior acoustic shadow
        echo = echo + 0.15 * np.clip(halo, 0, None)  # echogenic halo
        echo = echo * (1 - alpha) + inside * alpha
    return echo.astype(np.float32)


def _speckle(rng: np.random.Generator, s: int, noise: float) -> np.ndarray:
    """Multiplicative speckle with mean 1: Rayleigh magnitude of blurred complex noise."""
    if noise <= 0:
        return np.ones((s, s), np.float32)
    re = rng.standard_normal((s, s), dtype=np.float32)
    im = rng.standard_normal((s, s), dtype=np.float32)
    # Speckle cells are longer laterally than axially, as with a linear probe.
    sx, sy = max(s / 100, 0.6), max(s / 200, 0.4)
    re = cv2.GaussianBlur(re, (0, 0), sigmaX=sx, sigmaY=sy)
    im = cv2.GaussianBlur(im, (0, 0), sigmaX=sx, sigmaY=sy)
    mag = np.sqrt(re * re + im * im)
    mag /= max(float(mag.mean()), 1e-6)
    # noise scales the speckle contrast: 1 is fully developed speckle.
    # The display is log-compressed, which tames the Rayleigh contrast: hence the 0.6.
    mag = mag ** (0.6 * noise)
    return (mag / max(float(mag.mean()), 1e-6)).astype(np.float32)


def _build(root: object = None, size: int = 128, per_class: int = 60, seed: int = 0,
           noise: float = 1.0) -> PhantomDataset:
    # root is accepted for a uniform factory signature and ignored: nothing is read.
    return PhantomDataset(size=size, per_class=per_class, seed=seed, noise=noise)


@hookimpl
def register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="phantom",
            title="Synthetic ultrasound phantoms",
            description=(
                "Breast-ultrasound phantoms generated from a seed, with lesion masks: speckle and tissue "
                "layers; benign cases have a smooth oval dark mass with a sharp margin and slight posterior "
                "enhancement, malignant ones an irregular spiculated mass with a posterior shadow, normal "
                "ones none. Needs no data; learnable by a small CNN in a minute or two on a CPU."
            ),
            factory=_build,
            params=(
                Param("size", "int", 128, "Image side in pixels.", minimum=32, maximum=512),
                Param("per_class", "int", 60, "Images per class.", minimum=3, maximum=5000),
                Param("seed", "int", 0, "Seed: the same seed draws the same images.", minimum=0),
                Param("noise", "float", 1.0, "Speckle strength: 0 none, 1 realistic, 2 heavy.",
                      minimum=0.0, maximum=3.0, advanced=True),
            ),
            needs_data_dir=False,
            modality="ultrasound",
            synthetic=True,
        )
    ]
