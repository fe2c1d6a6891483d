"""Trainer overhead: images/s of the engine's training epoch against a bare PyTorch loop.

Both sides train the same architecture (built from the same seed) on the
same in-memory batches with the same loss, optimiser, and (on CUDA) the same
mixed precision and memory layout. The bare loop is the plain
``for x, y in batches: forward, loss, backward, step``. The engine's side is
:meth:`busi_web.training.loop.Engine.train_epoch` with everything the trainer
adds per batch: on-device loss / accuracy sums, the stop check after every
batch, and at the ~0.5 s log points a host sync, two metric rows written to
a real SQLite job store and a read of the run's cancel flag.

Measurements interleave (engine, bare, bare, engine, ...) over several
repeats so that drift in the machine's speed hits both sides alike; the table
shows the median images/s of each and their ratio (goal: >= 0.95).

    python benchmarks/train.py                    # CPU: tiny_cnn and resnet18
    python benchmarks/train.py --device cuda --size 112 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from busi_web.plugins import load_plugins  # noqa: E402
from busi_web.training.loop import Engine, build_optimizer, optimizer_step  # noqa: E402
from busi_web.training.params import validate_train_params  # noqa: E402


def make_batches(size: int, batch: int, n_batches: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised phantom images, pre-transformed and batched in memory (the same for both sides)."""
    from busi_web.data.preprocess import PreprocessConfig, eval_transform

    registry = load_plugins()
    n = batch * n_batches
    per_class = max(3, -(-n // 3))
    ds = registry.dataset("phantom").build({"size": max(32, size), "per_class": per_class, "seed": seed})
    tf = eval_transform(PreprocessConfig(input_size=size, resize=size, channels=3))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=g)[:n].tolist()
    xs = torch.stack([tf(ds.load_image(i)) for i in order])
    ys = torch.tensor([ds.samples[i].label for i in order])
    return [(xs[k:k + batch].contiguous(), ys[k:k + batch].contiguous()) for k in range(0, n, batch)]


def bare_epoch(model: nn.Module, opt: torch.optim.Optimizer, crit: nn.Module, batches, device: torch.device,
               amp_dtype: torch.dtype | None, channels_last: bool, scaler) -> int:
    """The reference: a plain loop with nothing but the training step."""
    model.train()
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            loss = crit(model(x), y)
        optimizer_step(loss, opt, scaler)
        seen += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen


class StoreLogger:
    """What the trainer does at a log point: write two metric rows, read the run's cancel flag."""

    def __init__(self, folder: Path):
        self.store = self.run_id = None
        self.calls = 0
        try:
            from busi_web.store import JobStore
        except ImportError:  # store not installed: log points still sync, without the SQLite writes
            return
        self.store = JobStore(folder / "bench.db", folder / "runs")
        self.run_id = self.store.create_run("tiny_cnn", "phantom", {"train": {}, "backbone": {}, "dataset": {}})["id"]

    def __call__(self, row: dict) -> None:
        self.calls += 1
        if self.store is None:
            return
        self.store.add_metrics(self.run_id, [{"epoch": row["epoch"], "step": row["step"], "key": k,
                                              "value": float(row[k])} for k in ("batch_loss", "batch_acc")])
        self.store.get_run(self.run_id).get("cancel_requested")


def bench(backbone: str, size: int, batch: int, n_batches: int, repeats: int, device: torch.device,
          folder: Path) -> dict:
    registry = load_plugins()
    p = validate_train_params({"optimizer": "adam", "lr": 1e-4, "device": str(device)})
    batches = make_batches(size, batch, n_batches)
    weight = torch.tensor([1.0, 1.3, 0.8])

    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = registry.backbone(backbone).build({}, num_classes=3, in_channels=3)
        return model, build_optimizer(model, p)

    model_e, opt_e = build()
    engine = Engine(model_e, opt_e, nn.CrossEntropyLoss(weight=weight), device, amp=True, channels_last=True)
    model_b, opt_b = build()
    # Same placement, precision and layout as the engine chose.
    model_b = model_b.to(device, memory_format=torch.channels_last) if engine.channels_last else model_b.to(device)
    opt_b = build_optimizer(model_b, p)
    crit_b = nn.CrossEntropyLoss(weight=weight).to(device)
    scaler_b = torch.amp.GradScaler("cuda") if engine.scaler is not None else None
    logger = StoreLogger(folder)
    stop = {"flag": False}

    def run_engine() -> float:
        t = time.perf_counter()
        res = engine.train_epoch(batches, on_log=logger, log_interval=0.5, should_stop=lambda: stop["flag"])
        return res.images / (time.perf_counter() - t)

    def run_bare() -> float:
        t = time.perf_counter()
        seen = bare_epoch(model_b, opt_b, crit_b, batches, device, engine.amp_dtype, engine.channels_last, scaler_b)
        return seen / (time.perf_counter() - t)

    run_engine()  # warm-up: allocator, cuDNN autotuning, lazy inits
    run_bare()
    eng, bare = [], []
    for r in range(repeats):
        pair = [(eng, run_engine), (bare, run_bare)]
        for out, fn in pair if r % 2 == 0 else pair[::-1]:
            out.append(fn())
    e, b = statistics.median(eng), statistics.median(bare)
    return {"backbone": backbone, "size": size, "batch": batch, "device": str(device), "images": batch * n_batches,
            "engine": e, "bare": b, "ratio": e / b, "ratios": [x / y for x, y in zip(eng, bare, strict=True)],
            "log_points": logger.calls, "store": logger.store is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backbones", default="tiny_cnn,resnet18")
    ap.add_argument("--size", type=int, default=64, help="input side in pixels")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=12, help="batches per measured pass")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats (a small model needs many)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --device cpu", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"trainer overhead benchmark on {name}; {args.repeats} interleaved repeats, median images/s")
    header = f"{'backbone':<10} {'px':>4} {'batch':>5} {'images':>6} {'engine img/s':>13} {'bare img/s':>11} " \
             f"{'ratio':>6}  per-repeat ratios"
    print(header)
    print("-" * len(header))
    worst = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            r = bench(backbone, args.size, args.batch, args.batches, args.repeats, device, Path(tmp))
            worst = min(worst, r["ratio"])
            print(f"{r['backbone']:<10} {r['size']:>4} {r['batch']:>5} {r['images']:>6} {r['engine']:>13.1f} "
                  f"{r['bare']:>11.1f} {r['ratio']:>6.3f}  " + " ".join(f"{x:.3f}" for x in r["ratios"]), flush=True)
            if not r["store"]:
                print("  (busi_web.store not importable: log points ran without SQLite writes)")
    print(f"worst ratio {worst:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
