"""pytest fixtures for plugin authors, registered by busi-web's ``pytest11`` entry point (nothing to import).

* ``busi_registry``: a function, ``busi_registry(*plugins)``: the built-ins plus ``plugins``
  (:func:`busi_web.testing.isolated_registry`).
* ``busi_app``: a function, ``busi_app(*plugins, **config)``: an app on a temporary instance folder
  (:func:`busi_web.testing.make_app`).
* ``busi_client_as``: ``busi_client_as(app, role="admin")``, a logged-in test client.
* ``busi_train_tiny``: ``busi_train_tiny(app, backbone, dataset, ...)``, a finished tiny run's id.

The fixture names start with ``busi_`` so that they never shadow a project's own ``app`` or ``client``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def busi_registry() -> Callable[..., Any]:
    from busi_web.testing import isolated_registry  # busi-web loads only in the tests that use a fixture

    return isolated_registry


@pytest.fixture
def busi_app(tmp_path) -> Callable[..., Any]:
    from busi_web.testing import make_app  # as above

    counter = iter(range(10_000))

    def make(*plugins: object, **config: Any):
        return make_app(tmp_path / f"instance-{next(counter)}", *plugins, **config)

    return make


@pytest.fixture
def busi_client_as() -> Callable[..., Any]:
    from busi_web.testing import client_as  # as above

    return client_as


@pytest.fixture
def busi_train_tiny() -> Callable[..., Any]:
    from busi_web.testing import train_tiny  # as above

    return train_tiny
