"""Explainer speed and memory: our one-pass diagnosis against a bare forward and against pytorch-grad-cam.

For each explainer and batch size, three things are timed side by side, in
interleaved rounds (their order rotates every round, so drift in the
machine's speed hits all three alike), and the medians are printed:

* **ours**: :meth:`busi_web.explain.base.CamExplainer.explain`, i.e. class
  probabilities plus the normalised ``(B, H, W)`` maps, copied to the CPU;
* **forward**: one bare ``model(x)`` under ``torch.no_grad()``;
* **pgc**: pytorch-grad-cam 1.5 (the test-only ``grad-cam`` package) computing
  the same maps for the predicted classes, plus ``softmax`` of its outputs.

``cam`` has no pytorch-grad-cam counterpart: it is compared with pgc's
GradCAM, which gives the same map at the default target layer. Goals for
gradcam, gradcampp, cam, layercam and hirescam at the default target layer
(the end of the feature extractor): ours <= 1.3x forward and <= 0.6x pgc.

Then resident memory (VmRSS) is read before and after ``--leak-runs``
diagnoses through :class:`busi_web.model.predictor.Predictor` (uint8 image in,
probabilities and an original-size heatmap out); goal: growth < 20 MB.

    OMP_NUM_THREADS=2 python benchmarks/explain.py                 # CPU, 224 px, batches 1 and 8
    python benchmarks/explain.py --device cuda                     # GPU: p50 ms per call
    python benchmarks/explain.py --methods scorecam --batches 1 --repeats 1 --leak-runs 0
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

from busi_web.explain.base import resolve_layer  # noqa: E402
from busi_web.explain.methods import METHODS  # noqa: E402
from busi_web.model.checkpoint import CheckpointMeta  # noqa: E402
from busi_web.model.device import resolve_device  # noqa: E402
from busi_web.model.predictor import Predictor  # noqa: E402
from busi_web.plugins import load_plugins  # noqa: E402

FAST = ["gradcam", "gradcampp", "cam", "layercam", "hirescam"]
GOAL_FORWARD, GOAL_PGC, GOAL_RSS_MB = 1.3, 0.6, 20.0


def reference(method: str):
    """The pytorch-grad-cam class for a method (CAM: GradCAM, equal at the default layer), or None."""
    try:
        import pytorch_grad_cam as pgc
    except ImportError:
        return None
    return {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "cam": pgc.GradCAM,
            "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "scorecam": pgc.ScoreCAM}.get(method)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(explainer, model, x, layer, device) -> float:
    sync(device)
    t = time.perf_counter()
    out = explainer.explain(model, x, None, layer)
    out.probs.cpu(), out.maps.cpu()  # the caller gets them on the host (and this waits for the GPU)
    return time.perf_counter() - t


def time_forward(model, x, device) -> float:
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        torch.softmax(model(x), dim=1).cpu()
    return time.perf_counter() - t


def time_pgc(ref_cls, model, x, layer_module, device, batch_size: int) -> float:
    with ref_cls(model=model, target_layers=[layer_module]) as cam:  # hooks only while it runs
        if ref_cls.__name__ == "ScoreCAM":
            cam.batch_size = batch_size
        sync(device)
        t = time.perf_counter()
        maps = cam(x, targets=None)
        torch.softmax(cam.outputs.detach(), dim=1).cpu()
        elapsed = time.perf_counter() - t
    model.zero_grad(set_to_none=True)  # pgc's backward fills every parameter's .grad
    assert maps.shape == (x.shape[0], *x.shape[-2:])
    return elapsed


def bench_batch(model, layer: str, methods: list[str], batch: int, size: int, device, repeats: int, warmup: int,
                score_batch: int) -> list[dict]:
    torch.manual_seed(batch)
    x = torch.randn(batch, 3, size, size, device=device)
    module = resolve_layer(model, layer)
    rows = []
    for name in methods:
        explainer = METHODS[name](**({"batch_size": score_batch} if name == "scorecam" else {}))
        ref = reference(name)
        reps = 1 if name == "scorecam" else repeats
        jobs = {"ours": lambda e=explainer: time_ours(e, model, x, layer, device),
                "forward": lambda: time_forward(model, x, device)}
        if ref is not None:
            jobs["pgc"] = lambda r=ref: time_pgc(r, model, x, module, device, score_batch)
        for _ in range(0 if name == "scorecam" else warmup):
            for job in jobs.values():
                job()
        times: dict[str, list[float]] = {k: [] for k in jobs}
        keys = list(jobs)
        for r in range(reps):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate the order every round
                times[k].append(jobs[k]())
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        # Ratios: the median of each round's own ratio, so that a burst of load from other processes
        # (which hits the neighbouring measurements of one round alike) cancels out.
        fwd = statistics.median(o / f for o, f in zip(times["ours"], times["forward"], strict=True))
        pgc = statistics.median(o / p for o, p in zip(times["ours"], times["pgc"], strict=True)) if ref else None
        pgc_fwd = statistics.median(p / f for p, f in zip(times["pgc"], times["forward"], strict=True)) if ref else None
        rows.append({"method": name, "ours": med["ours"], "forward": med["forward"], "pgc": med.get("pgc"),
                     "ours/fwd": fwd, "ours/pgc": pgc, "pgc/fwd": pgc_fwd, "rounds": reps})
    return rows


def print_table(rows: list[dict], batch: int, device: torch.device) -> None:
    print(f"\nbatch {batch}: median ms per call over {rows[0]['rounds']} interleaved rounds"
          f"{' (scorecam: 1 round)' if any(r['method'] == 'scorecam' for r in rows) else ''}; "
          "ratios are medians of the per-round ratios")
    print(f"{'method':<10} {'ours':>9} {'forward':>9} {'pgc':>9} {'ours/fwd':>9} {'ours/pgc':>9} "
          f"{'pgc/fwd':>8}  goal (<= {GOAL_FORWARD}x fwd, <= {GOAL_PGC}x pgc)")
    for r in rows:
        fwd_ratio = r["ours/fwd"]
        pgc_ratio = r["ours/pgc"] if r["pgc"] else float("nan")
        pgc_fwd = r["pgc/fwd"] if r["pgc"] else float("nan")
        if r["method"] in FAST:
            ok = fwd_ratio <= GOAL_FORWARD and (r["pgc"] is None or pgc_ratio <= GOAL_PGC)
            goal = "met" if ok else "MISSED"
        else:
            goal = "(no goal)"
        pgc = f"{r['pgc']:9.1f}" if r["pgc"] else f"{'-':>9}"
        print(f"{r['method']:<10} {r['ours']:9.1f} {r['forward']:9.1f} {pgc} {fwd_ratio:8.2f}x {pgc_ratio:8.2f}x "
              f"{pgc_fwd:7.2f}x  {goal}")
    if device.type == "cuda":
        print("p50 ms (ours): " + ", ".join(f"{r['method']} {r['ours']:.2f}" for r in rows))


def rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def leak_check(model, backbone: str, size: int, device, runs: int, explainer: str) -> None:
    meta = CheckpointMeta(backbone=backbone, classes=["benign", "malignant", "normal"], input_size=size,
                          resize=size * 8 // 7)
    predictor = Predictor(model, meta, load_plugins(), device=device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300 + 7 * i, 280 + 5 * i), dtype=np.uint8) for i in range(8)]
    for i in range(20):  # warm up: allocator pools, lazy imports
        predictor.predict(images[i % 8], explainer=explainer)
    start = rss_mb()
    if start is None:
        print("\nresident memory: /proc/self/status not readable here; skipped")
        return
    marks = []
    t = time.perf_counter()
    for i in range(runs):
        predictor.predict(images[i % 8], explainer=explainer)
        if (i + 1) % max(1, runs // 4) == 0:
            marks.append(f"{i + 1}: {rss_mb() - start:+.1f}")
    growth = rss_mb() - start
    per = (time.perf_counter() - t) / max(1, runs) * 1000
    print(f"\nresident memory over {runs} diagnoses ({explainer}, Predictor.predict on ~300x280 uint8 images, "
          f"{per:.0f} ms each): start {start:.0f} MB, growth {growth:+.1f} MB (goal < {GOAL_RSS_MB:.0f} MB: "
          f"{'met' if growth < GOAL_RSS_MB else 'MISSED'}); after " + ", ".join(marks))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--backbone", default="resnet50_cbam")
    ap.add_argument("--placement", default="end", choices=["end", "blocks"], help="for resnet50_cbam")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--methods", default=",".join(FAST),
                    help="comma-separated; add scorecam (one round: 2048 masked forwards per image)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: 9 CPU, 50 GPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--score-batch", type=int, default=64, help="Score-CAM's masked images per forward")
    ap.add_argument("--leak-runs", type=int, default=1000, help="diagnoses for the memory check (0: skip)")
    ap.add_argument("--leak-explainer", default="gradcam")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    repeats = args.repeats or (50 if device.type == "cuda" else 9)
    spec = load_plugins().backbone(args.backbone)
    params = {"cbam_placement": args.placement} if args.backbone == "resnet50_cbam" else {}
    torch.manual_seed(0)
    model = spec.build(params, num_classes=3, in_channels=3).to(device).eval()
    layer = getattr(model, "target_layer", "") or spec.target_layer
    import pytorch_grad_cam  # noqa: F401  (fail early: the comparison is the point)

    print(f"busi-web explainer benchmark: {args.backbone}"
          f"{f' (cbam_placement {args.placement})' if params else ''}, default target layer {layer!r}, "
          f"{args.size}x{args.size}, device {device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; pytorch-grad-cam "
          f"{getattr(sys.modules['pytorch_grad_cam'], '__version__', '1.5.x')}")
    for batch in args.batches:
        rows = bench_batch(model, layer, methods, batch, args.size, device, repeats, args.warmup, args.score_batch)
        print_table(rows, batch, device)
    if args.leak_runs > 0:
        leak_check(model, args.backbone, args.size, device, args.leak_runs, args.leak_explainer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
