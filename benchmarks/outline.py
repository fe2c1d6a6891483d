"""What the lesion outline costs: a diagnosis with the outline against one forward pass of the same model.

Issue 19's goal: a diagnosis of a segmenting model, outline included, costs at most 1.3x one forward pass of
that model (whose forward runs the decoder: the classifier reads the lesion map). Timed side by side, in
interleaved rounds whose order rotates (drift in the machine's speed hits both alike), medians printed:

* **forward**: one bare ``model(x)`` under ``torch.no_grad()`` on the prepared batch;
* **outline**: :meth:`busi_web.model.predictor.Predictor.predict_batch` with ``explainer=None`` on the same
  prepared batch: the forward pass, the lesion map kept by a hook and pasted back to each image's size,
  the outline, its measurements and descriptors (:func:`busi_web.explain.lesion.find_lesion`), the calibration
  and the out-of-distribution score;
* **outline + gradcam**: the same with the Grad-CAM heatmap (a backward pass), for reference.

The model is the BUSI recipe's ``segmenting_resnet`` (ResNet18 encoder, 128 px first look, 256 px input),
untrained unless ``--checkpoint`` names a trained one; an untrained one's lesion map is lifted so that every
image has a lesion to outline (the outline's cost depends on its size). Images are ultrasound-like phantoms
of 500x400 px; no shared data is needed.

    OMP_NUM_THREADS=2 python benchmarks/outline.py                  # CPU, batches 1 and 8
    python benchmarks/outline.py --checkpoint RUN_DIR/best_model.pt --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from busi_web.model.checkpoint import CheckpointMeta, load_checkpoint  # noqa: E402
from busi_web.model.predictor import Predictor  # noqa: E402
from busi_web.plugins import load_plugins  # noqa: E402

GOAL = 1.3
CLASSES = ["benign", "malignant", "normal"]


def phantoms(n: int, seed: int = 0) -> list[np.ndarray]:
    """Ultrasound-like images: speckle, and a dark oval lesion somewhere."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:400, :500]
    for _ in range(n):
        img = rng.gamma(2.0, 40.0, (400, 500))
        cx, cy, r = rng.integers(120, 380), rng.integers(100, 300), rng.integers(30, 70)
        img[((xx - cx) / (1.4 * r)) ** 2 + ((yy - cy) / r) ** 2 <= 1] *= 0.15
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def build(args, registry) -> Predictor:
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, registry)
        return Predictor(model, meta, registry, device=args.device, path=args.checkpoint)
    params = {"encoder": "resnet18", "look_size": 128}
    model = registry.backbone("segmenting_resnet").build(params, num_classes=3, in_channels=3)
    head = dict(model.named_modules())[model.lesion_layer]
    last = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # an untrained map hovers at 0.5: lift it, so every image has a lesion to outline
        last.bias.fill_(2.0)
    meta = CheckpointMeta(backbone="segmenting_resnet", classes=CLASSES, backbone_params=params, input_size=256,
                          resize=256)
    return Predictor(model, meta, registry, device=args.device)


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a trained segmenting model's best_model.pt (default: untrained)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds per batch size")
    args = ap.parse_args()
    torch.manual_seed(0)
    registry = load_plugins()
    predictor = build(args, registry)
    if not predictor.segments:
        sys.exit(f"{args.checkpoint}: not a segmenting model")
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    print(f"{predictor.meta['backbone']} on {predictor.device}, input {predictor.meta['input_size']} px; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'forward ms':>11} {'outline ms':>11} {'ratio':>6} {'+gradcam ms':>12} {'ratio':>6}  goal")
    worst = 0.0
    for batch in [int(b) for b in args.batches.split(",")]:
        images = phantoms(batch)
        prepared = predictor.prepare(images)
        x = torch.stack([p.tensor for p in prepared]).to(predictor.device)
        jobs = {
            "forward": lambda x=x: predictor.model(x),
            "outline": lambda i=images, p=prepared: predictor.predict_batch(i, None, prepared=p),
            "gradcam": lambda i=images, p=prepared: predictor.predict_batch(i, "gradcam", prepared=p),
        }
        found = predictor.predict_batch(images, None, prepared=prepared)
        outlined = sum(p.lesion is not None for p in found)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        with torch.no_grad():
            predictor.model(x)  # warm up
        for _ in range(2):
            for name, job in jobs.items():
                with torch.no_grad() if name == "forward" else torch.enable_grad():
                    job()
        order = list(jobs)
        for k in range(args.repeats):
            for name in order[k % 3:] + order[: k % 3]:
                if name == "forward":
                    with torch.no_grad():
                        times[name].append(timed(jobs[name], sync))
                else:
                    times[name].append(timed(jobs[name], sync))
        med = {name: 1000 * statistics.median(v) for name, v in times.items()}
        ratio, with_cam = med["outline"] / med["forward"], med["gradcam"] / med["forward"]
        worst = max(worst, ratio)
        print(f"{batch:>5} {med['forward']:>11.1f} {med['outline']:>11.1f} {ratio:>6.2f} {med['gradcam']:>12.1f} "
              f"{with_cam:>6.2f}  outline <= {GOAL}x forward: {'met' if ratio <= GOAL else 'NOT met'} "
              f"({outlined}/{batch} images outlined)")
    print(f"\nworst outline / forward ratio: {worst:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
