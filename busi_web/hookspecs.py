"""The plugin contract of busi-web.

A plugin is a module (or any object) with functions marked by
``busi_web.hookimpl`` and named like the hooks below, exposed through an
entry point in the group ``busi_web``::

    [project.entry-points.busi_web]
    my_plugin = "my_package.my_module"

Built-in plugins ship in this project's ``plugins/`` folder (installed as
the package ``busi_web_plugins``) and load through the very same entry-point
group. Each ``register_*`` hook returns a list of spec objects from
:mod:`busi_web.specs`; names must be unique across all plugins. Loading is all
or nothing: a plugin that registers a taken name, whose hook raises, or that
marks as a hook a function that is not one of these (a misspelled name) is
refused as a whole and reported on one line; the app starts. The guide for
plugin authors is ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("busi_web")
hookimpl = pluggy.HookimplMarker("busi_web")


@hookspec
def register_backbones():  # type: ignore[empty-body]
    """Return a list of :class:`busi_web.specs.BackboneSpec` this plugin adds."""


@hookspec
def register_explainers():  # type: ignore[empty-body]
    """Return a list of :class:`busi_web.specs.ExplainerSpec` this plugin adds."""


@hookspec
def register_datasets():  # type: ignore[empty-body]
    """Return a list of :class:`busi_web.specs.DatasetSpec` this plugin adds."""


@hookspec
def startup(app):  # type: ignore[empty-body]
    """Called once with the Flask ``app`` after it is configured; may add routes or config.

    An exception here is reported on the plugins page and does not stop the app.
    """
