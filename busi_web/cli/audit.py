"""Command line for the audit log: ``busi-web audit`` with the filters of the Audit page, as text, JSON or CSV."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from busi_web.cli.common import RUN_ID, services, user_errors
from busi_web.errors import UserError
from busi_web.store.audit import rows_to_csv, time_window


@click.command("audit")
@click.option("--user", help="Only what this user did.")
@click.option("--run", "run_id", type=RUN_ID, help="Only rows about this run (its model).")
@click.option("--action", "actions", multiple=True, help="Only this action, e.g. model.default.set. Repeatable.")
@click.option("--since", help="From this date (2026-12-01) or ISO 8601 time.")
@click.option("--until", help="Up to this date (the whole day) or ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="At most this many rows.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (detail as JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def audit_command(user: str | None, run_id: int | None, actions: tuple[str, ...], since: str | None,
                  until: str | None, limit: int, as_csv: bool, as_json: bool) -> None:
    """The audit log, newest first: who did what, when, to which run."""
    try:
        start, end = time_window(since, until)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    rows = services().store.audit_log(actions or None, limit, user=user, run_id=run_id, since=start, until=end)
    if as_csv:
        click.echo(rows_to_csv(rows), nl=False)
    elif as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            run = f" run {r['run_id']}" if r["run_id"] else ""
            click.echo(f"{r['id']:>6} {r['time']} {r['user'] or '-':<12} {r['action']}{run} "
                       f"{json.dumps(r['detail'], sort_keys=True, default=str)}")


COMMANDS = [audit_command]
