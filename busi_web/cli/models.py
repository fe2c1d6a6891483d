"""Command line for the models that answer: ``busi-web models`` and its subcommands.

``models list`` shows each modality's default, settings and acceptance set, and every finished model with
its acceptance result; ``models set-default RUN --reason ...`` and ``models clear-default MODALITY --reason
...`` decide (audited; the gate applies); ``models settings MODALITY`` switches auto-promotion and sets
floors; ``models acceptance MODALITY`` defines the acceptance set; ``models evaluate RUN`` scores a model
on it; ``models card RUN`` prints the model card (JSON or Markdown).
"""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from busi_web.cli.common import RUN_ID, parse_params, services, user_errors
from busi_web.errors import UserError
from busi_web.evaluation.card import build_card, card_markdown
from busi_web.store.acceptance import SOURCES


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


@click.group("models")
def models_group() -> None:
    """Which model answers for each modality: defaults, the acceptance gate, model cards."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def list_command(as_json: bool) -> None:
    """Each modality's default, settings and acceptance set; every finished model with its acceptance result."""
    overview = services().models_overview()
    info = overview["modalities"]
    defaults = {m["default"]["run_id"] for m in info if m["default"]}
    rows = [{"id": r["id"], "name": r["name"], "modality": r["modality"], "dataset": r["dataset"], "demo": r["demo"],
             "default": r["id"] in defaults,
             "acceptance_macro_f1": None if r["acceptance"] is None else r["acceptance"]["macro_f1"],
             "gate_failures": r["gate_failures"]} for r in overview["models"]]
    if as_json:
        click.echo(json.dumps({"modalities": info, "models": rows}, indent=2, default=str))
        return
    for m in info:
        d, st, acc = m["default"], m["settings"], m["acceptance_set"]
        default = f"run {d['run_id']}" if d else "none"
        accepted = f"{acc['id']} ({acc['images']} images)" if acc else "none"
        click.echo(f"{m['modality']}: default {default}; auto-promotion {'on' if st['auto_promote'] else 'off'}; "
                   f"floors {st['floors'] or 'none'}; acceptance set {accepted}")
    for r in rows:
        flags = " ".join(f for f, on in (("DEFAULT", r["default"]), ("demo", r["demo"])) if on)
        gate = "passes the gate" if not r["gate_failures"] else "gate: " + "; ".join(r["gate_failures"])
        click.echo(f"  run {r['id']:>4} {r['modality']:<12} {r['name']}  acceptance macro-F1 "
                   f"{_num(r['acceptance_macro_f1'])}  {gate} {flags}".rstrip())


@models_group.command("set-default")
@click.argument("run_id", type=RUN_ID)
@click.option("--reason", required=True, help="Why this model should answer (kept in the audit log).")
@with_appcontext
@user_errors
def set_default_command(run_id: int, reason: str) -> None:
    """Make run RUN_ID's model the default of its modality (the acceptance gate applies)."""
    default = services().set_default(run_id, by="cli", reason=reason)
    click.echo(f"run {run_id} is now the default {default['modality']} model")


@models_group.command("clear-default")
@click.argument("modality")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@with_appcontext
@user_errors
def clear_default_command(modality: str, reason: str) -> None:
    """Remove MODALITY's default: nothing answers for it until another is set."""
    services().clear_default(modality, by="cli", reason=reason)
    click.echo(f"{modality} has no default model now")


@models_group.command("settings")
@click.argument("modality")
@click.option("--auto-promote/--no-auto-promote", default=None,
              help="Let a finished run that passes the gate and beats the default replace it.")
@click.option("--floor", "floors", multiple=True, metavar="METRIC=VALUE",
              help="A floor of the gate, e.g. macro_f1=0.7 or sensitivity_malignant=0.85 (ece is a ceiling). "
                   "Repeatable; any --floor replaces all floors.")
@click.option("--clear-floors", is_flag=True, help="Remove every floor.")
@click.option("--sensitivity", type=float, help="The sensitivity for malignancy that new models of MODALITY keep at "
              "their operating point (the threshold on p(malignant) fitted on validation), e.g. 0.90.")
@with_appcontext
@user_errors
def settings_command(modality: str, auto_promote: bool | None, floors: tuple[str, ...], clear_floors: bool,
                     sensitivity: float | None) -> None:
    """Show or change MODALITY's auto-promotion, floors and operating sensitivity."""
    store = services().store
    new_floors: dict[str, float] | None = {} if clear_floors else None
    for key, value in parse_params(floors, "--floor").items():
        try:
            new_floors = {**(new_floors or {}), key: float(value)}
        except ValueError:
            raise UserError(f"--floor {key}={value}: the value must be a number from 0 to 1") from None
    if auto_promote is not None or new_floors is not None or sensitivity is not None:
        services().update_settings(modality, by="cli", auto_promote=auto_promote, floors=new_floors,
                                   operating_sensitivity=sensitivity)
    click.echo(json.dumps(store.modality_settings(modality), indent=2))


