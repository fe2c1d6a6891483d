"""Sites: leave-one-site-out and two-site training on BUSI (Cairo) and BUS-BRA (Rio de Janeiro).

``make bench-sites`` runs the three experiments of the sites benchmark and
prints one table per experiment, per site:

1. trained on BUSI, scored on all of BUS-BRA (the site never seen);
2. trained on BUS-BRA, scored on BUSI's lesion images (BUS-BRA has no normal class);
3. trained on both, scored on each site's held-out test part.

Each run uses the recommended recipe (``busi``'s, with the epochs budgeted for
the number of images) and the project's own duplicate- and patient-aware
split. Nothing is copied: the runs read ``../shared/data`` in place. When the
data is absent the script says so and exits 0.

    python benchmarks/sites.py                                  # all three (about 2 hours on 2 cores)
    python benchmarks/sites.py --only busbra                    # one experiment: busi, busbra or both
    python benchmarks/sites.py --only both --param seed=1       # another split of the two-site run
    python benchmarks/sites.py --reuse busi=RUN_DIR --reuse both=RUN_DIR   # score runs trained before
    python benchmarks/sites.py --param epochs=1 --out /tmp/s    # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from quality import param_pairs, train_to_the_end  # noqa: E402 - shared with the quality benchmark

DATA = ROOT.parent / "shared" / "data"
# Each dataset's folder under the data folder (--data; ../shared/data by default).
LAYOUT = {"busi": ("busi", "Dataset_BUSI_with_GT"), "busbra": ("busbra", "BUSBRA")}
FOLDERS = {name: DATA.joinpath(*parts) for name, parts in LAYOUT.items()}
# Which datasets each experiment trains on, and what it is scored on besides its own test part.
EXPERIMENTS = {
    "busi": (["busi"], [("busbra", {})]),
    "busbra": (["busbra"], [("busi", {"classes": "benign,malignant"})]),
    "both": (["busi", "busbra"], []),
}
# Epochs per experiment on the CPU: the recipe's 80 for BUSI's 434 training images, fewer for more images,
# so that one run stays within about 45 minutes on 2 cores.
EPOCHS = {"busi": 80, "busbra": 40, "both": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(EXPERIMENTS), help="run only these experiments")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sites")
    ap.add_argument("--data", type=Path, default=DATA, help="the folder holding busi/ and busbra/")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training parameter of the recipe (e.g. seed=1)")
    ap.add_argument("--backbone-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reuse", action="append", default=[], metavar="EXPERIMENT=RUN_DIR",
                    help="score this trained run folder instead of training the experiment")
    ap.add_argument("--train-only", action="store_true", help="train and stop")
    return ap.parse_args(argv)


def train(name: str, args: argparse.Namespace, registry) -> Path:
    """Train experiment ``name`` in a benchmark-local job store; returns the run folder."""
    from busi_web.data.sites import Source, dataset_label
    from busi_web.store import JobStore
    from busi_web.training.params import prepare_run_params

    names, _ = EXPERIMENTS[name]
    rec = registry.dataset("busi").recommended or {}
    backbone = rec.get("backbone", "resnet18")
    train_params = {**(rec.get("train") or {}), "epochs": EPOCHS[name], **param_pairs(args.param)}
    bb_params = {**(rec.get("backbone_params") or {}), **param_pairs(args.backbone_param)}
    sources = [Source(n, str(FOLDERS[n])) for n in names]
    params = prepare_run_params(registry, backbone, sources, train=train_params, backbone_params=bb_params)
    store = JobStore(args.out / "busi.db", args.out / "runs")
    label = dataset_label(names)
    run = store.create_run(backbone, label, params, name=f"sites benchmark: {name}",
                           data_dir=str(FOLDERS[names[0]]) if len(names) == 1 else None)
    print(f"run {run['id']} ({name}): {backbone} {params['backbone']} on {label}, training {params['train']}",
          flush=True)

    return train_to_the_end(store, run["id"], registry)


def score(name: str, run_dir: Path, registry) -> dict:
    """Score experiment ``name``'s run: on its own test part (per site), and on the site it never saw."""
    from busi_web.evaluation.evaluate import evaluate_run
    from busi_web.evaluation.operating import refit_operating_point
    from busi_web.model.checkpoint import read_checkpoint

    names, external = EXPERIMENTS[name]
    if not read_checkpoint(run_dir / "best_model.pt")[0].extra.get("operating_point"):
        print(f"fitting the operating point of {run_dir}: {refit_operating_point(run_dir, registry, 0.9)}")
    own = evaluate_run(run_dir, None if len(names) > 1 else str(FOLDERS[names[0]]), None, registry=registry,
                       part="test", explainers=[], log=lambda m: print(m, flush=True))
    out = {"run_dir": str(run_dir), "trained_on": names, "home": own["sites"], "operating_point":
           own["operating_point"], "external": {}}
    for other, params in external:
        report = evaluate_run(run_dir, str(FOLDERS[other]), other, registry=registry, dataset_params=params,
                              explainers=[], log=lambda m: print(m, flush=True))
        out["external"].update(report["sites"])
    return out


def table(results: dict) -> str:
    """One Markdown table per experiment: each site's numbers, home test part and never-seen site."""
    from busi_web.evaluation.sites import sites_markdown

    lines = []
    for r in results.values():
        lines += [f"### Trained on {' + '.join(r['trained_on'])}", "", "Home test part:", ""]
        lines += sites_markdown(r["home"])
        if r["external"]:
            lines += ["", "Never seen (external):", ""] + sites_markdown(r["external"])
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    FOLDERS.update({name: args.data.joinpath(*parts) for name, parts in LAYOUT.items()})
    absent = [str(p) for p in FOLDERS.values() if not p.is_dir()]
    if absent:
        print(f"skipped: {', '.join(absent)} absent (the sites benchmark needs ../shared/data)")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    from busi_web.plugins import load_plugins

    registry = load_plugins()
    args.out.mkdir(parents=True, exist_ok=True)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    unknown = sorted(set(reuse) - set(EXPERIMENTS))
    if unknown:
        raise SystemExit(f"--reuse names unknown experiment(s) {', '.join(unknown)}; use {', '.join(EXPERIMENTS)}")
    results = {}
    for name in args.only or list(EXPERIMENTS):
        run_dir = Path(reuse[name]) if name in reuse else train(name, args, registry)
        if args.train_only:
            print(f"trained: {run_dir}")
            continue
        results[name] = score(name, run_dir, registry)
    if results:
        (args.out / "sites.json").write_text(json.dumps(results, indent=1))
        text = table(results)
        (args.out / "sites.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
