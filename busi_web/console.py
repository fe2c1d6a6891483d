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
    from busi_web.app import create_app

    return create_app()


main = command_group(_create_app)
