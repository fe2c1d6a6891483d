"""Trust on real data: does the out-of-distribution warning separate BUSI from what is not BUSI, and does
temperature scaling make the probabilities honest?

A BUSI model (the recommended recipe, shortened with ``--epochs``; or a trained run folder with
``--reuse-run``) carries its temperature and its feature reference, both fitted by the trainer (temperature
and threshold on the validation part, reference on the training part). Side by side in one run:

* the out-of-distribution score of BUSI validation and test images (in distribution), against
  mini-MIAS mammograms, synthetic ultrasound phantoms, and natural-looking colour images and blank frames
  that this script draws: the AUROC of each pair, and the share of each set above the 95th percentile of
  the validation scores (the trainer's threshold) and above the 99th;
* the expected calibration error (10 bins) of the BUSI validation and test parts, before and after the
  model's temperature, and after a temperature fitted without its floor of 1 (sharpening allowed down to
  0.5), from the model's own predictions.

``../shared/data`` (BUSI and mini-MIAS) is read in place; when it is absent the script says so and exits 0.

    python benchmarks/ood_calibration.py                    # train 12 epochs of the recipe (~6 min on 2 cores)
    python benchmarks/ood_calibration.py --reuse-run DIR    # a trained BUSI run folder
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED / "busi" / "Dataset_BUSI_with_GT")
    ap.add_argument("--mias-dir", type=Path, default=SHARED / "mias" / "all-mias")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ood_calibration")
    ap.add_argument("--epochs", type=int, default=12, help="epochs of the recipe when training (default 12)")
    ap.add_argument("--reuse-run", type=Path, help="a trained BUSI run folder instead of training")
    ap.add_argument("--per-set", type=int, default=100, help="images per out-of-distribution set")
    ap.add_argument("--seed", type=int, help="the recipe's seed (it also draws the split) when training")
    return ap.parse_args(argv)


def train(args: argparse.Namespace, registry) -> Path:
    from busi_web.store import JobStore
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training

    rec = registry.dataset("busi").recommended or {}
    backbone = rec.get("backbone", "resnet18")
    train_params = {**(rec.get("train") or {}), "epochs": args.epochs}
    if args.seed is not None:
        train_params["seed"] = args.seed
    params = prepare_run_params(registry, backbone, "busi", train=train_params,
                                backbone_params=dict(rec.get("backbone_params") or {}), data_dir=str(args.data_dir))
    store = JobStore(args.out / "busi.db", args.out / "runs")
    run = store.create_run(backbone, "busi", params, name="ood/calibration benchmark", data_dir=str(args.data_dir))
    start = time.perf_counter()
    final = run_training(store, run["id"], registry=registry,
                         progress=lambda e: print(e["line"], flush=True) if e.get("type") == "log" else None)
    print(f"training {final['status']} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    if final["status"] != "finished":
        raise SystemExit(f"training {final['status']}: {final.get('error')}")
    return Path(final["run_dir"])


def natural_images(n: int, seed: int = 0, size: int = 256) -> list[np.ndarray]:
    """Colour scenes a camera might take (a sky gradient, a textured ground, a few bright shapes) and, for
    every tenth, a blank frame of one grey level."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(np.full((size, size, 3), rng.integers(0, 256), np.uint8))
            continue
        sky, ground = rng.uniform(60, 255, 3), rng.uniform(20, 200, 3)
        horizon = rng.uniform(0.35, 0.75)
        t = np.clip((yy - horizon) * 8, 0, 1)[..., None]
        img = (1 - t) * (sky * (1 - 0.5 * yy[..., None])) + t * ground
        img += rng.normal(0, 12, (size, size, 1)) * t  # ground texture
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.15)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def scores(predictor, images: list[np.ndarray]) -> np.ndarray:
    found = []
    for start in range(0, len(images), 16):
        for pred in predictor.predict_batch(images[start:start + 16], explainer=None):
            found.append(pred.ood["score"])
    return np.asarray(found)


