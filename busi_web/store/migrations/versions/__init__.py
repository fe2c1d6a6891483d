"""Alembic revisions of the store, oldest first (``r001`` is the baseline)."""
