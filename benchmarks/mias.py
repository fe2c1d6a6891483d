"""Mammography benchmark: benign vs malignant ROI crops of mini-MIAS, split by woman, through the real trainer.

The data folder is ``../shared/data/mias/all-mias`` from the project's root
(override with ``--data-dir``); when it is absent the script says so and
exits 0. Nothing is copied: runs read the folder in place and write to a
temporary job store (or ``--out``).

Protocol: the ``mias`` dataset, task ``severity`` (abnormal rows with
coordinates: one crop per lesion, a window holding the whole lesion shrunk to
48 px; ``--fixed-window`` for a plain 48 px window), each crop standardised to its
own mean and spread (``--scan-intensity`` keeps the film's grey levels: a crop's
brightness carries no severity signal here, and a CNN that learns it scores
below chance on held-out women), pair-aware split (mdb001
and mdb002, the two breasts of one woman, always in the same part, and every
crop of a lesion with her), stratified, fractions 0.6 / 0.2 / 0.2. Training sees
each crop in its 8 rotations/mirrors with a shift of up to 3 px, balanced per
abnormality class ('class') and with a weighted loss; the best epoch is chosen
on validation loss; the test part is scored once. With about 19 test lesions
one split is noisy, so several seeds (each its own split) are run and
averaged. The trivial baseline predicts the training part's majority class for
every test crop (accuracy = that class's share of the test part, AUC 0.5).

    python benchmarks/mias.py                  # mammo_cnn, 3 seeds, a few minutes on 2 idle CPU cores
    python benchmarks/mias.py --resnet18       # also ResNet18 on one channel (128 px crops; slower)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mias" / "all-mias"

TRAIN = {"epochs": 6, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "weight_decay": 1e-4,
         "scheduler": "cosine", "input_size": 48, "resize": 48, "hflip": False, "rotation": 0.0,
         "balance": "weighted_loss", "monitor": "val_loss", "patience": 0, "val_frac": 0.2, "test_frac": 0.2,
         "device": "cpu", "workers": 0}
DATASET = {"task": "severity", "crop_size": 48, "augment": True, "jitter": 3, "balance": "class",
           "intensity": "crop"}
SETUPS = {
    "mammo_cnn": ({}, {}, {}),
    "resnet18": ({"dropout": 0.3}, {"crop_size": 128}, {"input_size": 128, "resize": 128, "epochs": 4}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one split and run each")
    ap.add_argument("--epochs", type=int, help="override the epochs of every setup")
    ap.add_argument("--resnet18", action="store_true", help="also train ResNet18 on one channel (slower)")
    ap.add_argument("--fixed-window", action="store_true",
                    help="cut a fixed crop_size window instead of one scaled to hold the whole lesion")
    ap.add_argument("--scan-intensity", action="store_true",
                    help="feed the scan's grey levels instead of standardising each crop (the earlier protocol)")
    return ap.parse_args(argv)


def split_summary(run_dir: Path, dataset) -> dict:
    """Pairs and crops per part, and a check that no woman (pair) is in two parts."""
    from busi_web.data.splits import PARTS, Split

    split = Split.load(run_dir / "split.json", dataset)
    pairs = {p: {dataset.samples[i].group for i in split.part(p)} for p in PARTS}
    straddling = (pairs["train"] & pairs["val"]) | (pairs["train"] & pairs["test"]) | (pairs["val"] & pairs["test"])
    return {"pairs": {p: len(pairs[p]) for p in PARTS}, "counts": split.counts(dataset),
            "pairs_in_two_parts": len(straddling)}


def run_once(store, registry, backbone: str, seed: int, data_dir: Path, epochs: int | None,
             scale_by_radius: bool = True, intensity: str = "crop") -> dict:
    from busi_web.training.params import prepare_run_params
    from busi_web.training.trainer import run_training

    bb_params, ds_extra, train_extra = SETUPS[backbone]
    train = {**TRAIN, **train_extra, "seed": seed, **({"epochs": epochs} if epochs else {})}
    params = prepare_run_params(registry, backbone, "mias", train=train, backbone_params=bb_params,
                                dataset_params={**DATASET, **ds_extra, "scale_by_radius": scale_by_radius,
                                                "intensity": intensity},
                                data_dir=str(data_dir))
    run = store.create_run(backbone, "mias", params, name=f"mias bench {backbone} seed {seed}",
                           data_dir=str(data_dir), modality="mammography")
    start = time.perf_counter()
    final = run_training(store, run["id"], registry=registry)
    if final["status"] != "finished":
        raise SystemExit(f"{backbone} seed {seed}: training {final['status']}: {final.get('error')}")
    run_dir = Path(final["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dataset = registry.dataset("mias").build(params["dataset"], root=str(data_dir))
    split = split_summary(run_dir, dataset)
    counts = split["counts"]
    majority = max(counts["train"], key=counts["train"].get)
    test_n = sum(counts["test"].values())
    return {"backbone": backbone, "seed": seed, "auc": metrics["auc"], "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "n": metrics["n"], "minutes": (time.perf_counter() - start) / 60,
            "baseline_accuracy": counts["test"][majority] / test_n, "majority": majority, "split": split}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / "Info.txt").is_file():
        print(f"skipped: mini-MIAS folder {args.data_dir} (with Info.txt) is absent; pass --data-dir to point at one")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    from busi_web.plugins import load_plugins
    from busi_web.store import JobStore

    registry = load_plugins()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    backbones = ["mammo_cnn"] + (["resnet18"] if args.resnet18 else [])
    with tempfile.TemporaryDirectory(prefix="mias-bench-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        store = JobStore(out / "busi.db", out / "runs")
        rows = []
        for backbone in backbones:
            for seed in seeds:
                r = run_once(store, registry, backbone, seed, args.data_dir, args.epochs, not args.fixed_window,
                             "scan" if args.scan_intensity else "crop")
                rows.append(r)
                s = r["split"]
                print(f"{backbone:<10} seed {seed}: test AUC {r['auc']:.3f}, accuracy {r['accuracy']:.3f} "
                      f"({r['n']} lesions; majority baseline accuracy {r['baseline_accuracy']:.3f}); pairs "
                      f"train/val/test {s['pairs']['train']}/{s['pairs']['val']}/{s['pairs']['test']}, "
                      f"pairs in two parts: {s['pairs_in_two_parts']}; {r['minutes']:.1f} min", flush=True)
    first = rows[0]["split"]["counts"]
    window = "a fixed 48 px window" if args.fixed_window else "a window holding the lesion, shrunk to 48 px"
    window += ", scan grey levels" if args.scan_intensity else ", standardised per crop"
    print(f"\nsplit protocol: task severity (benign vs malignant), one crop per lesion ({window}), grouped by "
          "woman (mdb 2k-1 with 2k), stratified 0.6/0.2/0.2, one split per seed; seed "
          f"{seeds[0]} counts {json.dumps(first)}")
    print(f"{'model':<28}{'test AUC':>18}{'test accuracy':>18}")
    for backbone in backbones:
        mine = [r for r in rows if r["backbone"] == backbone]
        print(f"{backbone:<28}{_mean_sd([r['auc'] for r in mine]):>18}{_mean_sd([r['accuracy'] for r in mine]):>18}")
    base = [r["baseline_accuracy"] for r in rows if r["backbone"] == backbones[0]]
    print(f"{'majority class (baseline)':<28}{'0.500':>18}{_mean_sd(base):>18}")
    print(f"(mean ± sd over seeds {','.join(map(str, seeds))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
