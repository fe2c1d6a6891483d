"""Run pages: the history (filterable), one run (live while it trains), and a comparison of several runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, render_template, request

from busi_web.errors import UserError
from busi_web.evaluation.evaluate import list_evaluations
from busi_web.services import services_of
from busi_web.store import STATES
from busi_web.store import run_files as files
from busi_web.web.auth import current_user
from busi_web.web.helpers import RUN_ID, card_for, default_ids, for_viewer, run_view, status_filter, visible_artifacts

bp = Blueprint("runs", __name__)

# A log or report larger than this is shown from its end (the whole file stays downloadable).
MAX_TEXT_CHARS = 400_000
MAX_LIST = 500
# Metrics of the comparison table: (key in the view, label, higher is better).
COMPARE_ROWS = (
    ("test_accuracy", "Test accuracy", True),
    ("test_macro_f1", "Test macro-F1", True),
    ("test_auc", "Test AUC (macro)", True),
    ("test_loss", "Test loss", False),
    ("best_val_acc", "Best val accuracy", True),
    ("best_val_macro_f1", "Best val macro-F1", True),
    ("min_val_loss", "Lowest val loss", False),
    ("epochs_done", "Epochs done", None),
    ("duration_s", "Duration", None),
)


def read_text(path: Path, limit: int = MAX_TEXT_CHARS) -> str | None:
    """The file's text (its last ``limit`` characters when longer), or ``None`` when it is absent."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return text if len(text) <= limit else "[... start cut; download the file for all of it ...]\n" + text[-limit:]


def run_files(run: dict[str, Any]) -> dict[str, Any]:
    """Of the stored run row ``run``: artifacts (weights and the trainer's stderr only for admins), the
    classification report, the full log, test metrics, the model card of a finished run and the evaluation
    reports (``busi-web evaluate``), newest first."""
    names = visible_artifacts(run.get("run_dir"))
    run_dir = Path(run["run_dir"] or "")
    metrics = files.read_json(run.get("run_dir"), files.METRICS_JSON)
    matrix = None
    if metrics and metrics.get("confusion_matrix") and metrics.get("classes"):
        rows = metrics["confusion_matrix"]
        top = max([max(r) for r in rows if r] + [1])
        # Cell shade in tenths (0-10) for the heat colouring, by the largest count: a CSS class, since the
        # content security policy allows no inline style.
        matrix = {"classes": metrics["classes"],
                  "rows": [[{"n": n, "shade": round(10 * n / top)} for n in r] for r in rows]}
    evaluations = list_evaluations(run_dir) if run.get("run_dir") else []
    card = card_for(run["id"], current_user.is_admin) if run["status"] == "finished" else None
    return {"artifacts": names, "metrics": metrics, "matrix": matrix, "evaluations": evaluations, "card": card,
            "report": read_text(run_dir / files.REPORT_TXT) if run.get("run_dir") else None,
            "log": for_viewer(read_text(run_dir / files.LOG_TXT)) if run.get("run_dir") else None}


@bp.get("/runs")
def index():
    """Every run with status, backbone, dataset, best metrics and duration; filters by query string."""
    store = services_of().store
    statuses = status_filter(many=False)
    status = statuses[0] if statuses else None
    dataset = request.args.get("dataset") or None
    backbone = request.args.get("backbone") or None
    active = default_ids()
    rows = [run_view(r, active) for r in store.list_runs(status=status, dataset=dataset, backbone=backbone,
                                                         limit=MAX_LIST)]
    everything = store.list_runs(limit=MAX_LIST) if (status or dataset or backbone) else rows
    return render_template("pages/runs.html", page="runs", runs=rows, states=STATES,
                           datasets=sorted({r["dataset"] for r in everything}),
                           backbones=sorted({r["backbone"] for r in everything}),
                           filters={"status": status or "", "dataset": dataset or "", "backbone": backbone or ""})


