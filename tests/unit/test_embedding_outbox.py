"""The embedding service's audit outbox: a collection's create, drop, snapshot and restore log
their audit record with the change, it stays staged until the event log holds it, survives a
restart and a checkpoint that cuts the log, and a record a killed process never published is
published once by the next (real collection store, real publisher over the local event log)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from llmops.events.local_log import LocalLog
from llmops.events.outbox import StagedAudit
from llmops.events.port import ServiceEvents
from llmops.events.publisher import EventPublisher, RetryBackoff, UndeliveredEvents
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2
from services.embedding.store import CollectionStore
from services.embedding.vectors import VectorMetrics, Vectors
from tests.unit.test_embedding_store import DIM, meta, opened, spec, vectors
from tests.unit.test_events_publisher import FlakyLog, consume_all

FAST = RetryBackoff(initial_s=0.001, max_s=0.01)
AUDIT = KIND_TOPICS["audit"]


def staged(event_id: str, at_us: int = 1_000) -> StagedAudit:
    return StagedAudit(event_id, f"envelope of {event_id}".encode(), at_us)


def audit_for(event_id: str, seen: list[tuple[str, int]]) -> Callable[[str, int], StagedAudit]:
    def build(name: str, items: int) -> StagedAudit:
        seen.append((name, items))
        return staged(event_id)

    return build


def test_a_change_and_its_audit_record_are_staged_together_and_come_back(tmp_path: Path) -> None:
    store = opened(tmp_path)
    seen: list[tuple[str, int]] = []
    store.create(spec(), audit=audit_for("e-create", seen))
    store.upsert("places", [f"p{i}" for i in range(5)], vectors(5, 1), [meta(i) for i in range(5)])
    assert store.drop("places", audit=audit_for("e-drop", seen)) == 5
    assert seen == [("places", 0), ("places", 5)]  # the drop's count, read under its lock
    # an if_not_exists create of what exists changes nothing: no record is built or staged
    store.create(spec("hotels"))
    store.create(spec("hotels"), if_not_exists=True, audit=audit_for("e-none", seen))
    assert len(seen) == 2
    assert store.staged_audits() == ["e-create", "e-drop"]
    assert store.outbox_before(0, 10) == []  # this process's own: not due before the cutoff
    store.close()

    again = opened(tmp_path)  # as after kill -9: the log is all there is
    assert again.recovery.audit_records_staged == 2
    # recovered records are due at once: one process holds the log, so their writer is dead
    assert again.outbox_before(0, 10) == [
        ("e-create", b"envelope of e-create"),
        ("e-drop", b"envelope of e-drop"),
    ]
    again.delete_outbox(["e-create", "unknown"])
    again.close()

    third = opened(tmp_path)
    assert third.staged_audits() == ["e-drop"]  # the forgetting was logged too
    assert third.names() == ["hotels"]
    third.close()


def test_a_checkpoint_keeps_the_staged_records_it_cuts_off(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, fsync=False, wal_segment_bytes=4096)
    store.open()
    store.create(spec(), audit=lambda name, items: staged("e-create"))
    for batch in range(8):  # several segments of upserts after the create record
        ids = [f"p{batch}-{i}" for i in range(20)]
        store.upsert("places", ids, vectors(20, batch), [meta(i) for i in range(20)])
    store.stage_audit(staged("e-snapshot", at_us=2_000))
    done = store.checkpoint()
    assert done.segments_deleted > 0 and done.audit_records_reanchored == 2
    assert store.wal.first_sequence > 1  # the create record's segment is gone
    store.close()

    again = CollectionStore(tmp_path, fsync=False, wal_segment_bytes=4096)
    again.open()
    assert again.staged_audits() == ["e-create", "e-snapshot"]
    assert again.info("places").item_count == 160
    again.delete_outbox(["e-create", "e-snapshot"])
    assert again.checkpoint().audit_records_reanchored == 0
    again.close()


def _vectors(store: CollectionStore, publisher: EventPublisher) -> Vectors:
    return Vectors(
        store,
        None,  # type: ignore[arg-type]  # collections without a model never embed
        ServiceEvents("embedding", lambda: publisher),
        VectorMetrics(CollectorRegistry()),
    )


def _audits(log: LocalLog, expect: int) -> list[events_pb2.AuditEvent]:
    return [
        events_pb2.EventEnvelope.FromString(r.value).audit for r in consume_all(log, AUDIT, expect)
    ]


async def test_collection_changes_are_audited_through_the_outbox(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "events", fsync=False)
    publisher = EventPublisher(log, retry_backoff=FAST).start()
    store = opened(tmp_path / "embedding")
    domain = _vectors(store, publisher)
    try:
        await domain.create(spec(), if_not_exists=False)
        await domain.create(spec(), if_not_exists=True)  # exists: no change, no record
        ids = [f"p{i}" for i in range(3)]
        store.upsert("places", ids, vectors(3, 2), [meta(i) for i in range(3)])
        snap = await domain.snapshot("places")
        await domain.restore(snap.snapshot_id, "", "places_copy", overwrite=False)
        await domain.restore(snap.snapshot_id, "", "", overwrite=True)  # named by the store
        await domain.drop("places", if_exists=False)
        assert len(store.staged_audits()) == 5
        assert publisher.flush(10)
        assert await domain.relay_outbox() == 0  # its own records: forgotten, not relayed
        assert store.staged_audits() == []
        got = _audits(log, 5)
        assert [(a.action, a.resource.name) for a in got] == [
            ("collection.create", "places"),
            ("collection.snapshot", "places"),
            ("collection.restore", "places_copy"),
            ("collection.restore", "places"),
            ("collection.drop", "places"),
        ]
        restored, dropped = got[2], got[4]
        assert restored.after.fields["item_count"].number_value == 3
        assert dropped.before.fields["item_count"].number_value == 3
    finally:
        publisher.close()
        store.close()
        log.close()


async def test_a_record_a_killed_process_never_published_is_published_once(
    tmp_path: Path,
) -> None:
    log = LocalLog(tmp_path / "events", fsync=False)
    # The first process creates a collection, then dies before its publisher reaches the log.
    down = FlakyLog(log)
    down.down.set()
    dying = EventPublisher(down, retry_backoff=FAST).start()
    store = opened(tmp_path / "embedding")
    await _vectors(store, dying).create(spec(), if_not_exists=False)
    with contextlib.suppress(UndeliveredEvents):
        dying.close(0.05)  # the process is gone: its buffer with it
    store.close()
    assert consume_all(log, AUDIT, 0) == []

    publisher = EventPublisher(log, retry_backoff=FAST).start()
    store = opened(tmp_path / "embedding")
    domain = _vectors(store, publisher)
    try:
        assert await domain.relay_outbox() == 1  # at once, not after the minimum age
        assert await domain.relay_outbox() == 0
        assert store.staged_audits() == []
        got = _audits(log, 1)
        assert [(a.action, a.resource.name) for a in got] == [("collection.create", "places")]
        assert got[0].after.fields["dimension"].number_value == DIM
    finally:
        publisher.close()
        store.close()
        log.close()
