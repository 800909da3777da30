"""Alembic environment: runs on the connection the store hands over (online mode only).

The store opens the transaction (and, on PostgreSQL, takes an advisory lock so that
replicas starting together migrate one at a time) and passes the connection in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from services.governance.schema import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "the registry migrations run online on a connection the store passes in "
        "(services.governance.store_sql.migrate); offline SQL generation is not supported"
    )
context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
