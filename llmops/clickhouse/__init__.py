"""The ClickHouse observability store: backends, migrations, row conversion, query helpers.

Entry points: :func:`open_store` (a backend by name), :func:`llmops.clickhouse.migrations.
apply_migrations`, :func:`llmops.clickhouse.rows.columns_for` and the helpers in
:mod:`llmops.clickhouse.queries`.
"""

from __future__ import annotations

from typing import Any

from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseStore, ClickHouseUnavailable

__all__ = [
    "ClickHouseQueryError",
    "ClickHouseStore",
    "ClickHouseUnavailable",
    "open_store",
]


def open_store(
    backend: str,
    *,
    dsn: str | None = None,
    chdb_session: Any | None = None,
    database: str | None = None,
) -> ClickHouseStore:
    """A store for ``backend``: ``chdb`` wraps ``chdb_session`` (the process's one session;
    ``database`` defaults to ``default``), ``server`` connects to ``dsn`` (native protocol;
    the database is the DSN's path unless ``database`` is given). Connections open lazily.
    """
    if backend == "chdb":
        if chdb_session is None:
            raise ValueError("backend 'chdb' needs chdb_session (the process's shared session)")
        from llmops.clickhouse.chdb_store import ChdbStore

        return ChdbStore(chdb_session, database=database or "default")
    if backend == "server":
        if not dsn:
            raise ValueError("backend 'server' needs dsn, e.g. clickhouse://default@host:9000/db")
        from llmops.clickhouse.server_store import ServerStore, with_database

        return ServerStore(with_database(dsn, database) if database else dsn)
    raise ValueError(f"unknown ClickHouse backend {backend!r} (expected 'chdb' or 'server')")
