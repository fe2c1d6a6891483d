"""Command line for runs: ``train``, ``runs``, ``runs show``, ``resume`` and ``cancel``."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext

from busi_web.cli.common import RUN_ID, resolve_data_dir, services, split_params, user_errors
from busi_web.errors import UserError
from busi_web.store import STATES
from busi_web.store import run_files as files
from busi_web.training.runner import JobRunner, pid_is_trainer


class TrainCommand(click.Command):
    """``train``, whose help ends with the backbones and datasets that are installed (and allowed)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        try:
            with ctx.ensure_object(ScriptInfo).load_app().app_context():
                registry = services().registry
        except Exception as exc:  # noqa: BLE001 - help must print even when the app cannot start
            formatter.write_paragraph()
            formatter.write_text(f"(the installed backbones and datasets cannot be listed: {exc})")
            return
        for kind, specs in (("Backbones", registry.backbones), ("Datasets", registry.datasets)):
            with formatter.section(kind):
                formatter.write_dl([(name, spec.title) for name, spec in sorted(specs.items())])


@click.command("train", cls=TrainCommand)
@click.option("--backbone", default="resnet50_cbam", show_default=True, help="A backbone (listed below).")
@click.option("--dataset", "datasets", multiple=True, help="A dataset (listed below); repeat it to train on several "
              "sites at once (--dataset busi --dataset busbra). Default: phantom.")
@click.option("--data-dir", "data_dirs", multiple=True, type=click.Path(file_okay=False),
              help="The dataset's folder (default: DATA_DIRS); with several datasets, one per --dataset, in order.")
@click.option("--epochs", type=int, help="Passes over the training images (train.epochs).")
@click.option("--batch-size", type=int, help="Images per step (train.batch_size).")
@click.option("--lr", type=float, help="Learning rate (train.lr).")
@click.option("--name", help="A label for the run.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Any training (train.KEY), backbone (backbone.KEY) or dataset (dataset.KEY, or NAME.KEY with "
                   "several datasets) parameter; a bare KEY goes to whichever declares it. Repeatable.")
@with_appcontext
@user_errors
def train_command(backbone: str, datasets: tuple[str, ...], data_dirs: tuple[str, ...], epochs: int | None,
                  batch_size: int | None, lr: float | None, name: str | None, params: tuple[str, ...]) -> None:
    """Train in the foreground with a progress bar; the run is recorded in the same store."""
    from busi_web.data.sites import Source, dataset_label  # with the training imports below: not at CLI start
    from busi_web.training.params import prepare_run_params  # imports torch: not at CLI start

    svc = services()
    names = list(datasets) or ["phantom"]
    if len(set(names)) != len(names) and not data_dirs:
        raise UserError("the same dataset is named twice without a --data-dir for each; give one folder per "
                        "--dataset")
    if data_dirs and len(data_dirs) != len(names):
        raise UserError(f"{len(names)} --dataset but {len(data_dirs)} --data-dir: give one folder per dataset, in "
                        "the same order (or none, to use DATA_DIRS)")
    train, bb, ds = split_params(params, backbone, names[0] if len(names) == 1 else names)
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            train[key] = value
    roots = [resolve_data_dir(n, data_dirs[k] if data_dirs else None) for k, n in enumerate(names)]
    if len(names) == 1:
        target: str | list[Source] = names[0]
    else:
        target = [Source(n, r, ds[n]) for n, r in zip(names, roots, strict=True)]
    run_params = prepare_run_params(svc.registry, backbone, target, train=train, backbone_params=bb,
                                    dataset_params=ds if len(names) == 1 else None, data_dir=roots[0])
    # Created and claimed at once: a queued run would be a serving process's runner's to take (it would start a
    # second trainer on it), as resume does below.
    with svc.store.transaction():
        run = svc.store.create_run(backbone, dataset_label(names), run_params, name=name,
                                   data_dir=roots[0] if len(names) == 1 else None, created_by="cli",
                                   modality=svc.registry.dataset(names[0]).modality)
        run = svc.store.transition(run["id"], "running", pid=os.getpid())
    click.echo(f"run {run['id']}: {run['run_dir']}")
    _train_in_foreground(run["id"])


class _Progress:
    """A tqdm bar that counts batches over the whole run (so it shows an ETA), with the last epoch's metrics."""

    SHOWN = ("train_loss", "val_loss", "val_acc", "val_macro_f1")

    def __init__(self) -> None:
        from tqdm import tqdm  # with torch, below: only when a command trains

        self.bar = tqdm(total=0, unit="batch", file=sys.stderr, dynamic_ncols=True)
        self.start_step = self.start_epoch = self.batches = 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":  # after the data is ready (and a resumed run has loaded last.pt)
            self.start_step, self.start_epoch = int(event["step"]), int(event["epoch"])
            self.batches = int(event["batches"])
            self.bar.reset(total=(int(event["epochs"]) - self.start_epoch) * self.batches)
            self.bar.set_description(f"epoch {self.start_epoch + 1}/{event['epochs']}")
        elif kind == "batch":  # at most every half second: the bar moves within long epochs
            self.bar.n = min(int(event["step"]) - self.start_step, self.bar.total or 0)
            self.bar.refresh()
        elif kind == "epoch":  # exact at every epoch's end, however short the epoch
            self.bar.n = min((int(event["epoch"]) - self.start_epoch) * self.batches, self.bar.total or 0)
            self.bar.set_description(f"epoch {min(int(event['epoch']) + 1, int(event['epochs']))}/{event['epochs']}")
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in event.get("metrics", {}).items()
                                  if k in self.SHOWN and v is not None})

    def close(self) -> None:
        self.bar.close()


