"""The audit trail end to end on real components: raw audit records in the local event log →
the audit writer (chains, anchors heads in SQLite) → the ClickHouse sink (chained topic →
``audit`` in chdb) → QueryAudit's filters and VerifyAudit. Then a row is edited in
ClickHouse (a modified copy that wins the replacing key) and another deleted (lightweight
DELETE), and VerifyAudit reports each as the first break of its range."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmops.clickhouse.base import ClickHouseQueryError
from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.queries import recent_events
from llmops.clickhouse.rows import audit_columns
from llmops.events.base import Record
from llmops.events.local_log import LocalLog
from llmops.events.topics import AUDIT_CHAINED_TOPIC, DLQ_TOPIC, KIND_TOPICS, event_key
from llmops.sink.runner import SinkThreads, build_sinks
from llmops.v1 import events_pb2
from services.governance.audit_chain import hash_of
from services.governance.audit_store import ClickHouseAuditRecords, SqlAnchorStore
from services.governance.audit_trail import AuditQuery, AuditTrail
from services.governance.audit_writer import AuditWriter
from services.governance.store_sql import SqlRegistryStore

pytestmark = [pytest.mark.infra, pytest.mark.timeout(180)]

RAW = KIND_TOPICS["audit"]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    database = f"it_audit_{uuid.uuid4().hex[:8]}"
    ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
    s = ChdbStore(chdb_session, database=database)
    apply_migrations(s)
    yield s
    s.execute(f"DROP DATABASE IF EXISTS {database}")


def audit(i: int, tenant: str, actor: str, action: str, name: str) -> events_pb2.AuditEvent:
    out = events_pb2.AuditEvent(
        event_id=str(uuid.UUID(int=(0x0190B6A0 << 96) | (7 << 76) | (2 << 62) | i)),
        tenant=tenant,
        action=action,
        resource=events_pb2.Resource(type="model", name=name, version=str(i)),
        outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
        reason=f"change {i}",
    )
    out.event_time.FromDatetime(T0 + timedelta(seconds=i))
    out.actor.id = actor
    out.after.update({"version": str(i)})
    return out


@pytest.fixture
def trail(tmp_path: Path, store: ChdbStore) -> Iterator[tuple[AuditTrail, ChdbStore]]:
    log = LocalLog(
        tmp_path / "events", partitions={RAW: 3, AUDIT_CHAINED_TOPIC: 3, DLQ_TOPIC: 1}, fsync=False
    )
    for topic, n in ((RAW, 3), (AUDIT_CHAINED_TOPIC, 3), (DLQ_TOPIC, 1)):
        log.create_topic(topic, n)
    records = [
        audit(
            i,
            "acme" if i % 4 else "globex",
            "user:alice" if i % 2 else "user:bob",
            "alias.set" if i % 3 == 0 else "artifact.register",
            f"model-{i % 5}",
        )
        for i in range(1, 201)
    ]
    envelopes = [events_pb2.EventEnvelope(audit=r) for r in records]
    log.send(
        [Record(RAW, event_key(e, "audit").encode(), e.SerializeToString()) for e in envelopes], 5
    )
    registry = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    registry._migrate()
    anchors = SqlAnchorStore(registry.engine)
    writer = AuditWriter(log, anchors, batch=64)
    writer.open()
    assert writer.drain() == 200
    writer.close()
    sinks = SinkThreads(build_sinks(log, store, topics=[AUDIT_CHAINED_TOPIC], batch_rows=50))
    sinks.start()
    deadline = time.monotonic() + 60
    try:
        while store.query("SELECT count() AS n FROM audit")[0]["n"] < 200:
            assert time.monotonic() < deadline, "the sink did not load the chained topic"
            time.sleep(0.1)
    finally:
        sinks.stop()
        log.close()
    yield AuditTrail(ClickHouseAuditRecords(store), anchors, batch=37), store


@pytest.mark.parametrize("summary_batch", [200_000, 13], ids=["one_range", "ranges_of_13"])
async def test_verify_detects_an_edited_and_a_deleted_row(
    trail: tuple[AuditTrail, ChdbStore], summary_batch: int
) -> None:
    # one range checked in ClickHouse, or many: clean ranges pass there, a broken one is
    # read back and checked here, which explains the break
    domain, store = trail
    domain.summary_batch = summary_batch
    records = ClickHouseAuditRecords(store)
    ok = await domain.verify("tenant:acme")
    assert (ok.valid, ok.records_checked, ok.head_sequence) == (True, 150, 150), ok.message
    assert (await domain.verify("tenant:globex")).records_checked == 50
    assert (await domain.verify("tenant:acme", 40, 60)).records_checked == 21

    # `llmops logs audit` reads the chained rows, chain and sequence included
    logged = recent_events(store, "audit", T0 - timedelta(minutes=1), limit=500)
    assert len(logged) == 200 and {r["chain"] for r in logged} == {"tenant:acme", "tenant:globex"}

    # Edit record 5 of tenant:acme: a modified copy under the same replacing key wins FINAL
    row = store.query(
        "SELECT record FROM audit FINAL WHERE chain = 'tenant:acme' AND sequence = 5"
    )[0]
    original = events_pb2.AuditEvent.FromString(base64.b64decode(row["record"]))
    forged = events_pb2.AuditEvent()
    forged.CopyFrom(original)
    forged.reason = "approved by the board"  # the hash stays: recomputing it needs the chain
    store.insert("audit", audit_columns([(AUDIT_CHAINED_TOPIC, 0, 10**9, _env(forged))]))
    # ... and delete record 90
    store.execute("DELETE FROM audit WHERE chain = 'tenant:acme' AND sequence = 90")

    # the in-store check flags both (and only the ranges they are in)
    assert records.summarize("tenant:acme", 1, 10).failing > 0  # type: ignore[union-attr]
    hole = records.summarize("tenant:acme", 85, 95)
    assert hole is not None and hole.rows == 10 and hole.failing > 0  # 91 does not follow 89
    clean = records.summarize("tenant:acme", 91, 150)
    assert clean is not None and (clean.rows, clean.failing) == (60, 0)

    edited = await domain.verify("tenant:acme")
    assert (edited.valid, edited.first_invalid_sequence) == (False, 5), edited.message
    assert edited.actual_hash == original.hash and edited.expected_hash != original.hash
    assert edited.records_checked == 4 and "modified" in edited.message
    deleted = await domain.verify("tenant:acme", 6)
    assert (deleted.valid, deleted.first_invalid_sequence) == (False, 90), deleted.message
    assert "sequence 90 missing" in deleted.message and deleted.records_checked == 84
    after = await domain.verify("tenant:acme", 91)
    assert after.valid and after.head_sequence == 150

    # a forger who also recomputes the hash breaks the next link instead
    rehashed = events_pb2.AuditEvent()
    rehashed.CopyFrom(forged)
    rehashed.hash = ""
    rehashed.hash = hash_of(rehashed)
    store.insert("audit", audit_columns([(AUDIT_CHAINED_TOPIC, 0, 10**9 + 1, _env(rehashed))]))
    assert records.summarize("tenant:acme", 1, 20).failing > 0  # type: ignore[union-attr]
    relinked = await domain.verify("tenant:acme", 1, 20)
    assert (relinked.valid, relinked.first_invalid_sequence) == (False, 6), relinked.message
    assert "prev_hash" in relinked.message

    # deleting the tail is caught against the anchored head
    store.execute("DELETE FROM audit WHERE chain = 'tenant:globex' AND sequence >= 49")
    tail = await domain.verify("tenant:globex")
    assert (tail.valid, tail.first_invalid_sequence, tail.head_sequence) == (False, 49, 50)


def _env(event: events_pb2.AuditEvent) -> events_pb2.EventEnvelope:
    return events_pb2.EventEnvelope(audit=event)


async def test_query_audit_filters_and_pages(trail: tuple[AuditTrail, ChdbStore]) -> None:
    domain, _ = trail
    everything = await domain.query(AuditQuery(page_size=1000))
    assert len(everything.records) == 200 and not everything.next_page_token
    times = [r.event_time.ToNanoseconds() for r in everything.records]
    assert times == sorted(times)  # oldest first
    assert all(r.hash == hash_of(r) for r in everything.records)  # the stored records

    acme = await domain.query(AuditQuery(chain="tenant:acme", page_size=1000))
    assert len(acme.records) == 150 and {r.chain for r in acme.records} == {"tenant:acme"}
    bob = await domain.query(AuditQuery(actor_id="user:bob", page_size=1000))
    assert len(bob.records) == 100 and {r.actor.id for r in bob.records} == {"user:bob"}
    aliases = await domain.query(AuditQuery(action_prefix="alias.", page_size=1000))
    assert len(aliases.records) == 66
    named = await domain.query(
        AuditQuery(resource_type="model", resource_name="model-3", page_size=1000)
    )
    assert len(named.records) == 40
    window = await domain.query(
        AuditQuery(start=T0 + timedelta(seconds=10), end=T0 + timedelta(seconds=20))
    )
    assert [r.resource.version for r in window.records] == [str(i) for i in range(10, 20)]

    pages, token = [], ""
    while True:
        page = await domain.query(AuditQuery(chain="tenant:globex", page_size=7, page_token=token))
        pages.append(page.records)
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [7] * 7 + [1]
    assert [r.sequence for p in pages for r in p] == list(range(1, 51))


async def test_a_store_without_the_in_store_check_is_read_back(
    trail: tuple[AuditTrail, ChdbStore],
) -> None:
    """ClickHouse 18.16 (deploy/local's server) has no window functions: the summary query
    fails once, and every range is read and checked in Python instead."""
    _, store = trail

    class NoWindows:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        def query(self, sql: str, params: object = None) -> object:
            if "lagInFrame" in sql:
                raise ClickHouseQueryError("Code: 46. Unknown function lagInFrame", 46)
            return store.query(sql, params)  # type: ignore[arg-type]

    records = ClickHouseAuditRecords(NoWindows())  # type: ignore[arg-type]
    old_style = AuditTrail(records, _anchors_of(trail), batch=37, summary_batch=20)
    checked = await old_style.verify("tenant:acme")
    assert (checked.valid, checked.records_checked) == (True, 150), checked.message
    assert records.summarize("tenant:acme", 1, 10) is None  # not asked again


def _anchors_of(trail: tuple[AuditTrail, ChdbStore]) -> SqlAnchorStore:
    anchors = trail[0].anchors
    assert isinstance(anchors, SqlAnchorStore)
    return anchors
