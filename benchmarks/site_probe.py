"""Can the site be read from a model's features? A probe on two-site runs, for the sites issue.

For each run folder given (trained on BUSI and BUS-BRA), this script takes the
lesion images (benign and malignant) of the run's test part from both sites,
pools the explained layer's output of the kept model over each image, and
fits a logistic regression that guesses the site from those features. It
prints the probe's balanced accuracy under 5-fold cross-validation: 0.5
means the features carry no site that a linear probe finds, 1.0 that they
carry it fully. Used to check what a site adversary (``site_adversary``) did.

    python benchmarks/site_probe.py pooled=RUN_DIR adversary=RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sites import LAYOUT  # noqa: E402 - where each dataset lies under the data folder, as the sites benchmark reads it


def features(run_dir: Path, folders: dict[str, Path], registry) -> tuple[np.ndarray, np.ndarray]:
    """The pooled explained-layer features of the run's test lesion images, and whether each is BUSI's."""
    import torch
    from PIL import Image

    from busi_web.explain.base import resolve_layer
    from busi_web.model.predictor import Predictor

    split = json.loads((run_dir / "split.json").read_text())
    predictor = Predictor.from_checkpoint(run_dir / "best_model.pt", registry)
    model = predictor.model.eval()
    pooled: list[torch.Tensor] = []
    keys = [k for k in split["test"] if split["sites"][k] in folders and not k.split(":", 1)[1].startswith("normal/")]
    handle = resolve_layer(model, predictor.target_layer).register_forward_hook(
        lambda _m, _i, out: pooled.append(out.mean((2, 3)).detach()))
    try:
        with torch.no_grad():
            for key in keys:
                site, rel = key.split(":", 1)
                image = np.asarray(Image.open(folders[site] / rel).convert("L"))
                model(predictor.prepare([image])[0].tensor[None])
    finally:
        handle.remove()
    return torch.cat(pooled).numpy(), np.array([split["sites"][k] == "busi" for k in keys])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="two-site run folders to probe")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="the folder holding busi/ and busbra/")
    args = ap.parse_args(argv)
    folders = {name: args.data.joinpath(*parts) for name, parts in LAYOUT.items()}
    absent = [str(p) for p in folders.values() if not p.is_dir()]
    if absent:
        print(f"skipped: {', '.join(absent)} absent (the site probe needs ../shared/data)")
        return 0
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from busi_web.plugins import load_plugins

    runs = [r.partition("=")[::2] for r in args.runs]
    for (name, run), given in zip(runs, args.runs, strict=True):
        if not name or not (Path(run) / "split.json").is_file() or not (Path(run) / "best_model.pt").is_file():
            ap.error(f"{given!r} must be NAME=RUN_DIR, a two-site run's folder holding split.json and best_model.pt")
    registry = load_plugins()
    for name, run in runs:
        x, is_busi = features(Path(run), folders, registry)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        scores = cross_val_score(probe, x, is_busi, scoring="balanced_accuracy",
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0))
        print(f"{name}: {len(x)} test lesion images ({is_busi.mean():.3f} BUSI's); the site probe's balanced "
              f"accuracy {scores.mean():.3f} (± {scores.std():.3f} over 5 folds; 0.5 = no site in the features)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