def part_predictions(predictor, ds, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (the model's indices), raw and calibrated probabilities of the samples ``indices``."""
    classes = predictor.classes
    to_model = [classes.index(c) for c in ds.classes]
    y, raw, cal = [], [], []
    temperature = predictor.temperature
    for start in range(0, len(indices), 16):
        chunk = indices[start:start + 16]
        images = [ds.load_image(i) for i in chunk]
        predictor.temperature = None
        raw += [[p.probabilities[c] for c in classes] for p in predictor.predict_batch(images, explainer=None)]
        predictor.temperature = temperature
        cal += [[p.probabilities[c] for c in classes] for p in predictor.predict_batch(images, explainer=None)]
        y += [to_model[ds.samples[i].label] for i in chunk]
    return np.asarray(y), np.asarray(raw), np.asarray(cal)


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir.is_dir() or not args.mias_dir.is_dir():
        print(f"skipped: {args.data_dir} or {args.mias_dir} is absent (../shared/data is not here)")
        return 0
    import torch
    from sklearn.metrics import roc_auc_score

    from busi_web.data.datasets import read_image
    from busi_web.data.splits import Split
    from busi_web.model.calibration import apply_temperature, expected_calibration_error, fit_temperature
    from busi_web.model.predictor import Predictor
    from busi_web.plugins import load_plugins

    torch.set_num_threads(max(1, torch.get_num_threads()))
    registry = load_plugins()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.reuse_run or train(args, registry)
    predictor = Predictor.from_checkpoint(run_dir / "best_model.pt", registry)
    if predictor.ood is None or predictor.temperature is None:
        raise SystemExit(f"{run_dir} was trained before models kept a temperature and a feature reference; "
                         "train a new one (omit --reuse-run)")
    busi = registry.dataset("busi").build(predictor.dataset_params, root=str(args.data_dir))
    split = Split.load(run_dir / "split.json", busi)
    rng = np.random.default_rng(0)
    mias = registry.dataset("mias").build({}, root=str(args.mias_dir))
    scans = sorted({s.path for s in mias.samples if s.path})
    picked = [scans[i] for i in rng.permutation(len(scans))[:args.per_set]]
    phantoms = registry.dataset("phantom").build({"size": 256, "per_class": args.per_set // 3 + 1, "seed": 5})
    sets = {
        "BUSI validation": [busi.load_image(i) for i in split.val],
        "BUSI test": [busi.load_image(i) for i in split.test],
        "mini-MIAS mammograms": [read_image(p) for p in picked],
        "phantoms": [phantoms.load_image(i) for i in range(min(args.per_set, len(phantoms)))],
        "natural images and blank frames": natural_images(args.per_set),
    }
    found = {name: scores(predictor, images) for name, images in sets.items()}
    threshold = predictor.ood.threshold
    inside = found["BUSI validation"]
    # Side by side: the 95th percentile of validation (the trainer's rule) and the 99th (the first rule tried).
    at95, at99 = float(np.quantile(inside, 0.95)), float(np.quantile(inside, 0.99))
    rows = []
    for name, s in found.items():
        auroc = None if name.startswith("BUSI") else float(roc_auc_score(
            np.r_[np.zeros(len(inside)), np.ones(len(s))], np.r_[inside, s]))
        rows.append({"set": name, "n": len(s), "median_score": float(np.median(s)),
                     "flagged": float((s > threshold).mean()), "flagged_at_95th": float((s > at95).mean()),
                     "flagged_at_99th": float((s > at99).mean()),
                     "auroc_vs_busi_val": auroc, "scores": [round(float(v), 4) for v in s]})
    parts = {part: part_predictions(predictor, busi, indices)
             for part, indices in (("validation", split.val), ("test", split.test))}
    # The other rule, side by side: a temperature that may also sharpen (fitted on the same validation part).
    sharpen_t = fit_temperature(parts["validation"][1], parts["validation"][0], low=0.5)
    calibration = {}
    for part, (y, raw, cal) in parts.items():
        sharp = apply_temperature(raw, sharpen_t)
        calibration[part] = {"n": len(y), "ece_before": expected_calibration_error(raw, y),
                             "ece_after": expected_calibration_error(cal, y),
                             "ece_may_sharpen": expected_calibration_error(sharp, y),
                             "nll_before": _nll(raw, y), "nll_after": _nll(cal, y), "nll_may_sharpen": _nll(sharp, y),
                             "accuracy": float((cal.argmax(1) == y).mean())}
    print(f"\nmodel: {run_dir} (temperature {predictor.temperature:.3f}, OOD threshold {threshold:.3f} on "
          f"{predictor.ood.layer}, {len(predictor.ood.variances)} components)")
    print(f"\n{'set':<34}{'n':>5}{'median score':>14}{'above 95th pct':>16}{'above 99th pct':>16}"
          f"{'AUROC vs BUSI val':>19}")
    for r in rows:
        auroc = "—" if r["auroc_vs_busi_val"] is None else f"{r['auroc_vs_busi_val']:.3f}"
        print(f"{r['set']:<34}{r['n']:>5}{r['median_score']:>14.2f}{100 * r['flagged_at_95th']:>15.1f}%"
              f"{100 * r['flagged_at_99th']:>15.1f}%{auroc:>19}")
    print(f"(percentiles of the validation scores: 95th {at95:.3f}, 99th {at99:.3f}; the model's own threshold, "
          f"{threshold:.3f}, is its {100 * predictor.ood.quantile:.0f}th)")
    print(f"\nECE (10 bins) and NLL: before; after the model's temperature T = {predictor.temperature:.3f}; after "
          f"a temperature that may sharpen, T = {sharpen_t:.3f}")
    print(f"{'part':<12}{'n':>5}{'ECE before':>12}{'after':>8}{'ratio':>8}{'sharpen':>9}{'NLL before':>12}"
          f"{'after':>8}{'sharpen':>9}")
    for part, c in calibration.items():
        ratio = c["ece_after"] / c["ece_before"] if c["ece_before"] else float("nan")
        print(f"{part:<12}{c['n']:>5}{c['ece_before']:>12.3f}{c['ece_after']:>8.3f}{ratio:>8.2f}"
              f"{c['ece_may_sharpen']:>9.3f}{c['nll_before']:>12.3f}{c['nll_after']:>8.3f}{c['nll_may_sharpen']:>9.3f}")
    summary = {"run_dir": str(run_dir), "temperature": predictor.temperature, "may_sharpen_temperature": sharpen_t,
               "threshold": threshold, "threshold_95th": at95, "threshold_99th": at99, "ood": rows,
               "calibration": calibration}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
