"""Quality on real data: train the recommended BUSI recipe from scratch, then evaluate it on its test part.

The data folder is ``../shared/data/busi/Dataset_BUSI_with_GT`` from the
project's root (override with ``--data-dir``); when it is absent the script
says so and exits 0. Nothing is copied: the run reads the folder in place.

Protocol: the run's own duplicate-aware split (near-duplicates by perceptual
hash joined into groups, whole groups dealt to train / val / test, stratified
by class, seed and fractions from the recipe). The best epoch is chosen on
validation macro-F1; the test part is touched once, by the evaluation. The
evaluation report (accuracy, macro-F1, per-class numbers, AUC, confusion
matrix, heatmap localisation against chance, shortcut check) is written into
the run folder under ``evaluations/``, and a summary to ``--out``.

    python benchmarks/quality.py                      # the CPU recipe, about 40 minutes on 2 cores
    python benchmarks/quality.py --epochs 2           # a quick smoke run
    python benchmarks/quality.py --reuse-run DIR      # only evaluate an already trained run folder
    python benchmarks/quality.py --train-only --param ema=0.99 --out DIR   # one point of a recipe sweep
    python benchmarks/quality.py --train-only --split-from RUN_DIR --param seed=43 --out DIR   # training noise
    python benchmarks/quality.py --train-only --naive-split --out DIR   # the leaky protocol, to measure the leak
    python benchmarks/quality.py --train-only --backbone-param output_stride=16 --out DIR   # a backbone option
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override any training parameter of the recipe")
    ap.add_argument("--backbone", help="override the recipe's backbone")
    ap.add_argument("--backbone-param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a backbone parameter of the recipe (e.g. output_stride=16)")
    ap.add_argument("--explainers", default="", help="comma-separated explainers (default: every one)")
    ap.add_argument("--scorecam-maps", type=int, default=20,
                    help="images Score-CAM maps (one forward per channel: seconds per image on a CPU); -1: all")
    ap.add_argument("--reuse-run", type=Path, help="evaluate this trained run folder instead of training")
    ap.add_argument("--naive-split", action="store_true",
                    help="split by class only, ignoring near-duplicates (the leaky protocol, to measure the leak)")
    ap.add_argument("--split-from", type=Path, metavar="RUN_DIR",
                    help="train on this run's split.json (same parts; the seed then only changes the initial "
                         "weights, augmentation and shuffling)")
    ap.add_argument("--train-only", action="store_true",
                    help="train and stop (recipe sweeps pick by validation; the run still logs its test numbers)")
    return ap.parse_args(argv)


def param_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict, parsed as the CLI's ``--param`` is; a malformed pair ends the script."""
    from busi_web.cli.common import parse_params
    from busi_web.errors import UserError

    try:
        return parse_params(tuple(pairs))
    except UserError as exc:
        raise SystemExit(str(exc)) from None


