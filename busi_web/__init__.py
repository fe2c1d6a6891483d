"""busi-web: explainable breast-imaging diagnosis for a hospital intranet.

``create_app`` is the Flask application factory; ``hookimpl`` is what a
plugin author decorates hook functions with (see :mod:`busi_web.hookspecs`).
"""

from .hookspecs import hookimpl

__all__ = ["create_app", "hookimpl"]
__version__ = "0.1.0"


def create_app(config=None):
    """Build the Flask app (see :func:`busi_web.app.create_app`)."""
    from .app import create_app as _create_app

    return _create_app(config)
