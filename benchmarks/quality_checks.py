"""Post-hoc checks on trained BUSI runs: test-time flips, the last epoch's weights, and the mean of several runs.

Each run folder (from ``benchmarks/quality.py --train-only`` or from the app)
is scored on the validation and test parts of its own ``split.json``, with

* ``best``: the saved model (the epoch picked on validation), as trained;
* ``flip``: the same model, averaging its probabilities on the image and on
  the image flipped left to right;
* ``last``: the weights after the last epoch (the weight average when the
  run kept one), read from ``last.pt``.

With more than one run, a last row gives each column's mean (sd) over the
runs. Runs that share a split are also averaged (the mean of their ``best``
probabilities). For a run on a split by class alone (``quality.py
--naive-split``) the test images that have a near-duplicate in the training
part are also scored apart from the others. These checks look at the test
part again, so they are for understanding a recipe, never for picking one:
pick by the validation columns. The data folder defaults to ``../shared/data/busi/Dataset_BUSI_with_GT``;
when it is absent the script says so and exits 0.

    python benchmarks/quality_checks.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
PARTS = ("val", "test")


def _metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[float, float]:
    from busi_web.evaluation.metrics import classification_metrics

    m = classification_metrics(y, probs, classes)
    return m["accuracy"], m["macro_f1"]


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} / {pair[1]:.3f}"


def _score(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> str:
    return _fmt(_metrics(y, probs, classes))


def _mean_sd(pairs: list[tuple[float, float]]) -> str:
    """``mean (sd) / mean (sd)`` of accuracy and macro-F1 over runs (sample sd)."""
    a = np.array(pairs)
    return " / ".join(f"{a[:, k].mean():.3f} ({a[:, k].std(ddof=1):.3f})" for k in (0, 1))


def _probs(model, x) -> np.ndarray:
    from busi_web.explain.base import classify

    return classify(model.eval(), x).probs.numpy()


def check_run(run_dir: Path, data_dir: Path, registry) -> dict:
    """The labels of the run's validation and test parts, and its probabilities under each way of scoring."""
    import copy

    import torch

    from busi_web.data.splits import Split, near_duplicate_groups
    from busi_web.model.predictor import Predictor
    from busi_web.store import run_files as art
    from busi_web.training.resume import load_state

    pred = Predictor.from_checkpoint(run_dir / art.BEST_PT, registry)
    if pred.checkpoint_meta.dataset != "busi":
        raise SystemExit(f"{run_dir} was trained on {pred.checkpoint_meta.dataset!r}; these checks read BUSI runs")
    ds = registry.dataset("busi").build(pred.dataset_params, root=str(data_dir))
    doc = json.loads((run_dir / art.SPLIT_JSON).read_text(encoding="utf-8"))
    split = Split.from_json(doc, ds)
    to_model = [pred.classes.index(c) for c in ds.classes]
    state = load_state(run_dir / art.LAST_PT)
    last = None
    if state is not None:
        last = copy.deepcopy(pred.model)
        last.load_state_dict(state["ema"]["model"] if state.get("ema") else state["model"])
    out: dict = {"classes": pred.classes, "split": tuple(sorted(ds.samples[i].key for i in split.test))}
    if doc.get("protocol") == "naive":  # a split by class alone (quality.py --naive-split): mark the leaked images
        twins = split.twins_of_training(near_duplicate_groups(ds))
        out["leaked"] = np.array([i in twins for i in split.test])
    for part in PARTS:
        idx = split.part(part)
        x = torch.stack([p.tensor for p in pred.prepare([ds.load_image(i) for i in idx])])
        out[part] = {"y": np.array([to_model[ds.samples[i].label] for i in idx]), "best": _probs(pred.model, x)}
        out[part]["flip"] = (out[part]["best"] + _probs(pred.model, x.flip(-1))) / 2
        if last is not None:
            out[part]["last"] = _probs(last, x)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with best_model.pt and split.json)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"skipped: BUSI folder {args.data_dir} is absent (pass --data-dir to point at one)")
        return 0
    from busi_web.plugins import load_plugins
    from busi_web.store import run_files as art

    for run_dir in args.runs:
        for name in (art.BEST_PT, art.SPLIT_JSON):
            if not (run_dir / name).is_file():
                raise SystemExit(f"{run_dir} has no {name}: give folders of finished BUSI runs")

    registry = load_plugins()
    results = {}
    columns = [(part, way) for part in PARTS for way in ("best", "flip", "last")]
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in columns}
    print("accuracy / macro-F1 on each run's own split")
    print("| run | val: best | val: flip | val: last | test: best | test: flip | test: last |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        r = results[run_dir] = check_run(run_dir, args.data_dir, registry)
        cells = []
        for part, way in columns:
            if way in r[part]:
                scores[part, way].append(_metrics(r[part]["y"], r[part][way], r["classes"]))
            cells.append(_fmt(scores[part, way][-1]) if way in r[part] else "-")
        print(f"| {run_dir} | " + " | ".join(cells) + " |", flush=True)
    if len(results) > 1:
        cells = [_mean_sd(scores[c]) if len(scores[c]) > 1 else "-" for c in columns]
        print(f"| mean (sd) of {len(results)} runs | " + " | ".join(cells) + " |")
    groups: dict[tuple, list[Path]] = {}
    for run_dir, r in results.items():
        groups.setdefault(r["split"], []).append(run_dir)
    for members in (g for g in groups.values() if len(g) > 1):
        first = results[members[0]]
        cells = [_score(first[p]["y"], np.mean([results[m][p]["best"] for m in members], axis=0), first["classes"])
                 for p in PARTS]
        print(f"mean of {', '.join(str(m) for m in members)}: val {cells[0]}, test {cells[1]}")
    for run_dir, r in results.items():
        if "leaked" in r:
            right = r["test"]["best"].argmax(1) == r["test"]["y"]
            leaked = r["leaked"]
            print(f"{run_dir}: naive split; the {leaked.sum()} test images with a near-duplicate in training: "
                  f"{right[leaked].mean():.3f} right, the other {(~leaked).sum()}: {right[~leaked].mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
