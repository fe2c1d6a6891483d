"""Command line for runs: ``train``, ``runs``, ``runs show``, ``resume``, ``cancel``, ``promote``, ``predict``."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from .cli import parse_params, resolve_data_dir


def _store():
    return current_app.extensions["busi_store"]


def split_params(pairs: tuple[str, ...], backbone: str, dataset: str) -> tuple[dict, dict, dict]:
    """Route ``--param`` pairs to the training, backbone or dataset parameters.

    ``train.X``, ``backbone.X`` and ``dataset.X`` say where explicitly; a bare
    key goes to whichever of the three declares it (training first).
    """
    from .train_params import TRAIN_PARAMS

    registry = current_app.extensions["busi_plugins"]
    names = {
        "train": {p.name for p in TRAIN_PARAMS},
        "backbone": {p.name for p in registry.backbone(backbone).params},
        "dataset": {p.name for p in registry.dataset(dataset).params},
    }
    out: dict[str, dict] = {"train": {}, "backbone": {}, "dataset": {}}
    for key, value in parse_params(pairs).items():
        scope, _, bare = key.rpartition(".")
        if scope:
            if scope not in out:
                raise click.ClickException(f"--param {key}: prefix must be train., backbone. or dataset.")
            out[scope][bare] = value
            continue
        for scope in ("train", "backbone", "dataset"):
            if key in names[scope]:
                out[scope][key] = value
                break
        else:
            known = sorted(names["train"] | names["backbone"] | names["dataset"])
            raise click.ClickException(f"--param {key}: unknown parameter; known: {', '.join(known)}")
    return out["train"], out["backbone"], out["dataset"]


@click.command("train")
@click.option("--backbone", default="resnet50_cbam", show_default=True)
@click.option("--dataset", default="phantom", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--name", help="A label for the run.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Any training, backbone (backbone.KEY) or dataset (dataset.KEY) parameter.")
@with_appcontext
def train_command(backbone, dataset, data_dir, epochs, batch_size, lr, name, params) -> None:
    """Train in the foreground with a progress bar; the run is recorded in the same store."""
    from .datasets import DatasetError
    from .plugins import UnknownPlugin
    from .specs import InvalidParameters
    from .trainer import prepare_run_params

    registry = current_app.extensions["busi_plugins"]
    store = _store()
    try:
        train, bb, ds = split_params(params, backbone, dataset)
        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
            if value is not None:
                train[key] = value
        root = resolve_data_dir(dataset, data_dir)
        run_params = prepare_run_params(registry, backbone, dataset, train=train, backbone_params=bb,
                                        dataset_params=ds, data_dir=root)
    except (UnknownPlugin, InvalidParameters, DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    run = store.create_run(backbone, dataset, run_params, name=name, data_dir=root)
    click.echo(f"run {run['id']}: {run['run_dir']}")
    _train_in_foreground(store, registry, run["id"], run_params["train"]["epochs"])


def _train_in_foreground(store, registry, run_id: int, epochs: int) -> None:
    """Run the trainer in this process with a progress bar; Ctrl-C stops after the current batch."""
    from tqdm import tqdm

    from .trainer import run_training

    stop = {"flag": False}

    def on_signal(*_):
        stop["flag"] = True
        click.echo("\nstopping after the current batch…", err=True)

    # Ctrl-C, or SIGTERM from `busi-web cancel`: stop after the batch and save last.pt, as the trainer process does.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def progress(event: dict) -> None:
        if event.get("type") == "epoch":
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in event.get("metrics", {}).items()
                             if k in ("train_loss", "val_loss", "val_acc", "val_macro_f1") and v is not None})
        elif event.get("type") == "batch":
            bar.set_description(f"epoch {event.get('epoch')} batch {event.get('step')}")

    try:
        run_training(store, run_id, registry=registry, progress=progress, should_stop=lambda: stop["flag"])
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = store.get_run(run_id)
    click.echo(f"run {final['id']} {final['status']}: {final['run_dir']}")
    if final.get("test_macro_f1") is not None:
        click.echo(f"test macro-F1 {final['test_macro_f1']:.4f}")
    if final["status"] != "finished":
        raise click.ClickException(final.get("error") or f"run ended {final['status']}")


def _run_line(r: dict) -> str:
    best = f"{r['best_metric_name']}={r['best_metric']:.4f}" if r.get("best_metric") is not None else ""
    return (f"{r['id']:>4}  {r['status']:<11} {r['backbone']:<15} {r['dataset']:<12} "
            f"{r.get('epochs_done') or 0:>3} ep  {best:<24} {r['created_at']}")


@click.group("runs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--status", help="Only runs in this state.")
@click.pass_context
@with_appcontext
def runs_group(ctx, as_json: bool, status: str | None) -> None:
    """List runs (newest first), or `runs show ID`."""
    if ctx.invoked_subcommand:
        return
    runs = _store().list_runs(status=status)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    click.echo("  id  status      backbone        dataset      epochs  best                     created")
    for r in runs:
        click.echo(_run_line(r))


@runs_group.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def runs_show(run_id: int, as_json: bool) -> None:
    """One run: state, parameters, artifacts, final metrics."""
    from .store import RunNotFound

    try:
        run = _store().get_run(run_id)
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None
    run_dir = Path(run["run_dir"])
    run["artifacts"] = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        run["test_metrics"] = json.loads(metrics_file.read_text())
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    for key in ("id", "name", "status", "backbone", "dataset", "data_dir", "created_at", "started_at",
                "finished_at", "epochs_done", "best_metric_name", "best_metric", "test_macro_f1", "error", "run_dir"):
        click.echo(f"{key:>16}: {run.get(key)}")
    click.echo(f"{'params':>16}: {json.dumps(run['params'])}")
    click.echo(f"{'artifacts':>16}: {', '.join(run['artifacts'])}")


@click.command("promote")
@click.argument("run_id", type=int)
@with_appcontext
def promote_command(run_id: int) -> None:
    """Make a finished run's model the active one for its dataset."""
    store = _store()
    try:
        store.set_active_model(run_id, by="cli")
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id} is now the active model")


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_id", type=int, help="Use this run's best model (default: the active model).")
@click.option("--explainer", default="gradcam", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for overlay PNGs.")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def predict_command(images, run_id, explainer, out_dir, alpha, as_json) -> None:
    """Classify IMAGES with a heatmap: probabilities on stdout, overlays in --out."""
    from .checkpoint import CheckpointError
    from .datasets import DatasetError, read_image
    from .active_model import checkpoint_for
    from .plugins import UnknownPlugin
    from .predictor import Predictor

    registry = current_app.extensions["busi_plugins"]
    try:
        registry.explainer(explainer)
        path = checkpoint_for(_store(), run_id)
        predictor = Predictor.from_checkpoint(path, registry, device=current_app.config["DEVICE"])
    except (UnknownPlugin, CheckpointError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for image_path in images:
        try:
            image = read_image(image_path, grayscale=predictor.meta["in_channels"] == 1)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None
        pred = predictor.predict(image, explainer=explainer)
        overlay_path = out / f"{Path(image_path).stem}_{explainer}.png"
        overlay_path.write_bytes(pred.overlay_png(alpha=alpha))
        results.append({"image": image_path, "label": pred.label, "probabilities": pred.probabilities,
                        "overlay": str(overlay_path)})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            click.echo(f"{r['image']}: {r['label']}  ({probs})  -> {r['overlay']}")


@click.command("resume")
@click.argument("run_id", type=int)
@with_appcontext
def resume_command(run_id: int) -> None:
    """Continue an interrupted or cancelled run from its last.pt, in the foreground."""
    from .store import IllegalTransition, RunNotFound

    store = _store()
    try:
        with store.transaction():  # queued and claimed at once: a serving process's runner cannot take it first
            store.transition(run_id, "queued", error=None, pid=None, cancel_requested=0)
            run = store.transition(run_id, "running", pid=os.getpid())
    except (RunNotFound, IllegalTransition) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id}: resuming in {run['run_dir']}")
    _train_in_foreground(store, current_app.extensions["busi_plugins"], run_id, run["params"]["train"]["epochs"])


@click.command("cancel")
@click.argument("run_id", type=int)
@with_appcontext
def cancel_command(run_id: int) -> None:
    """Stop a queued or running run (a running one after its current batch, killed after CANCEL_TIMEOUT_SECONDS)."""
    from .jobs import JobRunner, pid_is_trainer
    from .store import IllegalTransition, RunNotFound

    store = _store()
    timeout = float(current_app.config["CANCEL_TIMEOUT_SECONDS"])
    try:
        run = JobRunner(store, cancel_timeout=timeout).cancel(run_id, user="cli")
    except (RunNotFound, IllegalTransition, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    deadline = time.monotonic() + timeout + 5
    while run["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = store.get_run(run_id)
        if run["status"] == "running" and not pid_is_trainer(run.get("pid")):
            # Killed before it could record the outcome itself (the runner thread above sent SIGKILL).
            run = store.transition(run_id, "cancelled", error="cancelled (the trainer was stopped)")
    click.echo(f"run {run_id} {run['status']}")
    if run["status"] != "cancelled":
        raise click.ClickException(f"run {run_id} is still {run['status']}; try again or stop pid {run.get('pid')}")


COMMANDS = [train_command, runs_group, resume_command, cancel_command, promote_command, predict_command]