@models_group.command("operating-point")
@click.argument("run_id", type=RUN_ID)
@click.option("--sensitivity", type=float, help="The sensitivity for malignancy to keep (default: the modality's).")
@with_appcontext
@user_errors
def operating_point_command(run_id: int, sensitivity: float | None) -> None:
    """Fit run RUN_ID's threshold on p(malignant) again, on its validation part, for a target sensitivity."""
    point = services().refit_operating_point(run_id, by="cli", sensitivity=sensitivity)
    spec = "n/a" if point["specificity"] is None else f"{point['specificity']:.3f}"
    click.echo(f"run {run_id}: suspicious at p(malignant) >= {point['threshold']:.4f}; on validation sensitivity "
               f"{point['sensitivity']:.3f} (target {point['target_sensitivity']:g}), specificity {spec}")


@models_group.command("validations")
@click.argument("run_id", type=RUN_ID, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def validations_command(run_id: int | None, as_json: bool) -> None:
    """External validations (evaluations on data a model never trained on), of one run or all."""
    rows = services().store.validations(run_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no external validations yet: `busi-web evaluate --run ID --dataset NAME --data-dir DIR` on data "
                   "the model never trained on records one")
    for v in rows:
        for site, m in v["metrics"].items():
            click.echo(f"validation {v['id']}: run {v['run_id']} on {v['dataset']} ({site}, {m['n']} images, "
                       f"{', '.join(m.get('devices') or {}) or 'devices unknown'}) {v['created_at']} by "
                       f"{v['created_by']}: accuracy {_num(m['accuracy'])}, benign-vs-malignant AUC "
                       f"{_num(m['auc_bm'])}")


@models_group.command("acceptance")
@click.argument("modality")
@click.option("--source", type=click.Choice(SOURCES),
              help="folder: every image of --data-dir; share: a share of a dataset, by the duplicate-aware splitter.")
@click.option("--dataset", help="The dataset plugin that reads the images.")
@click.option("--data-dir", type=click.Path(), help="The images' folder (for datasets that read one).")
@click.option("--share", type=click.FloatRange(0, 0.5, min_open=True), help="With --source share: the fraction.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="With --source share.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A dataset parameter. Repeatable.")
@click.option("--name", help="A name for the set.")
@click.option("--from-validation", "validation_id", type=click.IntRange(1),
              help="Use the data of this external validation (`busi-web models validations`) instead.")
@with_appcontext
@user_errors
def acceptance_command(modality: str, source: str | None, dataset: str | None, data_dir: str | None,
                       share: float | None, seed: int, params: tuple[str, ...], name: str | None,
                       validation_id: int | None) -> None:
    """Define MODALITY's acceptance set; later runs on that data leave its images out."""
    if validation_id is not None:
        if source or dataset:
            raise UserError("give --from-validation alone, or --source and --dataset, not both")
        row = services().acceptance_from_validation(validation_id, by="cli", name=name, modality=modality)
    else:
        if not source or not dataset:
            raise UserError("give --source and --dataset (or --from-validation ID)")
        row = services().define_acceptance(modality, source=source, dataset=dataset, data_dir=data_dir,
                                           dataset_params=parse_params(params, "--param"), share=share, seed=seed,
                                           name=name, by="cli")
    click.echo(f"acceptance set {row['id']} for {modality}: {row['images']} images")


@models_group.command("evaluate")
@click.argument("run_id", type=RUN_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def evaluate_command(run_id: int, as_json: bool) -> None:
    """Score run RUN_ID's model on its modality's acceptance set (kept for the gate)."""
    out = services().score_acceptance(run_id, by="cli")
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    m = out["metrics"]
    click.echo(f"run {run_id} on acceptance set {out['set_id']} ({m['n']} images):")
    for key in ["accuracy", "macro_f1", "auc", "ece", *sorted(k for k in m if k.startswith("sensitivity_"))]:
        ci = (m.get("ci") or {}).get(key)
        click.echo(f"  {key:<24} {_num(m.get(key))}" + (f"  (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
    click.echo("  passes the gate" if not out["gate_failures"] else "  gate: " + "; ".join(out["gate_failures"]))


@models_group.command("card")
@click.argument("run_id", type=RUN_ID)
@click.option("--markdown", is_flag=True, help="Print the Markdown export instead of JSON.")
@with_appcontext
@user_errors
def card_command(run_id: int, markdown: bool) -> None:
    """Print run RUN_ID's model card."""
    svc = services()
    card = build_card(svc.store, svc.registry, run_id)
    click.echo(card_markdown(card) if markdown else json.dumps(card, indent=2, default=str))


COMMANDS = [models_group]
