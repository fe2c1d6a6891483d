"""Fixtures for the tests that go through the app: its own store."""

import pytest


@pytest.fixture
def store(app):
    """The app's job store (on the app's SQLite file), in place of the standalone one of tests/conftest.py."""
    return app.extensions["busi_web"].store