def _train_in_foreground(run_id: int) -> None:
    """Run the trainer in this process with a progress bar; Ctrl-C stops after the current batch."""
    from busi_web.training.trainer import run_training  # imports torch: only when a command trains

    svc = services()
    stop = {"flag": False}

    def on_signal(*_: Any) -> None:
        stop["flag"] = True
        click.echo("\nstopping after the current batch…", err=True)

    # Ctrl-C, or SIGTERM from `busi-web cancel`: stop after the batch and save last.pt, as the trainer process does.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress()
    try:
        run_training(svc.store, run_id, svc.registry, progress=progress, should_stop=lambda: stop["flag"])
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = svc.store.get_run(run_id)
    click.echo(f"run {final['id']} {final['status']}: {final['run_dir']}")
    if final.get("test_macro_f1") is not None:
        click.echo(f"test macro-F1 {final['test_macro_f1']:.4f}")
    if final["status"] != "finished":
        raise click.ClickException(final.get("error") or f"run ended {final['status']}")


def _run_line(r: dict[str, Any]) -> str:
    best = f"{r['best_metric_name']}={r['best_metric']:.4f}" if r.get("best_metric") is not None else ""
    return (f"{r['id']:>4}  {r['status']:<11} {r['backbone']:<15} {r['dataset']:<12} "
            f"{r.get('epochs_done') or 0:>3} ep  {best:<24} {r['created_at']}")


@click.group("runs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--status", type=click.Choice(STATES), help="Only runs in this state.")
@click.pass_context
@with_appcontext
def runs_group(ctx: click.Context, as_json: bool, status: str | None) -> None:
    """List runs (newest first), or `runs show ID`."""
    if ctx.invoked_subcommand:
        return
    runs = services().store.list_runs(status=status)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    click.echo("  id  status      backbone        dataset      epochs  best                     created")
    for r in runs:
        click.echo(_run_line(r))


@runs_group.command("show")
@click.argument("run_id", type=RUN_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def runs_show(run_id: int, as_json: bool) -> None:
    """One run: state, parameters, artifacts, final metrics."""
    run = services().store.get_run(run_id)
    run["artifacts"] = files.artifact_names(run.get("run_dir"))
    metrics = files.read_json(run.get("run_dir"), files.METRICS_JSON)
    if metrics is not None:
        run["test_metrics"] = metrics
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    for key in ("id", "name", "status", "backbone", "dataset", "data_dir", "created_at", "started_at",
                "finished_at", "epochs_done", "best_metric_name", "best_metric", "test_accuracy", "test_macro_f1",
                "error", "run_dir"):
        click.echo(f"{key:>16}: {run.get(key)}")
    click.echo(f"{'params':>16}: {json.dumps(run['params'])}")
    click.echo(f"{'artifacts':>16}: {', '.join(run['artifacts'])}")


@click.command("resume")
@click.argument("run_id", type=RUN_ID)
@with_appcontext
@user_errors
def resume_command(run_id: int) -> None:
    """Continue an interrupted or cancelled run from its last.pt, in the foreground."""
    store = services().store
    with store.transaction():  # queued and claimed at once: a serving process's runner cannot take it first
        store.transition(run_id, "queued", error=None, pid=None, cancel_requested=0)
        run = store.transition(run_id, "running", pid=os.getpid())
    click.echo(f"run {run_id}: resuming in {run['run_dir']}")
    _train_in_foreground(run_id)


@click.command("cancel")
@click.argument("run_id", type=RUN_ID)
@with_appcontext
@user_errors
def cancel_command(run_id: int) -> None:
    """Stop a queued or running run (a running one after its current batch, killed after CANCEL_TIMEOUT_SECONDS)."""
    store = services().store
    timeout = float(current_app.config["CANCEL_TIMEOUT_SECONDS"])
    run = JobRunner(store, cancel_timeout=timeout).cancel(run_id, user="cli")
    deadline = time.monotonic() + timeout + 5
    while run["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = store.get_run(run_id)
        if run["status"] == "running" and not run.get("worker") and not pid_is_trainer(run.get("pid")):
            # Killed before it could record the outcome itself (the runner thread above sent SIGKILL).
            run = store.transition(run_id, "cancelled", error="cancelled (the trainer was stopped)")
    click.echo(f"run {run_id} {run['status']}")
    if run["status"] != "cancelled":
        raise click.ClickException(f"run {run_id} is still {run['status']}; try again or stop pid {run.get('pid')}")


COMMANDS = [train_command, runs_group, resume_command, cancel_command]
