"""Command line for the instance: ``init`` (config, database, first admin) and ``serve`` (gunicorn)."""

from __future__ import annotations

import os
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from busi_web.cli.common import services, user_errors
from busi_web.cli.users import create_first_admin
from busi_web.config import ROOT, load_settings, write_instance_config
from busi_web.store.db import hide_password


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


# glibc reads its tunables when a process starts: the gunicorn master gets them, and its forked workers with it.
# hugetlb=1 asks for transparent huge pages on the big blocks that gunicorn_conf.py's mmap threshold sends to mmap
# (the model's activations, decoded images): one page fault per 2 MB instead of per 4 kB. Without it those faults
# cost about 20 ms of CPU per diagnosis of a ResNet18 at 224 px (benchmarks/serve.py, docs/scaling.md).
HUGETLB = "glibc.malloc.hugetlb=1"


def serving_tunables(existing: str | None) -> str:
    """``GLIBC_TUNABLES`` for a serving process: ``existing`` plus :data:`HUGETLB` unless it sets hugetlb itself."""
    if existing and "glibc.malloc.hugetlb" in existing:
        return existing
    return f"{existing}:{HUGETLB}" if existing else HUGETLB


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="127.0.0.1",
              help="Address to listen on (HOST).")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), type=click.IntRange(1, 65535),
              show_default="8000", help="Port to listen on (PORT).")
@click.option("--threads", default=lambda: int(os.environ.get("THREADS", "16")), type=click.IntRange(1, 512),
              show_default="16", help="Request threads of each gthread worker (THREADS).")
@click.option("--workers", default=lambda: int(os.environ.get("WORKERS", "1")), type=click.IntRange(1, 64),
              show_default="1", help="gunicorn worker processes (WORKERS); more than one needs REDIS_URL.")
def serve_command(host: str, port: int, threads: int, workers: int) -> None:
    """Serve the app with gunicorn (gthread workers, THREADS threads each)."""
    if workers > 1 and not load_settings().get("REDIS_URL"):
        raise click.ClickException(f"{workers} workers need REDIS_URL (redis://HOST:6379/0) for the live channel and "
                                   "the login counters they share; set it, or serve with one worker")
    env = dict(os.environ, HOST=host, PORT=str(port), THREADS=str(threads), WORKERS=str(workers))
    env["GLIBC_TUNABLES"] = serving_tunables(env.get("GLIBC_TUNABLES"))
    conf = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "--chdir", str(ROOT), "wsgi:app"]
    click.echo(f"serving on http://{host}:{port}/ (gunicorn gthread, {workers} worker{'s' * (workers > 1)}, "
               f"{threads} threads each)")
    os.execve(sys.executable, args, env)


@click.group("db")
def db_group() -> None:
    """The store's database: where it is, its schema, and copying it into another (SQLite to PostgreSQL)."""


@db_group.command("status")
@with_appcontext
def db_status_command() -> None:
    """Where the store is, its schema revision, and rows per table."""
    from busi_web.store.copy import summary, table_counts  # only this command counts rows

    store = services().store
    click.echo(f"database: {store.location} ({store.dialect})")
    click.echo(f"schema:   {store.schema_version()}")
    click.echo(f"rows:     {summary(table_counts(store))}")


@db_group.command("copy")
@click.argument("target")
@with_appcontext
@user_errors
def db_copy_command(target: str) -> None:
    """Copy every row of this instance's store into the empty database TARGET (a postgresql:// URL, or a SQLite
    file), creating its schema first. Then point DATABASE_URL at TARGET and restart. The run folders stay where
    they are (RUNS_DIR)."""
    # Only this command opens a second store and copies rows.
    from busi_web.store import JobStore
    from busi_web.store.copy import copy_store, summary  # (same reason)

    source = services().store
    copied = copy_store(source, JobStore(target, current_app.config["RUNS_DIR"]))
    click.echo(f"copied {source.location} -> {hide_password(target)}: {summary(copied)}")


COMMANDS = [init_command, serve_command, db_group]
