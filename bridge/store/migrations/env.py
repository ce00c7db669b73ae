"""Alembic environment: runs on the connection `bridge migrate` hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bridge.store.tables import metadata

connection = context.config.attributes.get("connection")

if connection is None:
    # Plain `alembic` command line (autogenerate while developing): a sync engine.
    url = context.config.get_main_option("sqlalchemy.url") or ""
    url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_engine(url).connect() as sync_connection:
        context.configure(connection=sync_connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        sync_connection.commit()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
