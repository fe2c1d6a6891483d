"""What the tests share besides fixtures: paths, users, tiny runs and images, and the browser steps.

Fixtures are in ``conftest.py`` (and ``browser/conftest.py``); a test module
imports helpers from here (and the real servers a test starts, gunicorn and
slapd, from ``servers.py``), never from another test module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from busi_web_plugins.mias_crops import mias_to_pixel
from PIL import Image

from busi_web.data.datasets import ImageDataset, Sample
from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint
from busi_web.plugins import load_plugins
from busi_web.store import JobStore
from busi_web.training.params import prepare_run_params

ROOT = Path(__file__).resolve().parent.parent


SHARED_DATA = ROOT.parent / "shared" / "data"


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``busi-web`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("busi-web")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, input=input,
                          timeout=timeout, cwd=cwd or ROOT)


ADMIN = ("admin", "amber-otter-42")


CLINICIAN = ("clin", "velvet-cactus-17")


def login(client, name: str, password: str, *, next_url: str | None = None):
    """Log ``client`` in through the real login form (with its CSRF token, so it also works when CSRF is on)."""
    import re

    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    data = {"username": name, "password": password, "csrf_token": match.group(1) if match else ""}
    if next_url:
        data["next"] = next_url
    return client.post("/login", data=data)


def make_user_client(app, name: str, password: str, role: str):
    """A test client logged in as a new (or existing) user ``name`` with ``role``."""
    store = app.extensions["busi_web"].store
    if store.get_user(name) is None:
        store.add_user(name, role, password)
    client = app.test_client()
    r = login(client, name, password)
    assert r.status_code == 302, f"login as {name} failed: {r.status_code}"
    return client


TINY = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "input_size": 32, "resize": 36, "seed": 7}


PHANTOM = {"size": 40, "per_class": 12, "seed": 1}


def new_run(store: JobStore, registry, train: dict | None = None, dataset: dict | None = None,
            backbone: str = "tiny_cnn", dataset_name: str = "phantom", data_dir: str | None = None) -> dict:
    params = prepare_run_params(registry, backbone, dataset_name, train={**TINY, **(train or {})},
                                dataset_params=PHANTOM if dataset is None else dataset, data_dir=data_dir)
    return store.create_run(backbone, dataset_name, params, data_dir=data_dir)


def make_image_folder(root: Path, counts: dict[str, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


CLASSES = ["benign", "malignant", "normal"]


PNG = b"\x89PNG\r\n\x1a\n"


TINY_TRAIN = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "input_size": 32, "resize": 36, "seed": 3,
              "device": "cpu", "workers": 0}


def set_modality(store, run_id: int, modality: str) -> None:
    """Make run ``run_id`` a model of ``modality`` whatever its dataset (no public path does: a test's shortcut)."""
    from sqlalchemy import update

    from busi_web.store.tables import runs

    with store.transaction() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(modality=modality))


def finished_run(store, *, dataset: str = "phantom", width: int = 8, seed: int = 0, promote: bool = False,
                 modality: str | None = None) -> dict:
    """A finished run whose best_model.pt is an (untrained) tiny CNN: enough for everything but accuracy.
    ``modality`` makes it a model of that modality whatever its dataset."""
    run = store.create_run("tiny_cnn", dataset, {"train": TINY_TRAIN})
    if modality:
        set_modality(store, run["id"], modality)
    torch.manual_seed(seed)
    model = load_plugins().backbone("tiny_cnn").build({"width": width}, num_classes=len(CLASSES), in_channels=3)
    meta = CheckpointMeta(backbone="tiny_cnn", classes=CLASSES, backbone_params={"width": width}, input_size=32,
                          resize=36, dataset=dataset, extra={"run_id": run["id"]},
                          **({"modality": modality} if modality else {}))
    save_checkpoint(Path(run["run_dir"]) / "best_model.pt", model, meta)
    (Path(run["run_dir"]) / "metrics.json").write_text('{"test": {"macro_f1": 0.5}}')
    (Path(run["run_dir"]) / "params.json").write_text(json.dumps({"classes": CLASSES, "dataset": dataset}))
    # It trained on no image: no acceptance image can be among its training or validation images.
    (Path(run["run_dir"]) / "fingerprints.json").write_text('{"train": [], "val": []}')
    (Path(run["run_dir"]) / "training_log.txt").write_text("epoch 1 done\n")
    store.transition(run["id"], "running")
    store.add_metrics(run["id"], [{"epoch": 1, "key": "train_loss", "value": 1.0 - i / 10} for i in range(5)])
    run = store.transition(run["id"], "finished", test_macro_f1=0.5, epochs_done=1)
    if promote:
        store.set_default(run["id"], by="test", reason="a test model")
    return run


