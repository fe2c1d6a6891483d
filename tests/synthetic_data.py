"""Synthetic datasets the tests write or hold in memory: mini-MIAS mammograms, BUS-BRA folders, array datasets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from busi_web_plugins.mias_crops import mias_to_pixel
from PIL import Image

from busi_web.data.datasets import ImageDataset, Sample

# -- mammograms (mini-MIAS layout) ----------------------------------------------------------------------------


SIDE = 256


def scan(seed: int, lesions: list[tuple[int, int, int]] = (), side: int = SIDE) -> np.ndarray:
    """A mammogram-like picture: a bright half-ellipse breast on black, bright blobs at MIAS ``(x, y, r)``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((side, side), np.float32)
    cv2.ellipse(img, (0, side // 2), (int(side * 0.6), int(side * 0.45)), 0, -90, 90, 1.0, -1)
    texture = cv2.resize(rng.uniform(0.5, 0.8, (8, 8)).astype(np.float32), (side, side))
    img *= texture * 160
    for x, y, r in lesions:
        col, row = mias_to_pixel(x, y, side)
        cv2.circle(img, (col, row), r, 250.0, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, info: str, scans: dict[str, np.ndarray], pgm: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Info.txt").write_text(info)
    for ref, arr in scans.items():
        Image.fromarray(arr).save(root / f"{ref}.{'pgm' if ref in pgm else 'png'}")
    return root


def synthetic_mias(root: Path, pairs: int = 12, seed: int = 0) -> Path:
    """``pairs`` women: the left scan has a lesion (benign or malignant by turns), the right one is normal.

    Malignant lesions are small and very bright, benign ones large and dimmer, so a tiny model can learn them.
    """
    rng = np.random.default_rng(seed)
    lines, scans = ["REFNUM BG CLASS SEVERITY X Y RADIUS"], {}
    for p in range(pairs):
        left, right = f"mdb{2 * p + 1:03d}", f"mdb{2 * p + 2:03d}"
        x, y = int(rng.integers(50, 100)), int(rng.integers(90, 170))
        malignant = p % 2 == 1
        r = 6 if malignant else 14
        lines.append(f"{left} G {'SPIC M' if malignant else 'CIRC B'} {x} {y} {r}")
        lines.append(f"{right} F NORM")
        scans[left], scans[right] = scan(2 * p, [(x, y, r)]), scan(2 * p + 1)
    return write_folder(root, "\n".join(lines) + "\n", scans)


# -- in-memory datasets (splits, fingerprints) ----------------------------------------------------------------


def pattern(seed: int, side: int = 48) -> np.ndarray:
    """A distinct smooth grayscale pattern (uint8)."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (8, 8)).astype(np.float32)
    return cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def noisy(image: np.ndarray, seed: int = 0, amount: int = 4) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amount, amount + 1, image.shape)
    return (image.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)


class ArrayDataset(ImageDataset):
    """In-memory images: the split only needs ``load_image`` and the samples."""

    def __init__(self, images: list[np.ndarray], labels: list[int], groups: list[str | None] | None = None,
                 classes: tuple[str, ...] = ("benign", "malignant", "normal")):
        groups = groups or [None] * len(images)
        samples = [Sample(key=f"img{i:03d}", label=lab, group=g) for i, (lab, g) in enumerate(zip(labels, groups,
                                                                                               strict=True))]
        super().__init__(list(classes), samples)
        self.images = images

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]


BUSBRA_DEVICES = ("GE Logiq 7 @10-14MHz", "GE Logiq 5 @8-12MHz", "Toshiba Aplio 300 @12MHz")


def write_busbra_folder(root: Path, cases: int = 12, size: int = 40, seed: int = 0) -> Path:
    """A BUS-BRA-layout folder (Images/, Masks/, bus_data.csv and both fold files) of phantom lesions: case ``c``
    is benign when ``c`` is odd, malignant when even; every third case has a left and a right view, the others
    a single one. Cases are dealt to folds in turn (fold ``1 + c % K``); of the rest, every fourth is validation."""
    from busi_web_plugins.phantom import render_phantom

    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    rows, ids = [], []
    for c in range(1, cases + 1):
        pathology = "benign" if c % 2 else "malignant"
        views = ("l", "r") if c % 3 == 0 else ("s",)
        for k, view in enumerate(views):
            ident = f"bus_{c:04d}-{view}"
            image, mask = render_phantom(pathology, size, seed, 0 if pathology == "benign" else 1, c * 2 + k)
            Image.fromarray(image).save(root / "Images" / f"{ident}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Masks" / f"mask_{ident[4:]}.png")
            device = BUSBRA_DEVICES[c % len(BUSBRA_DEVICES)]
            side = {"l": "left", "r": "right", "s": "left"}[view]
            rows.append(f'{ident},{c},fibroadenoma,{pathology},{3 + c % 3},{device},{size},{size},{side},'
                        f'"[1,2,3,4]"')
            ids.append((ident, c, pathology))
    (root / "bus_data.csv").write_text("ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"
                                       + "\n".join(rows) + "\n")
    for k in (5, 10):
        lines = []
        for ident, c, pathology in ids:
            fold = 1 + c % k
            valid = ["NaN" if f == fold else ("0" if c % 4 == 0 else "1") for f in range(1, k + 1)]
            lines.append(f"{ident},{pathology},{fold}," + ",".join(valid))
        header = "ID,Pathology,kFold," + ",".join(f"valid_{f}" for f in range(1, k + 1))
        (root / f"{k}-fold-cv.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    return root
