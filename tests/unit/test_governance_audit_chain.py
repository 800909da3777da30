"""The audit hash chain: the contract's hash, chains per tenant, deterministic re-chaining,
the fast tail split, the link checks of VerifyAudit, and the writer's crash replays (local
log + SQLite anchors)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llmops.events.base import Record
from llmops.events.local_log import LocalLog
from llmops.events.topics import AUDIT_CHAINED_TOPIC, KIND_TOPICS, event_key
from llmops.v1 import events_pb2
from services.governance import audit_chain
from services.governance.audit_chain import GENESIS, Head
from services.governance.audit_store import SqlAnchorStore, StoredRecord
from services.governance.audit_trail import check
from services.governance.audit_writer import AuditWriter, envelope_bytes
from services.governance.store_sql import SqlRegistryStore

RAW = KIND_TOPICS["audit"]


def event(i: int, tenant: str = "acme", **fields: object) -> events_pb2.AuditEvent:
    out = events_pb2.AuditEvent(
        event_id=f"0190b6a0-0000-7000-8000-{i:012d}",
        tenant=tenant,
        action="artifact.register",
        resource=events_pb2.Resource(type="model", name=f"m{i}"),
        outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
        **fields,  # type: ignore[arg-type]
    )
    out.event_time.FromMilliseconds(1_700_000_000_000 + i)
    out.actor.id = "user:alice"
    out.after.update({"version": str(i), "labels": {"b": 1, "a": 2}})
    return out


def test_hash_follows_the_contract() -> None:
    (first, second), heads = audit_chain.append([event(1), event(2)], {})
    assert (first.chain, first.sequence, first.prev_hash) == ("tenant:acme", 1, GENESIS)
    cleared = events_pb2.AuditEvent()
    cleared.CopyFrom(first)
    cleared.hash = ""
    want = hashlib.sha256(
        GENESIS.encode() + cleared.SerializeToString(deterministic=True)
    ).hexdigest()
    assert first.hash == want == audit_chain.hash_of(first)
    assert (second.sequence, second.prev_hash) == (2, first.hash)
    assert second.hash == audit_chain.hash_of(second)
    assert heads == {"tenant:acme": Head(2, second.hash)}


def test_one_chain_per_tenant_continuing_from_the_heads() -> None:
    records = [event(1, "a"), event(2, "b"), event(3, "a"), event(4, "")]
    chained, heads = audit_chain.append(records, {"tenant:a": Head(7, "f" * 64)})
    assert [(c.chain, c.sequence) for c in chained] == [
        ("tenant:a", 8),
        ("tenant:b", 1),
        ("tenant:a", 9),
        ("tenant:default", 1),
    ]
    assert chained[0].prev_hash == "f" * 64 and chained[2].prev_hash == chained[0].hash
    assert heads["tenant:a"] == Head(9, chained[2].hash)
    assert records[0].chain == "" and records[0].hash == ""  # inputs untouched


def test_rechaining_is_deterministic_and_ignores_forged_chain_fields() -> None:
    records = [event(i) for i in range(1, 6)]
    once, heads_once = audit_chain.append(records, {})
    forged = [event(i, sequence=99, prev_hash="x", hash="y") for i in range(1, 6)]
    again, heads_again = audit_chain.append(forged, {})
    assert [c.SerializeToString(deterministic=True) for c in once] == [
        c.SerializeToString(deterministic=True) for c in again
    ]
    assert heads_once == heads_again


def test_raw_records_are_keyed_by_their_future_chain() -> None:
    envelope = events_pb2.EventEnvelope(audit=event(1, "acme"))
    assert event_key(envelope, "audit") == "tenant:acme"


def test_tail_split_equals_parsing() -> None:
    (record,), _ = audit_chain.append([event(1)], {})
    data = record.SerializeToString(deterministic=True)
    fast = audit_chain.split(data)
    assert fast is not None and fast == audit_chain.split_parsed(data)
    assert fast[1:] == (GENESIS, record.hash)
    unknown_tail = data + b"\xa8\x06\x01"  # field 101, a later schema's field
    assert audit_chain.split(unknown_tail) is None


def stored(records: list[events_pb2.AuditEvent]) -> list[StoredRecord]:
    return [
        StoredRecord(r.sequence, r.hash, r.SerializeToString(deterministic=True)) for r in records
    ]


def test_the_writers_stored_bytes_are_the_deterministic_serialization() -> None:
    """chain_in_place's one-serialization bytes and the writer's hand-built envelope equal
    what protobuf's deterministic serialization gives (no unknown fields), and a record
    with unknown fields (a newer producer) still stores a verifiable encoding."""
    records = [event(i, tenant="acme" if i % 2 else "zeta", reason="r" * (i * 40))
               for i in range(1, 8)]  # fmt: skip
    copies, heads_copy = audit_chain.append(records, {"tenant:acme": Head(3, "a" * 64)})
    stored, heads = audit_chain.chain_in_place(records, {"tenant:acme": Head(3, "a" * 64)})
    assert heads == heads_copy
    for (chain, data), copy, record in zip(stored, copies, records, strict=True):
        assert record == copy  # modified in place into the chained record
        assert data == copy.SerializeToString(deterministic=True)
        assert chain == copy.chain
        envelope = events_pb2.EventEnvelope(key=chain, audit=copy)
        assert envelope_bytes(chain.encode(), data) == envelope.SerializeToString(
            deterministic=True
        )
    # an unknown field (number 99) from a newer producer
    newer = event(9).SerializeToString() + b"\x9a\x06\x03new"
    parsed = events_pb2.AuditEvent.FromString(newer)
    ((_, data),), _ = audit_chain.chain_in_place([parsed], {})
    assert audit_chain.split(data) is None  # not the usual tail: VerifyAudit parses it
    body, prev_hash, stored_hash = audit_chain.split_parsed(data)
    assert b"new" in body and prev_hash == GENESIS
    assert audit_chain.record_hash(prev_hash, body) == stored_hash == parsed.hash


def test_check_reports_the_first_broken_link() -> None:
    chained, _ = audit_chain.append([event(i) for i in range(1, 11)], {})
    rows = stored(chained)
    ok = check(rows, 1, 10, GENESIS)
    assert ok.valid and ok.records_checked == 10 and ok.last_hash == chained[-1].hash

    modified = events_pb2.AuditEvent()
    modified.CopyFrom(chained[3])
    modified.reason = "nothing to see"
    bad = check([*rows[:3], *stored([modified]), *rows[4:]], 1, 10, GENESIS)
    assert (bad.valid, bad.first_invalid_sequence, bad.records_checked) == (False, 4, 3)
    assert bad.actual_hash == chained[3].hash and bad.expected_hash != chained[3].hash
    assert "modified" in bad.message

    deleted = check([*rows[:5], *rows[6:]], 1, 10, GENESIS)
    assert (deleted.valid, deleted.first_invalid_sequence) == (False, 6)
    assert "sequence 6 missing" in deleted.message

    tail = check(rows[:8], 1, 10, GENESIS)
    assert (tail.valid, tail.first_invalid_sequence) == (False, 9)
    assert "9-10 missing" in tail.message

    # re-ordered: records 5 and 6 swapped, their sequence columns rewritten to match
    swapped = [*rows[:4], StoredRecord(5, rows[5].hash, rows[5].record)]
    swapped += [StoredRecord(6, rows[4].hash, rows[4].record), *rows[6:]]
    reordered = check(swapped, 1, 10, GENESIS)
    assert (reordered.valid, reordered.first_invalid_sequence) == (False, 5)
    assert "prev_hash" in reordered.message

    inserted = check([*rows[:3], rows[2], *rows[3:]], 1, 10, GENESIS)
    assert (inserted.valid, inserted.first_invalid_sequence) == (False, 3)
    assert "twice" in inserted.message

    column = check(
        [*rows[:2], StoredRecord(3, "0" * 64, rows[2].record), *rows[3:]], 1, 10, GENESIS
    )
    assert (column.valid, column.first_invalid_sequence) == (False, 3)


# -- the writer ---------------------------------------------------------------------------


@pytest.fixture
def anchors(tmp_path: Path) -> SqlAnchorStore:
    store = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    store._migrate()
    return SqlAnchorStore(store.engine)


def raw_log(path: Path) -> LocalLog:
    log = LocalLog(path, partitions={RAW: 3, AUDIT_CHAINED_TOPIC: 3}, fsync=False)
    for topic in (RAW, AUDIT_CHAINED_TOPIC):
        log.create_topic(topic, 3)
    return log


def publish(log: LocalLog, records: list[events_pb2.AuditEvent]) -> None:
    log.send(
        [
            Record(
                RAW,
                event_key(events_pb2.EventEnvelope(audit=r), "audit").encode(),
                events_pb2.EventEnvelope(audit=r).SerializeToString(),
            )
            for r in records
        ],
        5,
    )


def chained_out(log: LocalLog) -> list[events_pb2.AuditEvent]:
    consumer = log.consumer("test-read-chained", [AUDIT_CHAINED_TOPIC])
    try:
        out = []
        while batch := consumer.poll(10_000, 0.2):
            out += [events_pb2.EventEnvelope.FromString(r.value).audit for r in batch]
        return out
    finally:
        consumer.close()


def test_writer_chains_stores_heads_and_skips_what_the_heads_account_for(
    tmp_path: Path, anchors: SqlAnchorStore
) -> None:
    log = raw_log(tmp_path / "events")
    publish(log, [event(i, tenant=("a", "b")[i % 2]) for i in range(1, 21)])
    writer = AuditWriter(log, anchors, batch=7)
    writer.open()
    assert writer.drain() == 20
    writer.close()
    out = chained_out(log)
    by_chain = {c: [r for r in out if r.chain == c] for c in ("tenant:a", "tenant:b")}
    for chain, records in by_chain.items():
        assert [r.sequence for r in sorted(records, key=lambda r: r.sequence)] == list(range(1, 11))
        assert check(stored(sorted(records, key=lambda r: r.sequence)), 1, 10, GENESIS).valid
        assert anchors.head(chain) == Head(10, max(records, key=lambda r: r.sequence).hash)

    # A crash after the heads were stored but before the offsets were committed: a new
    # writer with the group's offsets rewound re-reads the records and chains none twice.
    rewind = log.consumer(writer.group, [RAW])
    rewind.commit({(RAW, p): 0 for p in range(3)})
    rewind.close()
    again = AuditWriter(log, anchors)
    again.open()
    assert again.drain() == 0
    again.close()
    assert len(chained_out(log)) == 20
    log.close()


def test_a_replay_before_the_heads_were_stored_appends_identical_records(
    tmp_path: Path, anchors: SqlAnchorStore
) -> None:
    log = raw_log(tmp_path / "events")
    publish(log, [event(i, tenant=("a", "b", "c")[i % 3]) for i in range(1, 31)])

    class Crash(Exception):
        pass

    class CrashingAnchors(SqlAnchorStore):
        def advance(self, *args: object, **kw: object) -> None:
            raise Crash

    crashing = AuditWriter(log, CrashingAnchors(anchors.engine), batch=1_000)
    crashing.open()
    with pytest.raises(Crash):
        crashing.step()  # appended the chained records, stored nothing, committed nothing
    crashing.close()
    first = chained_out(log)
    assert len(first) == 30

    writer = AuditWriter(log, anchors, batch=4)  # other batch boundaries, same result
    writer.open()
    assert writer.drain() == 30
    writer.close()
    both = chained_out(log)
    replayed = both[30:]
    key = lambda r: r.event_id  # noqa: E731
    assert sorted(
        (r.SerializeToString(deterministic=True) for r in replayed),
    ) == sorted(r.SerializeToString(deterministic=True) for r in first)
    assert {key(r) for r in replayed} == {key(r) for r in first}
    log.close()


def test_a_record_published_twice_joins_its_chain_once(
    tmp_path: Path, anchors: SqlAnchorStore
) -> None:
    """The registry's outbox may relay a record whose first append it never saw confirmed:
    the writer chains it once (a second sequence number with the same event id would be
    dropped by the sink and leave a gap VerifyAudit reports)."""
    log = raw_log(tmp_path / "events")
    records = [event(i, tenant="a") for i in range(1, 6)]
    publish(log, records)
    publish(log, [records[2]])  # relayed again
    writer = AuditWriter(log, anchors)
    writer.open()
    assert writer.drain() == 5 and writer.repeats == 1
    writer.close()
    out = sorted(chained_out(log), key=lambda r: r.sequence)
    assert [r.sequence for r in out] == [1, 2, 3, 4, 5]
    assert len({r.event_id for r in out}) == 5
    assert check(stored(out), 1, 5, GENESIS).valid
    log.close()
