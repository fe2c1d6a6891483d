"""What the tests share besides fixtures: paths, users, tiny runs and images, the trainer process.

Fixtures are in ``conftest.py`` (and ``browser/conftest.py``); a test module
imports helpers from here (the browser steps from ``browser_steps.py``, the
synthetic datasets from ``synthetic_data.py``, and the real servers a test starts, gunicorn and
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint
from busi_web.plugins import load_plugins
from busi_web.store import JobStore
from busi_web.training.params import prepare_run_params

ROOT = Path(__file__).resolve().parent.parent


SHARED_DATA = ROOT.parent / "shared" / "data"


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout`` seconds."""

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


def start_trainer(store: JobStore, run_id: int) -> subprocess.Popen:
    """The real trainer process (``python -m busi_web.training.trainer``) on run ``run_id`` of ``store``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "busi_web.training.trainer", "--db", str(store.db_path),
                             "--runs-dir", str(store.runs_dir), "--run-id", str(run_id)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def train_in_trainer(store: JobStore, run_id: int) -> dict:
    """Train run ``run_id`` in the real trainer process to its end; returns the run, which must have finished."""
    proc = start_trainer(store, run_id)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    run = store.get_run(run_id)
    assert run["status"] == "finished", run["error"]
    return run


def two_site_run(store: JobStore, registry, busbra: Path, **train) -> dict:
    """A tiny_cnn run (not yet trained) on two sites: the phantom dataset (benign, malignant, normal) and the
    BUS-BRA-layout folder ``busbra`` (benign and malignant only); ``train`` overrides :data:`TINY`."""
    from busi_web.data.sites import Source

    sources = [Source("phantom", None, PHANTOM), Source("busbra", str(busbra))]
    params = prepare_run_params(registry, "tiny_cnn", sources, train={**TINY, "epochs": 2, **train})
    return store.create_run("tiny_cnn", "phantom+busbra", params)