@bp.get("/runs/<int:run_id>")
def run_detail(run_id: int):
    """One run: live curves and batch log while it trains; report, confusion matrix, log and files after.

    ``?partial=details`` answers only the details section (the page swaps it in when the run ends).
    """
    stored = services_of().store.get_run(run_id)
    run, found = run_view(stored), run_files(stored)
    if request.args.get("partial") == "details":
        return render_template("pages/_run_details.html", run=run, **found)
    return render_template("pages/run.html", page="runs", run=run, **found)


def _compare_ids(raw: str) -> list[int]:
    try:
        ids = [RUN_ID.coerce(x) for x in raw.replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"ids must be run numbers separated by commas, e.g. /runs/compare?ids=1,2 (got {raw!r})",
                        400, {"ids": "run numbers separated by commas"}) from None
    ids = list(dict.fromkeys(ids))  # keep the order, drop repeats
    if len(ids) < 2:
        raise UserError("choose two or more runs to compare (tick them on the Runs page), e.g. "
                        "/runs/compare?ids=1,2", 400, {"ids": "two or more runs"})
    return ids


def compare_row(run: dict[str, Any], active: set[int]) -> dict[str, Any]:
    """The comparison table's numbers for one run: test metrics and the best validation values."""
    view = run_view(run, active)
    metrics = files.read_json(run.get("run_dir"), files.METRICS_JSON) or {}
    vals: dict[str, list[float]] = {}
    for row in services_of().store.metrics(run["id"], keys=["val_acc", "val_macro_f1", "val_loss"]):
        vals.setdefault(row["key"], []).append(row["value"])
    view.update(
        test_accuracy=metrics.get("accuracy", run.get("test_accuracy")),
        test_macro_f1=metrics.get("macro_f1", run.get("test_macro_f1")),
        test_auc=metrics.get("auc"), test_loss=metrics.get("loss"),
        best_val_acc=max(vals["val_acc"]) if vals.get("val_acc") else None,
        best_val_macro_f1=max(vals["val_macro_f1"]) if vals.get("val_macro_f1") else None,
        min_val_loss=min(vals["val_loss"]) if vals.get("val_loss") else None,
        per_class=metrics.get("per_class") or {})
    return view


@bp.get("/runs/compare")
def compare():
    """Two or more runs side by side: overlaid curves (drawn by the page) and a metrics table."""
    ids = _compare_ids(request.args.get("ids", ""))
    store = services_of().store
    active = default_ids()
    runs = [compare_row(store.get_run(i), active) for i in ids]
    best: dict[str, int | None] = {}
    # Numbers on different test images cannot be ranked: only runs on the same data and split get a "best".
    tested_on = {_test_set(store.get_run(i)) for i in ids}
    comparable = len(tested_on) == 1 and None not in tested_on
    for key, _label, higher in COMPARE_ROWS:
        values = [(r[key], r["id"]) for r in runs if isinstance(r.get(key), (int, float))]
        best[key] = (max(values) if higher else min(values))[1] if values and higher is not None and comparable \
            else None
    # Only the parameters that differ between the runs are worth a row ("train.lr", "dataset.per_class", ...).
    flat = [{f"{group}.{k}": v for group in ("train", "backbone", "dataset")
             for k, v in (r[f"{group}_params"] or {}).items()} for r in runs]
    for r, params in zip(runs, flat, strict=True):
        r["flat_params"] = params
    keys = sorted({k for params in flat for k in params})
    differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in flat}) > 1]
    classes = sorted({c for r in runs for c in r["per_class"]})
    return render_template("pages/compare.html", page="runs", runs=runs, rows=COMPARE_ROWS, best=best,
                           differing=differing, classes=classes, ids=ids, comparable=comparable)


def _test_set(run: dict[str, Any]) -> str | None:
    """What a run was tested on: its data's content hash and its split's test images (``None`` when unknown)."""
    params = files.read_json(run.get("run_dir"), files.PARAMS_JSON) or {}
    split = files.read_json(run.get("run_dir"), files.SPLIT_JSON) or {}
    if not params.get("data_hash") or "test" not in split:
        return None
    return params["data_hash"] + ":" + ",".join(sorted(split["test"]))