def train_to_the_end(store, run_id: int, registry) -> Path:
    """Train run ``run_id`` of ``store`` here, printing its log lines; returns its folder, or ends the script when
    the run does not finish."""
    from busi_web.training.trainer import run_training

    def progress(event: dict) -> None:
        if event.get("type") == "log":
            print(event["line"], flush=True)

    start = time.perf_counter()
    final = run_training(store, run_id, registry=registry, progress=progress)
    print(f"training {final['status']} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    if final["status"] != "finished":
        raise SystemExit(f"training {final['status']}: {final.get('error')}")
    return Path(final["run_dir"])


def train(args: argparse.Namespace, registry) -> Path:
    """Train the recipe as a run in a benchmark-local job store; returns the run folder."""
    from busi_web.store import JobStore
    from busi_web.training.params import prepare_run_params

    rec = registry.dataset("busi").recommended or {}
    backbone = args.backbone or rec.get("backbone", "resnet18")
    train_params = dict(rec.get("train") or {})
    if args.epochs:
        train_params["epochs"] = args.epochs
    train_params.update(param_pairs(args.param))
    bb_params = dict(rec.get("backbone_params") or {}) if backbone == rec.get("backbone") else {}
    bb_params.update(param_pairs(args.backbone_param))
    params = prepare_run_params(registry, backbone, "busi", train=train_params, backbone_params=bb_params,
                                data_dir=str(args.data_dir))
    store = JobStore(args.out / "busi.db", args.out / "runs")
    run = store.create_run(backbone, "busi", params, name="quality benchmark", data_dir=str(args.data_dir))
    print(f"run {run['id']}: {backbone} {params['backbone']} on busi, training {params['train']}", flush=True)
    if args.naive_split:
        print(naive_split(registry, args.data_dir, params["train"], Path(run["run_dir"])), flush=True)
    elif args.split_from:
        shutil.copyfile(args.split_from / "split.json", Path(run["run_dir"]) / "split.json")
        print(f"the split of {args.split_from}", flush=True)

    return train_to_the_end(store, run["id"], registry)


def naive_split(registry, data_dir: Path, train_params: dict, run_dir: Path) -> str:
    """Write the run's split.json as a split by class alone: near-duplicates may sit on both sides.

    The trainer reuses a split.json it finds in the run folder. This is the
    leaky protocol, kept only to measure how much the leak inflates the test
    numbers; returns a line saying how many test images have a near-duplicate
    in the training part.
    """
    from busi_web.data.splits import near_duplicate_groups, split_dataset
    from busi_web.store.run_files import write_json

    ds = registry.dataset("busi").build({}, root=str(data_dir))
    groups = near_duplicate_groups(ds)
    ds.has_duplicates = False  # the splitter then deals every image on its own
    split = split_dataset(ds, train_params["val_frac"], train_params["test_frac"], train_params["seed"])
    write_json(run_dir / "split.json", {**split.to_dict(), "threshold": None, "protocol": "naive"})
    leaked = len(split.twins_of_training(groups))
    return (f"naive split (near-duplicates ignored): {leaked} of {len(split.test)} test images have a "
            f"near-duplicate in the training part")


def split_protocol(run_dir: Path) -> dict:
    """Seed, fractions, duplicate threshold, group count and the per-part class counts of the run."""
    split = json.loads((run_dir / "split.json").read_text())
    params = json.loads((run_dir / "params.json").read_text())
    return {"protocol": split.get("protocol", "duplicate-aware"), "seed": split["seed"],
            "val_frac": split["val_frac"], "test_frac": split["test_frac"],
            "phash_threshold": split["threshold"], "duplicate_groups": len(split["groups"]),
            "images_in_groups": sum(len(g) for g in split["groups"]), "counts": params.get("counts")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_split and args.split_from:
        raise SystemExit("give --naive-split or --split-from, not both")
    if args.split_from and not (args.split_from / "split.json").is_file():
        raise SystemExit(f"{args.split_from} has no split.json: give the folder of a run")
    if not args.data_dir.is_dir():
        print(f"skipped: BUSI folder {args.data_dir} is absent (pass --data-dir to point at one)")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    from busi_web.plugins import load_plugins

    registry = load_plugins()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.reuse_run or train(args, registry)
    if args.train_only:
        print(f"trained: {run_dir}")
        return 0
    from busi_web.evaluation.evaluate import (  # after training: a long run sees the latest code
        EvaluationError,
        evaluate_run,
    )
    explainers = [e for e in args.explainers.split(",") if e] or None
    start = time.perf_counter()
    try:
        report = evaluate_run(run_dir, args.data_dir, "busi", registry=registry, part="test",
                              explainers=explainers, log=lambda m: print(m, flush=True),
                              max_maps=None if args.scorecam_maps < 0 else {"scorecam": args.scorecam_maps})
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cls = report["classification"]
    summary = {"run_dir": str(run_dir), "report": report["folder"], "split": split_protocol(run_dir),
               "test": {k: cls[k] for k in ("n", "accuracy", "macro_f1", "auc")},
               "per_class": cls["per_class"], "localisation": report["localisation"],
               "shortcuts": report["shortcuts"], "mapped_images": report["mapped_images"],
               "eval_minutes": (time.perf_counter() - start) / 60}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["split"], indent=1))
    print(f"TEST ({cls['n']} images): accuracy {cls['accuracy']:.4f}, macro-F1 {cls['macro_f1']:.4f}, "
          f"macro AUC {cls['auc'] if cls['auc'] is None else round(cls['auc'], 4)}")
    for name, loc in report["localisation"].items():
        if loc.get("n"):
            print(f"  {name:<10} pointing {loc['pointing']:.3f} (chance {loc['chance']:.3f})  energy "
                  f"{loc['energy']:.3f}  IoU@0.5 {loc['iou']:.3f}  over {loc['n']} lesions")
    for name, sc in report["shortcuts"].items():
        if sc["n_with_marks"]:
            print(f"  {name:<10} shortcut: {sc['n_with_marks']}/{sc['n_maps']} maps on images with marks, mass "
                  f"on marks {sc['mark_energy']:.4f} vs their area {sc['mark_chance']:.4f}, flagged share "
                  f"{sc['flagged_share']:.2f}{'  FLAGGED' if sc['flagged'] else ''}")
    print(f"report: {report['folder']}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
