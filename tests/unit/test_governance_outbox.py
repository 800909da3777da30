"""The audit outbox: a registry change and its audit record commit together, and a record a
dead process never appended to the log is published by the next one (real SQLite registry,
real publisher over the local event log)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import sqlalchemy as sa

from llmops.events.local_log import LocalLog
from llmops.events.port import ServiceEvents
from llmops.events.publisher import EventPublisher, RetryBackoff, UndeliveredEvents
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2
from services.governance import model, schema
from services.governance.guard import BuiltinRules
from services.governance.model import Registration
from services.governance.registry import Registry
from services.governance.store_sql import SqlRegistryStore
from tests.unit.test_events_publisher import FlakyLog, consume_all
from tests.unit.test_governance_registry import ALICE, Clock, digest

FAST = RetryBackoff(initial_s=0.001, max_s=0.01)
AUDIT = KIND_TOPICS["audit"]


def _registration(name: str) -> Registration:
    return Registration(
        kind=model.DATASET, name=name, uri=f"s3://data/{name}", content_digest=digest(name)
    )


def _outbox(store: SqlRegistryStore) -> list[str]:
    with store.engine.connect() as conn:
        return [r.event_id for r in conn.execute(sa.select(schema.audit_outbox.c.event_id))]


def _audit_ids(log: LocalLog, expect: int) -> list[str]:
    return [
        events_pb2.EventEnvelope.FromString(r.value).audit.event_id
        for r in consume_all(log, AUDIT, expect)
    ]


async def test_a_change_stages_its_audit_record_until_the_log_holds_it(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "events", fsync=False)
    publisher = EventPublisher(log, retry_backoff=FAST).start()
    store = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    await store.open()
    clock = Clock()
    events = ServiceEvents("governance", lambda: publisher)
    registry = Registry(store, events, BuiltinRules([], clock), clock)
    try:
        done = await registry.register(_registration("reviews-2026"), ALICE)
        assert _outbox(store) == [done.audit_event_id]  # committed with the change
        assert publisher.flush(10)
        assert await registry.relay_outbox() == 0  # its own record: forgotten, not relayed
        assert _outbox(store) == []
        assert _audit_ids(log, 1) == [done.audit_event_id]
    finally:
        publisher.close()
        await store.close()
        log.close()


async def test_a_record_a_dead_process_left_is_published_once_by_the_next(
    tmp_path: Path,
) -> None:
    log = LocalLog(tmp_path / "events", fsync=False)
    db = tmp_path / "registry.sqlite3"
    # The first process commits a change, then dies before its publisher reaches the log.
    down = FlakyLog(log)
    down.down.set()
    dying = EventPublisher(down, retry_backoff=FAST).start()
    store = SqlRegistryStore.sqlite(db)
    await store.open()
    clock = Clock()
    first = Registry(
        store, ServiceEvents("governance", lambda: dying), BuiltinRules([], clock), clock
    )
    done = await first.register(_registration("clicks-2026"), ALICE)
    with contextlib.suppress(UndeliveredEvents):
        dying.close(0.05)  # the process is gone: its buffer with it
    await store.close()
    assert consume_all(log, AUDIT, 0) == []

    # The next process on the same registry database.
    publisher = EventPublisher(log, retry_backoff=FAST).start()
    store = SqlRegistryStore.sqlite(db)
    await store.open()
    later = Clock()
    events = ServiceEvents("governance", lambda: publisher)
    registry = Registry(store, events, BuiltinRules([], later), later, outbox_min_age_s=60)
    try:
        assert _outbox(store) == [done.audit_event_id]
        assert await registry.relay_outbox() == 0  # too young: its writer may still be alive
        later.tick(61)
        assert await registry.relay_outbox() == 1
        assert _outbox(store) == []
        assert await registry.relay_outbox() == 0
        assert _audit_ids(log, 1) == [done.audit_event_id]
    finally:
        publisher.close()
        await store.close()
        log.close()
