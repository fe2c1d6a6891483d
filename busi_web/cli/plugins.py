"""Command line for what is installed: ``plugins`` and ``datasets inspect``."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from busi_web.cli.common import parse_params, resolve_data_dir, services, user_errors
from busi_web.cli.scaffold import write_plugin
from busi_web.data.inspection import format_inspection, inspect_dataset


@click.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@with_appcontext
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List every plugin: distribution, version, contract, what it registers, loaded or failed. The subcommands
    check plugins (check) and start a new one (new)."""
    if ctx.invoked_subcommand is not None:
        return
    registry = services().registry
    if as_json:
        click.echo(json.dumps({**registry.to_dict(), "allowed_unknown": registry.unknown_allowed()}, indent=2,
                              default=str))
        return
    for p in registry.plugins:
        where = f"{p.distribution or '?'} {p.version or ''}".strip()
        contract = "" if p.builtin else f", contract {p.contract or 'not declared'}"
        click.echo(f"{p.name:<14} {p.status:<9} {where}{' (built-in)' if p.builtin else contract}")
        for kind, names in p.registers.items():
            if names:
                click.echo(f"    {kind}: {', '.join(names)}")
        for e in p.errors:
            click.echo(f"    error: {e}")
    for name in registry.unknown_allowed():
        click.echo(f"warning: ALLOWED_PLUGINS names {name!r}, which no installed plugin is called (a typo disables "
                   "the plugin it meant)")


@plugins_command.command("check")
@click.argument("names", nargs=-1)
@click.option("--data-dir", "data_dirs", multiple=True, metavar="DATASET=DIR",
              help="A data folder for a dataset that needs one, to read a few of its samples. Repeatable.")
@click.option("--builtins", is_flag=True, help="Check busi-web's own plugins too (with no NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def check_command(names: tuple[str, ...], data_dirs: tuple[str, ...], builtins: bool, as_json: bool) -> None:
    """Load each installed plugin (or those NAMEd) on its own and try every spec: build and run each backbone,
    make a map with each explainer, read a few samples of each dataset. Exits 1 when anything fails, naming the
    plugin, the spec, and the file and line."""
    from busi_web.evaluation.plugin_check import check_plugins  # builds models: torch, only for this command

    report = check_plugins(list(names) or None, parse_params(data_dirs, "--data-dir"), builtins=builtins)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for finding in report.findings:
            click.echo(finding.line())
        if not report.findings:
            click.echo("no third-party plugin is installed (--builtins checks busi-web's own)")
    if not report.ok:
        raise click.exceptions.Exit(1)


@plugins_command.command("new")
@click.argument("name")
@click.option("--into", type=click.Path(file_okay=False), default=".", show_default=True,
              help="The folder the distribution's folder is written into.")
@user_errors
def new_command(name: str, into: str) -> None:
    """Write a new plugin distribution NAME: pyproject with the entry point, a backbone, an explainer and a
    dataset that work, tests that use busi-web's testing kit, and a README."""
    folder = write_plugin(name, into)
    click.echo(f"wrote {folder}: install it with `.venv/bin/pip install -e {folder}`, check it with "
               f"`busi-web plugins check {name.replace('-', '_')}`, test it with `python -m pytest {folder}/tests`")


@click.group("datasets")
def datasets_group() -> None:
    """Inspect datasets."""


@datasets_group.command("inspect")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of the dataset (default: DATA_DIRS).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Dataset parameter (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def inspect_command(name: str, data_dir: str | None, params: tuple[str, ...], as_json: bool) -> None:
    """Class counts, image sizes, masks and near-duplicate groups of dataset NAME."""
    spec = services().registry.dataset(name)
    root = resolve_data_dir(name, data_dir)
    report = inspect_dataset(spec.build(parse_params(params), root=root))
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_inspection(report))


COMMANDS = [plugins_command, datasets_group]
