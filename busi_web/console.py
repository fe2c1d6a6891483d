"""The ``busi-web`` command: the command-line group with the app factory, which runs only when a command does.

``busi-web --help`` imports neither the app nor torch; the app (and with it
torch and every plugin) is built the first time a command needs it.
"""

from __future__ import annotations

import logging

from flask import Flask

from busi_web.cli import command_group


def _create_app() -> Flask:
    # A warning of the plugin loader is one line on stderr (the traceback only at debug level).
    logging.basicConfig(level=logging.WARNING, format="busi-web: %(message)s")
    # Imported here, not above: building the app imports torch, which `busi-web --help` must not wait for.
    import click

    from busi_web.app import create_app  # (same reason)
    from busi_web.errors import UserError  # (same reason)

    try:
        return create_app()
    except UserError as exc:  # e.g. the database cannot be reached: one line, not a traceback
        raise click.ClickException(str(exc)) from None


main = command_group(_create_app)
