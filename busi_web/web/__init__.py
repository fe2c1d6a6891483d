"""The web: one blueprint per page family (its HTML page and its JSON API), Socket.IO, login, and shared helpers.

Owns routes, templates' data, authentication and sessions, the live channel
(:mod:`~busi_web.web.live`), and how errors are answered
(:mod:`~busi_web.web.helpers`). May import every layer below it (services,
training, diagnosis, evaluation, model, explain, data, store, plugins and the
contract); the command line does not import it, nor it the command line.
"""

from __future__ import annotations

from flask import Flask

from busi_web.evaluation.card import NOTICE
from busi_web.specs import CONTRACT_VERSION
from busi_web.web import admin, diagnose, home, models, reports, runs, runs_api, studies, system, train
from busi_web.web.auth import init_auth
from busi_web.web.hardening import init_hardening
from busi_web.web.helpers import register_error_handlers
from busi_web.web.live import init_live
from busi_web.web.metrics import init_metrics
from busi_web.web.throttle import init_throttle

BLUEPRINTS = (home.bp, diagnose.bp, studies.bp, reports.bp, train.bp, runs.bp, runs_api.bp, models.bp, admin.bp,
              system.bp, system.probes)


def init_web(app: Flask) -> None:
    """Install error answers, login, login throttling and CSRF, every blueprint, the Socket.IO channel, and the
    security headers, Secure cookies and proxy settings on ``app``."""
    register_error_handlers(app)
    init_metrics(app)  # first: its timer starts before the login guard runs
    init_auth(app)
    init_throttle(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # The decision-support notice on every page, and the plugin contract the Plugins table shows for built-ins.
    app.context_processor(lambda: {"notice": NOTICE, "contract_version": CONTRACT_VERSION})
    init_live(app)
    init_hardening(app)  # last: ProxyFix wraps everything, Socket.IO included
