"""The command line: ``busi-web COMMAND`` (the same commands as ``flask --app busi_web COMMAND``).

One module per command group: :mod:`~busi_web.cli.instance` (init, serve),
:mod:`~busi_web.cli.plugins` (plugins, datasets), :mod:`~busi_web.cli.runs`
(train, runs, resume, cancel), :mod:`~busi_web.cli.models` (models: defaults,
the acceptance gate, cards), :mod:`~busi_web.cli.diagnose` (predict, evaluate)
and :mod:`~busi_web.cli.users` (users, tokens), :mod:`~busi_web.cli.audit`
(audit) and :mod:`~busi_web.cli.workers` (worker, workers); what
they share, the ``KEY=VALUE`` parser included, is :mod:`~busi_web.cli.common`.

The ``busi-web`` entry point is :mod:`busi_web.console`, which hands
:func:`command_group` the app factory. May import every layer below the web
(services and down); it imports neither the web nor the app.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from flask import Flask
from flask.cli import FlaskGroup

from busi_web.cli import audit, diagnose, instance, models, plugins, runs, users, workers

COMMANDS: list[click.Command] = [*instance.COMMANDS, *plugins.COMMANDS, *runs.COMMANDS, *models.COMMANDS,
                                 *diagnose.COMMANDS, *users.COMMANDS, *audit.COMMANDS,
                                 *workers.COMMANDS]


def register_commands(app: Flask) -> None:
    """Add every command to ``app.cli`` (for ``flask --app busi_web COMMAND``)."""
    for command in COMMANDS:
        app.cli.add_command(command)


class _Group(FlaskGroup):
    """Flask's group, but listing its own commands without building the app (which would import torch)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self.commands.get(name)


def command_group(create_app: Callable[[], Flask]) -> click.Group:
    """The ``busi-web`` group: every command, with ``create_app`` called only when a command needs the app."""
    group = _Group(create_app=create_app, add_default_commands=False, add_version_option=False, load_dotenv=False,
                   help="busi-web: explainable breast-imaging diagnosis.")
    for command in COMMANDS:
        group.add_command(command)
    return group
