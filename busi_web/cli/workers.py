"""Command line for trainer workers: ``worker`` (train queued runs on this host) and ``workers`` (list them)."""

from __future__ import annotations

import json
import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from busi_web.cli.common import services, user_errors


@click.command("worker")
@click.option("--gpus", default="", metavar="0,1,...",
              help="Train one run per GPU at a time, on these CUDA devices (default: one run at a time).")
@click.option("--name", default=None, help="The worker's name in the store (default: HOST-PID).")
@with_appcontext
@user_errors
def worker_command(gpus: str, name: str | None) -> None:
    """Train queued runs on this host until stopped (SIGTERM or Ctrl-C: its runs are queued again). Any host that
    reaches the store's database (DATABASE_URL) and the run folders (RUNS_DIR, a shared path) can run one;
    a run whose worker stops answering is resumed by another."""
    from busi_web.training.worker import Worker, serve  # only a worker needs it

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    config = current_app.config
    store = services().store
    if store.dialect == "sqlite":
        click.echo(f"note: the store is the SQLite file {store.location}: workers on this host only (other hosts "
                   "need DATABASE_URL, PostgreSQL)", err=True)
    worker = Worker(store, name=name, gpus=[g.strip() for g in gpus.split(",") if g.strip()],
                    allowed_plugins=services().registry.allowed_list(),
                    heartbeat_s=float(config["WORKER_HEARTBEAT_SECONDS"]),
                    stale_s=float(config["WORKER_STALE_SECONDS"]),
                    cancel_timeout=float(config["CANCEL_TIMEOUT_SECONDS"]))
    click.echo(f"worker {worker.name}: {len(worker.slots)} slot(s), store {store.location}, runs {store.runs_dir}")
    serve(worker)


@click.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def workers_command(as_json: bool) -> None:
    """The trainer workers: host, slots, seconds since they last answered, the runs they hold."""
    found = services().store.list_workers(stale_after_s=float(current_app.config["WORKER_STALE_SECONDS"]))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no trainer worker is running (start one with `busi-web worker`)")
    for w in found:
        state = "SILENT" if w["stale"] else "ok"
        click.echo(f"{w['name']:<28} {w['host']:<20} slots {w['slots']}  {state:<6} last seen {w['age_s']:.0f} s ago"
                   f"  runs {', '.join(map(str, w['runs'])) or '-'}")


COMMANDS = [worker_command, workers_command]
