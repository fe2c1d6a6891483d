"""The store's schema migrations (Alembic), for SQLite and PostgreSQL alike.

``versions/`` holds one revision per schema change, applied in order by
:meth:`busi_web.store.db.StoreBase.migrate` when a store opens. Never edit
a revision that has shipped: add a new one. A SQLite file made before the
store moved to Alembic is first brought to the baseline by its old
sqlite-utils migrations (:mod:`busi_web.store.legacy`), then stamped.
"""
