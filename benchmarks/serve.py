"""Serving throughput: concurrent diagnoses over HTTP against the Predictor's own batched throughput.

In a temporary instance folder this script

1. trains a small tiny_cnn on phantoms in-process (or saves an untrained one
   with ``--untrained``) and makes it the active model;
2. measures the **in-process baseline**: :meth:`Predictor.predict_batch` on
   batches of ``--batch`` decoded phantom images with the explainer, in images/s
   (measured before the server starts and again after it stops; the mean is used);
3. starts a real gunicorn (``busi_web/gunicorn_conf.py``: one gthread worker,
   ``--threads`` threads) on 127.0.0.1 and lets ``--clients`` client threads
   send ``POST /api/predict`` with one PNG phantom each (an API token for auth;
   the answer carries probabilities and, by default, the original and the heatmap as base64 PNGs, what the
   Diagnose page asks for) for ``--seconds``;
4. prints requests, throughput (diagnoses/s), p50 and p99 latency, errors, the
   ratio of served throughput to the baseline (goal: 0 errors, ratio >= 0.9),
   and where the time went: per stage of a diagnosis request (decoding, the
   model card's provenance, preparing and waiting for the model, rendering
   and encoding the PNGs, the audit rows, the JSON answer) as the request
   thread's CPU and wall time, read from the server's own ``/metrics``.

The server batches concurrent requests into shared forward passes
(:mod:`busi_web.diagnosis.batching`), which is what lets it approach the
batched baseline. The client runs in this process, on the same machine: on a
small machine it takes CPU from the server, which the ratio includes.

The default model is a ResNet18 at 224 px, the size of a served ultrasound
model. Every request also costs a few milliseconds of CPU that no batch
shares (HTTP, multipart parsing, PNG decoding and encoding, base64, JSON, the
audit row); with a model as small as ``tiny_cnn`` at 112 px (about 2 ms of
CPU per image on two cores) that fixed cost dominates and the ratio says so.

    python benchmarks/serve.py                       # 16 clients, 30 s, resnet18 at 224 px, gradcam
    python benchmarks/serve.py --backbone tiny_cnn --input-size 112 --image-size 128   # per-request overhead
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from serving_load import (  # noqa: E402 - the server and its clients
    METRICS_TOKEN,
    cpu_seconds,
    free_port,
    load,
    machine_cpu_seconds,
    multipart,
    request,
    scrape,
    start_server,
    tree_usage,
    usage,
    wait_up,
)

GOAL_RATIO = 0.9
GOAL_OVERHEAD_MS = 12.0  # server CPU per diagnosis beyond the model's passes, with 16 clients
STAGES = ("decode", "provenance", "model", "render", "audit", "respond")


def breakdown(before: dict, after: dict, diagnoses: int, server_cpu: float) -> list[str]:
    """Where a diagnosis's time went: per stage of the request thread (its own CPU, and wall time), the shared
    passes of the micro-batcher, and what no stage covers (HTTP, multipart parsing, the login check, ...)."""
    def delta(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    n = max(1, diagnoses)
    lines = [f"{'stage':<12}{'CPU ms':>9}{'wall ms':>10}   per diagnosis (request threads)"]
    staged = 0.0
    for name in STAGES:
        cpu, wall = delta("busi_web_diagnosis_stage_seconds_total", stage=name, clock="cpu"), \
            delta("busi_web_diagnosis_stage_seconds_total", stage=name, clock="wall")
        staged += cpu
        lines.append(f"{name:<12}{1000 * cpu / n:>9.1f}{1000 * wall / n:>10.1f}")
    busy = delta("busi_web_predict_busy_seconds_total")
    busy_cpu = delta("busi_web_predict_busy_cpu_seconds_total")
    images = delta("busi_web_predict_images_total") or n
    lines.append(f"{'passes':<12}{1000 * busy_cpu / n:>9.1f}{1000 * busy / images:>10.1f}   the batcher's shared "
                 "passes, per image (CPU: the batcher thread's own)")
    whole = delta("busi_web_http_request_cpu_seconds_total", method="POST", route="/api/predict")
    lines.append(f"{'request':<12}{1000 * whole / n:>9.1f}{'':>10}   the request thread from the app's first to its "
                 f"last step ({1000 * (whole - staged) / n:.1f} outside the stages: login check, form, options, "
                 "the model's verdict, keeping the report, ...)")
    rest = server_cpu - whole - busy_cpu
    lines.append(f"server CPU {1000 * server_cpu / n:.1f} ms per diagnosis: {1000 * whole / n:.1f} on the request "
                 f"threads inside the app, {1000 * busy_cpu / n:.1f} on the batcher thread, {1000 * rest / n:.1f} "
                 "on every other thread (the model's worker threads, gunicorn reading and writing HTTP)")
    return lines


def make_model(inst: Path, args) -> int:
    """Train (or save untrained) a ``--backbone`` run in the instance's store, promote it; returns its run id."""
    from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint
    from busi_web.plugins import load_plugins
    from busi_web.store import JobStore
    from busi_web.store.passwords import one_time_password
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training

    registry = load_plugins()
    store = JobStore(inst / "busi.db", inst / "runs")
    train = {"epochs": args.train_epochs, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw",
             "input_size": args.input_size, "resize": args.input_size + args.input_size // 8, "device": "cpu",
             "patience": 100, "workers": 0}
    data = {"size": args.image_size, "per_class": 30, "seed": 0}
    params = prepare_run_params(registry, args.backbone, "phantom", train=train, dataset_params=data)
    run = store.create_run(args.backbone, "phantom", params, name="serve benchmark")
    if args.untrained:
        model = registry.backbone(args.backbone).build({}, num_classes=3, in_channels=3)
        meta = CheckpointMeta(backbone=args.backbone, classes=["benign", "malignant", "normal"],
                              input_size=train["input_size"], resize=train["resize"], dataset="phantom",
                              extra={"run_id": run["id"]})
        save_checkpoint(Path(run["run_dir"]) / "best_model.pt", model, meta)
        store.transition(run["id"], "running")
        store.transition(run["id"], "finished")
    else:
        t0 = time.perf_counter()
        done = run_training(store, run["id"], registry)
        if done["status"] != "finished":
            raise SystemExit(f"training the benchmark model failed: {done['error']}")
        print(f"trained {args.backbone} for {args.train_epochs} epochs in {time.perf_counter() - t0:.0f} s "
              f"(test macro-F1 {done.get('test_macro_f1') or 0:.2f})")
    store.set_default(run["id"], by="benchmark", reason="the model this benchmark serves")
    store.add_user("bench", "clinician", one_time_password())
    return run["id"]