def image_bytes(fmt: str = "PNG", hw: tuple[int, int] = (48, 64), seed: int = 0, rgb: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (*hw, 3) if rgb else hw, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def upload(*files: tuple[bytes, str], **fields) -> dict:
    return {"image": [(io.BytesIO(data), name) for data, name in files], **fields}


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw.startswith(PNG)
    return Image.open(io.BytesIO(raw))


def blob(size: int = 64, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc off centre on a dark, noisy background, and its mask."""
    rng = rng or np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(14, size - 14), rng.integers(14, size - 14), rng.integers(6, 11)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image = rng.integers(0, 40, (size, size)).astype(np.uint8)
    image[mask] = 220
    return image, mask


def blob_batch(seed: int, n: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` blob images ``(n, 1, size, size)`` in [0, 1] and their masks ``(n, size, size)``."""
    rng = np.random.default_rng(seed)
    pairs = [blob(size, rng) for _ in range(n)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).float()[:, None] / 255
    return x, torch.from_numpy(np.stack([p[1] for p in pairs])).float()


def write_busi_folder(root: Path, classes: list[str], per_class: int = 2, seed: int = 0) -> Path:
    """A tiny BUSI-layout folder: <root>/<class>/<class> (i).png with a mask file each (other images per seed)."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(1, per_class + 1):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            mask = np.zeros((40, 40), np.uint8)
            if cls != "normal":
                mask[10:25, 12:30] = 255
            Image.fromarray(mask).save(root / cls / f"{cls} ({i})_mask.png")
    return root


# -- the browser tests (Playwright on Debian's chromium; the fixtures are in browser/conftest.py) --------------


SHOTS = ROOT / "test-artifacts" / "browser"


# A run the API can start when a test needs a finished model and the earlier tests did not leave one.
TINY_RUN = {"backbone": "tiny_cnn", "dataset": "phantom", "name": "api tiny",
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.003, "input_size": 32, "resize": 36, "device": "cpu",
                      "workers": 0, "seed": 1},
            "dataset_params": {"size": 48, "per_class": 16, "seed": 2}}


@dataclass
class Server:
    url: str
    token: str
    instance: Path
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        """Call the JSON API with the admin's API token (token requests need no CSRF token)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# What the Train page's charts hold, read in the browser: the run's status and the points of each chart.
CHART_STATE = """() => {
  const count = (name) => {
    const c = (window.busiCharts || {})[name];
    return c ? Object.fromEntries(c.data.datasets.map((d) => [d.busiKey, d.data.length])) : null;
  };
  const run = window.busiRun || {};
  return {status: run.status, live: run.liveRows, rest: run.restRows, epochs: run.epochsDone,
          loss: count("loss"), accuracy: count("accuracy"), batch: count("batch")};
}"""


def total(sample: dict) -> int:
    """The points of a CHART_STATE sample, all charts together."""
    return sum(sum((sample[k] or {}).values()) for k in ("loss", "accuracy", "batch"))


def browser_login(page, server: Server, user: tuple[str, str], next_path: str = "/"):
    """Log in through the login form; an anonymous visit to ``next_path`` must first land on the login page."""
    page.goto(server.url + next_path)
    assert "/login" in page.url, f"{next_path} did not ask for a login"
    page.fill("#username", user[0])
    page.fill("#password", user[1])
    page.click("#login-submit")
    page.wait_for_selector("#nav-user")
    # The page's own scripts attach their listeners before DOMContentLoaded: wait for it, or an early
    # select_option/click can fire before anything listens (a CI run lost a filter change that way).
    page.wait_for_load_state("domcontentloaded")
    assert user[0] in page.inner_text("#nav-user")


def wait_runs(server: Server, finished: int, timeout: float = 150) -> list[dict]:
    """At least ``finished`` finished runs (starting tiny ones through the API when there are too few)."""
    have = server.api("/api/runs?status=finished")["runs"]
    busy = server.api("/api/runs?status=queued,running")["runs"]
    for _ in range(finished - len(have) - len(busy)):
        server.api("/api/runs", TINY_RUN)
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = server.api("/api/runs?status=finished")["runs"]
        if len(runs) >= finished and not server.api("/api/runs?status=queued,running")["runs"]:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"fewer than {finished} finished runs after {timeout} s: "
                         f"{server.api('/api/runs')['runs']}\n{server.log.read_text()[-2000:]}")


def default_model(server: Server, run_id: int | None = None) -> int:
    """Make run ``run_id`` (default: the first finished run) the default of its modality, as an admin does on the
    Models page: clinicians diagnose with the defaults and accepted models only. Returns the run's id."""
    if run_id is None:
        run_id = wait_runs(server, 1)[0]["id"]
    server.api(f"/api/runs/{run_id}/promote", {"reason": "the browser tests' model"})
    return run_id


def fill_train_form(page, server: Server, *, name: str, epochs: str, per_class: int = 24, resize: str = "36"):
    page.goto(server.url + "/train")
    page.wait_for_selector("#train[data-ready='1']")
    page.fill("#f-name", name)
    page.select_option("#f-backbone", "tiny_cnn")
    page.select_option("#f-dataset", "phantom")
    page.fill("#f-dataset_params-size", "48")
    page.fill("#f-dataset_params-per_class", str(per_class))
    page.fill("#f-train-epochs", epochs)
    page.fill("#f-train-batch_size", "8")
    page.fill("#f-train-lr", "0.003")
    if not page.locator("#advanced").evaluate("d => d.open"):
        page.click("#advanced summary")
    page.fill("#f-train-input_size", "32")
    page.fill("#f-train-resize", resize)
    page.fill("#f-train-device", "cpu")
    page.fill("#f-train-workers", "0")
    page.fill("#f-train-patience", "0")


def submit_train_form(page) -> int:
    page.click("#train-submit")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


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


def start_trainer(store: JobStore, run_id: int) -> subprocess.Popen:
    """The real trainer process (``python -m busi_web.training.trainer``) on run ``run_id`` of ``store``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "busi_web.training.trainer", "--db", str(store.db_path),
                             "--runs-dir", str(store.runs_dir), "--run-id", str(run_id)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
