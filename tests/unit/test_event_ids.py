"""UUIDv7 ids: format, uniqueness, time order, no shared random bytes after fork, and the
ids a retried call makes again."""

from __future__ import annotations

import os
import uuid

from llmops.events.ids import retry_stable_uuid7, uuid7, uuid7_many


def test_format_version_and_time_prefix() -> None:
    value = uuid7(1_790_000_000_123)
    parsed = uuid.UUID(value)
    assert str(parsed) == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_790_000_000_123
    assert uuid7(1) < uuid7(2)  # time-ordered across milliseconds


def test_unique_within_one_millisecond() -> None:
    ids = [uuid7(0) for _ in range(200_000)]  # crosses many 8 KiB random pools
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    uuid7(0)  # the pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, ",".join(uuid7(0) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    parent = {uuid7(0) for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_a_batch_of_ids_is_valid_unique_and_of_its_millisecond() -> None:
    for count in (1, 7, 200, 1000, 5000):  # within one pool, across pools, past a pool
        ids = uuid7_many(count, 1_790_000_000_123)
        assert len(ids) == count == len(set(ids))
        for value in ids:
            parsed = uuid.UUID(value)
            assert str(parsed) == value and parsed.version == 7
            assert parsed.variant == uuid.RFC_4122 and parsed.int >> 80 == 1_790_000_000_123
    assert uuid7_many(0) == []
    many = [v for _ in range(100) for v in uuid7_many(1000, 0)]
    assert len(set(many)) == len(many)
    # every variant digit occurs: the two random bits under it are not lost
    assert {v[19] for v in many} == set("89ab")


def test_a_retry_makes_the_same_id_and_other_events_other_ids() -> None:
    request_id = uuid7(1_790_000_000_123)
    first = retry_stable_uuid7(request_id, "guardrail", "copy", "1", "text-hash")
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == first
    assert parsed.int >> 80 == 1_790_000_000_123  # the request's millisecond: time-ordered
    assert retry_stable_uuid7(request_id, "guardrail", "copy", "1", "text-hash") == first
    others = {
        retry_stable_uuid7(request_id, "guardrail", "copy", "2", "text-hash"),
        retry_stable_uuid7(request_id, "guardrail", "copy", "1", "other-hash"),
        retry_stable_uuid7(request_id, "guardrail", "copy1", "", "text-hash"),  # no run-on
        retry_stable_uuid7(uuid7(1_790_000_000_123), "guardrail", "copy", "1", "text-hash"),
    }
    assert len(others) == 4 and first not in others


def test_a_request_id_that_is_not_a_uuid7_cannot_vouch_for_a_retry() -> None:
    for request_id in ("req-1", "", str(uuid.uuid4()), "0" * 14 + "7" + "z" * 21):
        ids = {retry_stable_uuid7(request_id, "same") for _ in range(3)}
        assert len(ids) == 3 and all(uuid.UUID(i).version == 7 for i in ids)
