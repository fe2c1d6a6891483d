"""Command line for the instance: ``init`` (config, database, first admin) and ``serve`` (gunicorn)."""

from __future__ import annotations

import os
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from busi_web.cli.common import services
from busi_web.cli.users import create_first_admin
from busi_web.config import ROOT, write_instance_config


@click.command("init")
@with_appcontext
def init_command() -> None:
    """Prepare the instance folder: config with a secret key, database, runs folder, the first admin."""
    path = write_instance_config(current_app.instance_path)
    store = services().store
    os.makedirs(current_app.config["RUNS_DIR"], exist_ok=True)
    click.echo(f"instance: {current_app.instance_path}")
    click.echo(f"config:   {path}")
    click.echo(f"database: {store.location}")
    click.echo(f"runs:     {current_app.config['RUNS_DIR']}")
    create_first_admin(current_app)


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="127.0.0.1",
              help="Address to listen on (HOST).")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), type=click.IntRange(1, 65535),
              show_default="8000", help="Port to listen on (PORT).")
@click.option("--threads", default=lambda: int(os.environ.get("THREADS", "16")), type=click.IntRange(1, 512),
              show_default="16", help="Request threads of the one gthread worker (THREADS).")
def serve_command(host: str, port: int, threads: int) -> None:
    """Serve the app with gunicorn (one gthread worker, THREADS threads)."""
    env = dict(os.environ, HOST=host, PORT=str(port), THREADS=str(threads))
    conf = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "--chdir", str(ROOT), "wsgi:app"]
    click.echo(f"serving on http://{host}:{port}/ (gunicorn gthread, 1 worker, {threads} threads)")
    os.execve(sys.executable, args, env)


COMMANDS = [init_command, serve_command]
