"""Command line: ``busi-web COMMAND`` (the same commands as ``flask --app busi_web COMMAND``)."""

from __future__ import annotations

import json
import os
import sys

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from .config import ROOT, write_instance_config


def _registry():
    return current_app.extensions["busi_plugins"]


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.command("init")
@with_appcontext
def init_command() -> None:
    """Prepare the instance folder: config with a secret key, database, runs folder."""
    path = write_instance_config(current_app.instance_path)
    store = current_app.extensions["busi_store"]
    os.makedirs(current_app.config["RUNS_DIR"], exist_ok=True)
    click.echo(f"instance: {current_app.instance_path}")
    click.echo(f"config:   {path}")
    click.echo(f"database: {store.db_path}")
    click.echo(f"runs:     {current_app.config['RUNS_DIR']}")
    for hook in current_app.extensions.get("busi_init_hooks", []):
        hook(current_app)


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="127.0.0.1")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), type=int, show_default="8000")
@click.option("--threads", default=lambda: int(os.environ.get("THREADS", "16")), type=int, show_default="16")
def serve_command(host: str, port: int, threads: int) -> None:
    """Serve the app with gunicorn (one gthread worker, THREADS threads)."""
    env = dict(os.environ, HOST=host, PORT=str(port), THREADS=str(threads))
    conf = os.path.join(os.path.dirname(__file__), "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "--chdir", str(ROOT), "wsgi:app"]
    click.echo(f"serving on http://{host}:{port}/ (gunicorn gthread, 1 worker, {threads} threads)")
    os.execve(sys.executable, args, env)


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def plugins_command(as_json: bool) -> None:
    """List every plugin: distribution, version, what it registers, loaded or failed."""
    registry = _registry()
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


def resolve_data_dir(dataset: str, data_dir: str | None) -> str | None:
    """The folder a dataset reads: explicit, else DATA_DIRS[name], else an error when one is needed."""
    spec = _registry().dataset(dataset)
    if data_dir:
        return data_dir
    configured = (current_app.config.get("DATA_DIRS") or {}).get(dataset)
    if configured:
        return configured
    if spec.needs_data_dir:
        _fail(f"dataset {dataset!r} needs a data folder: pass --data-dir DIR or set "
              f"BUSI_WEB_DATA_DIRS='{{\"{dataset}\": \"/path/to/folder\"}}'")
    return None


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            _fail(f"--param expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


@click.group("datasets")
def datasets_group() -> None:
    """Inspect datasets."""


@datasets_group.command("inspect")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of the dataset.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Dataset parameter.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def inspect_command(name: str, data_dir: str | None, params: tuple[str, ...], as_json: bool) -> None:
    """Class counts, image sizes, masks and near-duplicate groups of dataset NAME."""
    from .datasets import DatasetError
    from .inspect_data import format_inspection, inspect_dataset
    from .plugins import UnknownPlugin
    from .specs import InvalidParameters

    try:
        spec = _registry().dataset(name)
        root = resolve_data_dir(name, data_dir)
        dataset = spec.build(parse_params(params), root=root)
        report = inspect_dataset(dataset)
    except (DatasetError, UnknownPlugin, InvalidParameters) as exc:
        _fail(str(exc))
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_inspection(report))


COMMANDS = [init_command, serve_command, plugins_command, datasets_group]


def register_commands(app: Flask) -> None:
    from . import cli_eval, cli_runs, cli_users

    for command in COMMANDS + cli_runs.COMMANDS + cli_eval.COMMANDS:
        app.cli.add_command(command)
    cli_users.register(app)


def _create_app():
    from . import create_app

    return create_app()


main = FlaskGroup(create_app=_create_app, add_default_commands=False, add_version_option=False,
                  help="busi-web: explainable breast-imaging diagnosis.")
