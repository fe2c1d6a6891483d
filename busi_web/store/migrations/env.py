"""Alembic's environment: migrate on the connection the store hands over (inside its write transaction)."""

from alembic import context

from busi_web.store.tables import metadata

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); PostgreSQL alters them in place.
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
