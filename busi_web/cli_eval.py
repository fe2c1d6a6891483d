"""Command line: ``busi-web evaluate`` (validate a run's model on a folder of images; see :mod:`busi_web.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from .cli import parse_params


@click.command("evaluate")
@click.option("--run", "run_id", required=True, type=int, help="The run whose best model is evaluated.")
@click.option("--data-dir", type=click.Path(),
              help="Folder of images in the dataset's layout (default: the run's own folder for its dataset, "
                   "else DATA_DIRS).")
@click.option("--dataset", help="Dataset plugin that reads the folder (default: the run's dataset).")
@click.option("--part", type=click.Choice(["train", "val", "test"]),
              help="Only this part of the run's own split (for the folder the run was trained on).")
@click.option("--explainers", default="", help="Comma-separated explainers (default: every registered one).")
@click.option("--max-maps", "max_maps", multiple=True, metavar="N|EXPLAINER=N",
              help="Map at most N images (spread evenly) per explainer, or for one explainer, e.g. scorecam=20 "
                   "(Score-CAM takes seconds per image on a CPU). Every image is still classified.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Dataset parameter.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@with_appcontext
def evaluate_command(run_id: int, data_dir: str | None, dataset: str | None, part: str | None, explainers: str,
                     max_maps: tuple[str, ...], params: tuple[str, ...], device: str) -> None:
    """Accuracy, macro-F1, AUC, confusion matrix, heatmap localisation and a shortcut check of run ID's model.

    The report (report.md, report.json, PNGs) goes into the run's folder under
    evaluations/ and shows on the run's page.
    """
    from .evaluate import EvaluationError, evaluate_run

    store = current_app.extensions["busi_store"]
    try:
        run = store.get_run(run_id)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    dataset = dataset or run["dataset"]
    if data_dir is None:  # the run's own folder for its own dataset, else the configured one
        data_dir = (run.get("data_dir") if dataset == run["dataset"] else None) or \
            (current_app.config.get("DATA_DIRS") or {}).get(dataset)
    try:
        report = evaluate_run(Path(run["run_dir"]), data_dir, dataset,
                              registry=current_app.extensions["busi_plugins"], part=part,
                              explainers=[e.strip() for e in explainers.split(",") if e.strip()] or None,
                              dataset_params=parse_params(params) or None, max_maps=_max_maps(max_maps),
                              device=device,
                              log=lambda m: click.echo(m, err=True))
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from None
    c = report["classification"]
    auc = "n/a" if c["auc"] is None else f"{c['auc']:.4f}"
    click.echo(f"{c['n']} images: accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f}, AUC {auc}")
    for name, s in report["localisation"].items():
        if s["n"]:
            click.echo(f"{name:<10} pointing {s['pointing']:.3f}  energy {s['energy']:.3f}  IoU {s['iou']:.3f}  "
                       f"(chance {s['chance']:.3f}, {s['n']} lesions)"
                       + ("  LOOKS AT MARKS" if report["shortcuts"][name]["flagged"] else ""))
    click.echo(f"report: {Path(report['folder']) / 'report.md'}")


def _max_maps(values: tuple[str, ...]) -> int | dict[str, int] | None:
    """``("20",)`` caps every explainer; ``("scorecam=20", ...)`` caps the ones named."""
    if not values:
        return None
    per: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise click.ClickException(f"--max-maps expects N or EXPLAINER=N, got {value!r}") from None
        if not name:
            return n
        per[name.strip()] = n
    return per


COMMANDS = [evaluate_command]
