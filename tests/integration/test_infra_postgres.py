"""PostgreSQL 15 started by deploy/local/postgres.sh, driven through psycopg 3 and SQLAlchemy."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.infra


def _libpq_dsn(postgres_dsn: str) -> str:
    """The fixture's SQLAlchemy URL without the ``+psycopg`` driver suffix, for psycopg."""
    return make_url(postgres_dsn).set(drivername="postgresql").render_as_string()


def test_psycopg_roundtrip_on_postgres_15(postgres_dsn: str) -> None:
    url = make_url(postgres_dsn)
    assert (url.drivername, url.username, url.host, url.database) == (
        "postgresql+psycopg",
        "llmops",
        "127.0.0.1",
        "llmops",
    )
    with psycopg.connect(_libpq_dsn(postgres_dsn), connect_timeout=5) as conn:
        assert conn.info.server_version // 10000 == 15
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            assert row is not None and row[0].startswith("15.")
            cur.execute("SELECT current_user, current_database(), current_setting('TimeZone')")
            assert cur.fetchone() == ("llmops", "llmops", "UTC")
            # Not a superuser: code that works here needs no more than the database owner's rights.
            cur.execute("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, True)

            cur.execute(
                "CREATE TEMP TABLE decisions ("
                " id uuid PRIMARY KEY, payload jsonb NOT NULL, at timestamptz DEFAULT now())"
            )
            key = uuid.uuid4()
            cur.execute(
                "INSERT INTO decisions (id, payload) VALUES (%s, %s::jsonb) RETURNING id",
                (key, '{"allow": true, "reasons": ["owner"]}'),
            )
            assert cur.fetchone() == (key,)
            cur.execute("SELECT payload, at IS NOT NULL FROM decisions WHERE id = %s", (key,))
            assert cur.fetchone() == ({"allow": True, "reasons": ["owner"]}, True)

        # A failed statement rolls back the transaction; the connection stays usable.
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            conn.transaction(),
            conn.cursor() as cur,
        ):
            cur.execute("INSERT INTO decisions (id, payload) VALUES (%s, '{}')", (key,))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM decisions")
            assert cur.fetchone() == (1,)


def test_sqlalchemy_engine_on_the_fixture_url(postgres_dsn: str) -> None:
    engine = sa.create_engine(postgres_dsn, pool_pre_ping=True)
    table = f"t_infra_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (k text PRIMARY KEY, v integer)"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES ('a', 1), ('b', 2)"))
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT k, v FROM {table} ORDER BY k")).all()
            assert [tuple(r) for r in rows] == [("a", 1), ("b", 2)]
            assert conn.dialect.server_version_info is not None
            assert conn.dialect.server_version_info[0] == 15
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
