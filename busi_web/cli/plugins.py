"""Command line for what is installed: ``plugins`` and ``datasets inspect``."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from busi_web.cli.common import parse_params, resolve_data_dir, services, user_errors
from busi_web.data.inspection import format_inspection, inspect_dataset


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def plugins_command(as_json: bool) -> None:
    """List every plugin: distribution, version, what it registers, loaded or failed."""
    registry = services().registry
    if as_json:
        click.echo(json.dumps(registry.to_dict(), indent=2, default=str))
        return
    for p in registry.plugins:
        where = f"{p.distribution or '?'} {p.version or ''}".strip()
        click.echo(f"{p.name:<14} {p.status:<9} {where}{' (built-in)' if p.builtin else ''}")
        for kind, names in p.registers.items():
            if names:
                click.echo(f"    {kind}: {', '.join(names)}")
        for e in p.errors:
            click.echo(f"    error: {e}")


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
