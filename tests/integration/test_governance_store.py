"""One contract suite for the registry store, run against SQLite (a file, as embedded mode
keeps it) and a real PostgreSQL 15 (``postgres_dsn``, deploy/local/postgres.sh; each test in
a schema of its own). The same tests, the same code path: the schema the migrations build
matches the tables, the verbs keep their promises, compare-and-set loses races honestly,
and concurrent writers through the registry neither duplicate nor lose anything."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from llmops.errors import Aborted
from llmops.identity import Identity
from llmops.v1 import events_pb2
from services.governance import model, schema
from services.governance.guard import BuiltinRules
from services.governance.model import AliasMove, Change, Ref, Registration
from services.governance.registry import Registry
from services.governance.store import (
    AliasEventRow,
    EdgeRow,
    NameChangeRow,
    RegistryTx,
    StateChangeRow,
    VersionRow,
)
from services.governance.store_sql import SqlRegistryStore, WriteConflict
from tests.unit.test_governance_registry import FakeEvents, digest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.infra)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlRegistryStore]:
    if request.param == "sqlite":
        opened = SqlRegistryStore.sqlite(tmp_path / "governance" / "registry.sqlite3")
        await opened.open()
        yield opened
        await opened.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(dsn)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    opened = SqlRegistryStore.from_url(f"{dsn}?options=-csearch_path%3D{name}", pool_size=4)
    try:
        await opened.open()
        yield opened
    finally:
        await opened.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def _version(
    artifact_id: int, number: int, digest_of: str, state: str = "REGISTERED"
) -> VersionRow:
    return VersionRow(
        artifact_id,
        number,
        f"s3://m/{number}/",
        digest(digest_of),
        state,
        "{}",
        "{}",
        "u:a",
        number,
    )


def _new(tx: RegistryTx, name: str = "summary-llm") -> int:
    return tx.insert_artifact("MODEL", name, "d", "o", "{}", "u:a", 1)


async def test_migrations_build_exactly_the_tables_and_rerun_as_a_no_op(
    store: SqlRegistryStore,
) -> None:
    def diff() -> list[Any]:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE})
            return compare_metadata(context, schema.metadata)

    assert await asyncio.to_thread(diff) == []
    await store.open()  # a second start: already at head
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {schema.VERSION_TABLE}"))
        assert [v for (v,) in versions] == ["0003"]


async def test_artifacts_versions_and_listing(store: SqlRegistryStore) -> None:
    def write(tx: RegistryTx) -> int:
        art = _new(tx)
        _new(tx, "summary_llm-other")  # LIKE wildcards in the prefix are literal
        tx.insert_artifact("PROMPT", "summary-prompt", "", "", "{}", "u:a", 2)
        for n in (1, 2, 3):
            tx.insert_version(_version(art, n, f"c{n}", "APPROVED" if n == 2 else "REGISTERED"))
        return art

    art = await store.write(write)

    def read(tx: RegistryTx) -> None:
        row = tx.artifact("MODEL", "summary-llm")
        assert row is not None and row.id == art and not row.deleted
        assert tx.artifact("PROMPT", "summary-llm") is None
        assert tx.latest_versions([art]) == {art: 3}
        assert [v.version for v in tx.versions(art, [], 0, 10)] == [3, 2, 1]
        assert [v.version for v in tx.versions(art, ["APPROVED"], 0, 10)] == [2]
        assert [v.version for v in tx.versions(art, [], 1, 1)] == [2]
        found = tx.version_by_digest(art, digest("c2"))
        assert found is not None and found.version == 2 and found.state == "APPROVED"
        assert tx.version(art, 4) is None
        names = [a.name for a in tx.list_artifacts(None, "summary", 0, 10)]
        assert names == ["summary-llm", "summary_llm-other", "summary-prompt"]
        assert [a.name for a in tx.list_artifacts("MODEL", "summary_", 0, 10)] == [
            "summary_llm-other"
        ]
        assert [a.name for a in tx.list_artifacts(None, "", 1, 1)] == ["summary_llm-other"]

    await store.read(read)


async def test_unique_keys_hold(store: SqlRegistryStore) -> None:
    art = await store.write(_new)

    def same_digest(tx: RegistryTx) -> None:
        tx.insert_version(_version(art, 1, "same"))
        tx.insert_version(_version(art, 2, "same"))

    with pytest.raises(WriteConflict):  # retried, collides every time, nothing kept
        await store.write(same_digest)
    assert await store.read(lambda tx: tx.latest_versions([art])) == {}
    with pytest.raises(WriteConflict):
        await store.write(lambda tx: _new(tx))  # same kind and name


async def test_state_and_alias_compare_and_set(store: SqlRegistryStore) -> None:
    def setup(tx: RegistryTx) -> int:
        art = _new(tx)
        tx.insert_version(_version(art, 1, "a", "APPROVED"))
        tx.insert_version(_version(art, 2, "b", "APPROVED"))
        return art

    art = await store.write(setup)

    def moves(tx: RegistryTx) -> list[bool]:
        return [
            tx.set_state(art, 1, "REGISTERED", "APPROVED"),  # stale expectation
            tx.set_state(art, 1, "APPROVED", "DEPRECATED"),
            tx.move_alias(art, "champion", 0, 1, 10),  # create
            tx.move_alias(art, "champion", 2, 1, 11),  # stale
            tx.move_alias(art, "champion", 1, 2, 12),  # move
            tx.move_alias(art, "old", 0, 0, 13),  # removing an absent alias
            tx.move_alias(art, "champion", 1, 0, 14),  # stale removal
        ]

    assert await store.write(moves) == [False, True, True, False, True, True, False]

    def read(tx: RegistryTx) -> None:
        assert tx.aliases([art]) == {art: {"champion": 2}}
        v1 = tx.version(art, 1)
        assert v1 is not None and v1.state == "DEPRECATED"

    await store.read(read)
    assert await store.write(lambda tx: tx.move_alias(art, "champion", 2, 0, 15))
    assert await store.read(lambda tx: tx.aliases([art])) == {}


async def test_history_rows_come_back_in_order(store: SqlRegistryStore) -> None:
    def write(tx: RegistryTx) -> int:
        art = _new(tx)
        tx.insert_version(_version(art, 1, "a"))
        for i, (prev, new) in enumerate([(0, 1), (1, 0), (0, 1)]):
            tx.insert_alias_event(AliasEventRow(art, "champion", prev, new, "u:a", "r", 100 + i))
        tx.insert_alias_event(AliasEventRow(art, "challenger", 0, 1, "u:b", "", 101))
        tx.insert_state_change(StateChangeRow(art, 1, "", "REGISTERED", "u:a", "", 1))
        tx.insert_state_change(StateChangeRow(art, 1, "REGISTERED", "APPROVED", "u:b", "ok", 2))
        tx.rename_artifact(art, "summary-llm-2")
        tx.insert_name_change(NameChangeRow(art, "summary-llm", "summary-llm-2", "u:a", "", 3))
        tx.mark_deleted(art)
        return art

    art = await store.write(write)

    def read(tx: RegistryTx) -> None:
        champion = tx.alias_events(art, "champion", None)
        assert [(e.previous_version, e.version, e.time_us) for e in champion] == [
            (0, 1, 100), (1, 0, 101), (0, 1, 102),
        ]  # fmt: skip
        assert [e.alias for e in tx.alias_events(art, None, 101)] == [
            "champion", "champion", "challenger",
        ]  # fmt: skip
        assert [c.state for c in tx.state_changes(art, 1)] == ["REGISTERED", "APPROVED"]
        assert tx.name_changes(art)[0].new_name == "summary-llm-2"
        row = tx.artifact("MODEL", "summary-llm-2")
        assert row is not None and row.deleted
        assert tx.list_artifacts(None, "", 0, 10) == []  # deleted: not listed, still stored

    await store.read(read)


async def test_edges_are_recorded_once_and_found_from_either_end(store: SqlRegistryStore) -> None:
    edge = EdgeRow("artifact:1@1", "artifact:2@1", "TRAINED_ON", "u:a", 5)

    def write(tx: RegistryTx) -> list[bool]:
        return [
            tx.insert_edge(edge),
            tx.insert_edge(edge),
            tx.insert_edge(EdgeRow("artifact:2@1", "route:summary", "SERVED_BY", "u:a", 6)),
        ]

    assert await store.write(write) == [True, False, True]

    def read(tx: RegistryTx) -> None:
        assert [e.downstream for e in tx.edges("upstream", ["artifact:1@1"])] == ["artifact:2@1"]
        both = tx.edges("downstream", ["artifact:2@1", "route:summary"])
        assert [e.relation for e in both] == ["TRAINED_ON", "SERVED_BY"]
        assert tx.edges("upstream", []) == []

    await store.read(read)


async def test_a_failing_transaction_leaves_nothing(store: SqlRegistryStore) -> None:
    def half(tx: RegistryTx) -> None:
        art = _new(tx)
        tx.insert_version(_version(art, 1, "a"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.write(half)
    assert await store.read(lambda tx: tx.list_artifacts(None, "", 0, 10)) == []


def _actor(name: str) -> Change:
    return Change(actor=Identity(name, events_pb2.ACTOR_TYPE_USER, True, "test"))


async def test_concurrent_registrations_through_the_registry(store: SqlRegistryStore) -> None:
    """Racing first versions and racing identical digests: versions 1..n without gaps or
    duplicates, one version per digest."""
    registry = Registry(store, FakeEvents(), BuiltinRules(["champion"]))

    async def register(content: str) -> int:
        reg = Registration(model.MODEL, "raced", digest(content), "s3://m/x/")
        return (await registry.register(reg, _actor("u:a"))).version.version

    numbers = await asyncio.gather(*(register(f"c{i % 4}") for i in range(12)))
    assert sorted(set(numbers)) == [1, 2, 3, 4]
    assert numbers[0:4] == numbers[4:8] == numbers[8:12]  # same content, same version


async def test_concurrent_alias_moves_with_an_expected_version(store: SqlRegistryStore) -> None:
    """Many movers expect the alias at version 1: exactly one wins, the others get ABORTED,
    and the history holds exactly the winning move."""
    registry = Registry(store, FakeEvents(), BuiltinRules([]))
    for n in range(1, 6):
        await registry.register(Registration(model.MODEL, "m", digest(f"v{n}")), _actor("u:a"))
        await registry.transition(Ref(model.MODEL, "m", n), model.APPROVED, _actor("u:b"))
    await registry.set_alias(AliasMove(model.MODEL, "m", "champion", 1), _actor("u:b"))

    async def move(to: int) -> str:
        try:
            await registry.set_alias(
                AliasMove(model.MODEL, "m", "champion", to, expected_version=1), _actor("u:b")
            )
        except Aborted:
            return "aborted"
        return "moved"

    outcomes = await asyncio.gather(*(move(n) for n in (2, 3, 4, 5)))
    assert sorted(outcomes) == ["aborted", "aborted", "aborted", "moved"]
    history = await registry.alias_history(model.MODEL, "m", "champion")
    assert len(history) == 2
    assert (history[0].previous_version, history[0].version) == (0, 1)
    assert history[1].previous_version == 1