def phantoms(n: int, size: int) -> list[np.ndarray]:
    from busi_web.plugins import load_plugins

    ds = load_plugins().dataset("phantom").build({"size": size, "per_class": -(-n // 3), "seed": 11})
    return [ds.load_image(i) for i in range(n)]


def baseline(checkpoint: str, images: list[np.ndarray], batch: int, explainer: str, seconds: float) -> list[float]:
    """Images/s of Predictor.predict_batch on full batches, per round of about a second, after a warm-up."""
    from busi_web.model.predictor import Predictor
    from busi_web.plugins import load_plugins

    predictor = Predictor.from_checkpoint(checkpoint, load_plugins())
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    predictor.predict_batch(batches[0], explainer)
    rounds, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            for b in batches:
                predictor.predict_batch(b, explainer)
                done += len(b)
        rounds.append(done / (time.perf_counter() - t0))
    return rounds


def model_cpu_ms(checkpoint: str, images: list[np.ndarray], batch: int, explainer: str, seconds: float
                 ) -> tuple[float, float, float]:
    """CPU milliseconds (all of this process's threads), of which system time, and minor page faults per image
    of Predictor.predict_batch on batches of ``batch``: what the model's forward and backward passes cost,
    without any serving."""
    from busi_web.model.predictor import Predictor
    from busi_web.plugins import load_plugins

    predictor = Predictor.from_checkpoint(checkpoint, load_plugins())
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)] or [images[:batch]]
    predictor.predict_batch(batches[0], explainer)
    done, use0, end = 0, usage(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        for b in batches:
            predictor.predict_batch(b, explainer)
            done += len(b)
    used, n = [b - a for a, b in zip(use0, usage(), strict=True)], max(1, done)
    return 1000 * (used[0] + used[1]) / n, 1000 * used[1] / n, used[2] / n


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=16, help="gunicorn threads (THREADS)")
    ap.add_argument("--explainer", default="gradcam")
    ap.add_argument("--images", default="original,heatmap",
                    help="PNGs each answer carries (the Diagnose page asks for original,heatmap; API default: "
                         "original,overlay,heatmap)")
    ap.add_argument("--backbone", default="resnet18", help="the served model (trained briefly unless --untrained)")
    ap.add_argument("--image-size", type=int, default=256, help="side of the phantom PNGs sent")
    ap.add_argument("--input-size", type=int, default=224, help="the model's input side")
    ap.add_argument("--batch", type=int, default=16, help="batch size of the in-process baseline")
    ap.add_argument("--batch-wait-ms", type=float, default=0, help="the server's BATCH_WAIT_MS")
    ap.add_argument("--batch-max", type=int, default=32, help="the server's BATCH_MAX_IMAGES")
    ap.add_argument("--baseline-seconds", type=float, default=5.0)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="the server's TORCH_THREADS (0: torch's default); the model's own CPU is measured with the "
                         "same number")
    ap.add_argument("--workers", type=int, default=1, help="gunicorn workers (WORKERS)")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--untrained", action="store_true", help="save an untrained model instead of training one")
    args = ap.parse_args(argv)

    import torch

    from busi_web.gunicorn_conf import tune_malloc

    # The model's own cost is measured at its cheapest: with glibc's malloc reusing the activations' memory from
    # pass to pass (its default moves its thresholds as blocks come and go, and some runs fault on every pass).
    tune_malloc(32 << 20, 0, 256 << 20)

    print(f"serve benchmark: {args.clients} clients x {args.seconds:g} s, gunicorn gthread {args.workers} worker(s) x "
          f"{args.threads} threads, {args.backbone} @ {args.input_size} px, {args.explainer}, "
          f"{args.image_size} px PNG phantoms; CPU, torch {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="busi-serve-") as tmp:
        inst = Path(tmp) / "instance"
        run_id = make_model(inst, args)
        checkpoint = str(next((inst / "runs").glob(f"*_{run_id}")) / "best_model.pt")
        images = phantoms(max(args.batch * 2, 32), args.image_size)
        pngs = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            pngs.append(buf.getvalue())
        bodies = [multipart(p, f"phantom_{i}.png", args.explainer, args.images) for i, p in enumerate(pngs)]
        before = baseline(checkpoint, images, args.batch, args.explainer, args.baseline_seconds)
        print(f"in-process baseline (batch {args.batch}), before serving: median {statistics.median(before):.1f} "
              f"images/s over {len(before)} rounds", flush=True)

        from busi_web.store import JobStore

        token = JobStore(inst / "busi.db", inst / "runs").create_token("bench", "benchmark")
        headers = {"Authorization": f"Bearer {token}"}
        port = free_port()
        log = Path(tmp) / "gunicorn.log"
        proc = start_server(inst, port, args.threads, log, {
            "BUSI_WEB_METRICS_TOKEN": METRICS_TOKEN, "BUSI_WEB_BATCH_WAIT_MS": str(args.batch_wait_ms),
            "BUSI_WEB_BATCH_MAX_IMAGES": str(args.batch_max), "BUSI_WEB_TORCH_THREADS": str(args.torch_threads),
            "WORKERS": str(args.workers)})
        try:
            wait_up(port, headers, proc)
            warm = load(port, headers, bodies, args.clients, 2.0)  # model load, thread start, caches
            if warm["errors"]:
                print(f"warm-up errors: {warm['errors'][:3]}")
            _, health = request(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "GET", "/api/health",
                                headers)
            stats0 = json.loads(health).get("predict", {})
            metrics0 = scrape(port)
            use0 = tree_usage(proc.pid)
            cpu0 = (sum(use0[:2]), cpu_seconds(), machine_cpu_seconds())
            result = load(port, headers, bodies, args.clients, args.seconds)
            served_use = [b - a for a, b in zip(use0, tree_usage(proc.pid), strict=True)]
            cpu = (sum(served_use[:2]), cpu_seconds() - cpu0[1], machine_cpu_seconds() - cpu0[2])
            metrics1 = scrape(port)
            _, health = request(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "GET", "/api/health",
                                headers)
            stats = {k: v - stats0.get(k, 0) for k, v in json.loads(health).get("predict", {}).items()}
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        after = baseline(checkpoint, images, args.batch, args.explainer, args.baseline_seconds)
        print(f"in-process baseline (batch {args.batch}), after serving:  median {statistics.median(after):.1f} "
              f"images/s over {len(after)} rounds")
        # The model's own CPU per image at the batch size the server reached: the rest of the server's CPU per
        # diagnosis is what serving costs.
        served_batch = max(1, round(stats["images"] / stats["batches"])) if stats.get("batches") else 1
        threads = torch.get_num_threads()
        torch.set_num_threads(args.torch_threads or threads)
        model_ms, model_sys_ms, model_faults = model_cpu_ms(checkpoint, images, served_batch, args.explainer,
                                                            args.baseline_seconds)
        torch.set_num_threads(threads)
        server_log = log.read_text(errors="replace")

    lat = result["latencies"]
    served = len(lat) / result["elapsed"]
    base = statistics.median(before + after)
    ratio = served / base if base else float("nan")
    errors = result["errors"]
    print(json.dumps({"requests": len(lat), "errors": len(errors), "seconds": round(result["elapsed"], 1)}))
    print(f"throughput {served:.1f} diagnoses/s   p50 {percentile(lat, 50) * 1000:.0f} ms   "
          f"p99 {percentile(lat, 99) * 1000:.0f} ms   mean {statistics.fmean(lat) * 1000 if lat else 0:.0f} ms")
    others = max(0.0, cpu[2] - cpu[0] - cpu[1]) / result["elapsed"]
    print(f"CPU use during the load: server {cpu[0] / result['elapsed']:.2f} cores, clients "
          f"{cpu[1] / result['elapsed']:.2f} cores, other processes {others:.2f} cores (of {os.cpu_count()})")
    if others > 0.25:
        print("WARNING: other processes were busy on this machine; the figures (and the ratio) are unreliable")
    if stats.get("batches"):
        print(f"server batching: {stats['images']} images in {stats['batches']} passes "
              f"(mean batch {stats['images'] / stats['batches']:.1f}); the model was busy "
              f"{100 * stats.get('busy_s', 0) / result['elapsed']:.0f}% of the time")
    if args.workers == 1:
        print("\n".join(breakdown(metrics0, metrics1, len(lat), cpu[0])))
    else:  # each worker keeps its own counters, and a scrape reaches one of them
        print(f"(per-stage breakdown: run with --workers 1; server CPU {1000 * cpu[0] / max(1, len(lat)):.1f} ms per "
              "diagnosis over all workers)")
    print(f"in-process baseline: {1000 / base:.1f} ms of wall time per image in full batches (all cores)")
    n = max(1, len(lat))
    print(f"system CPU and minor page faults per diagnosis: server {1000 * served_use[1] / n:.1f} ms, "
          f"{served_use[2] / n:.0f} faults; the model's passes alone {model_sys_ms:.1f} ms, {model_faults:.0f} faults")
    server_ms = 1000 * cpu[0] / n
    overhead = server_ms - model_ms
    print(f"server CPU beyond the model: {overhead:.1f} ms per diagnosis (server {server_ms:.1f} ms - the model's "
          f"passes {model_ms:.1f} ms per image at batch {served_batch}, measured in-process)   goal <= "
          f"{GOAL_OVERHEAD_MS:g} ms: {'met' if overhead <= GOAL_OVERHEAD_MS else 'NOT met'}")
    print(f"errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"baseline {base:.1f} images/s   ratio served/baseline {ratio:.2f}   "
          f"goal: 0 errors, ratio >= {GOAL_RATIO}: {'met' if not errors and ratio >= GOAL_RATIO else 'NOT met'}")
    if errors and "Traceback" in server_log:
        print("server log tail:\n" + server_log[-2000:])
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
