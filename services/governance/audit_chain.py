"""The audit hash chain (events.proto, AuditEvent): appending records and checking links.

One chain per tenant (``tenant:<tenant>``, :func:`llmops.events.topics.audit_chain`);
records of a chain carry sequence 1, 2, 3, ... without gaps and

    hash = hex SHA-256( prev_hash as ASCII || deterministic serialization with hash cleared )

with prev_hash of sequence 1 = 64 "0". Everything here is pure: the same records appended
to the same heads give byte-identical chained records, which makes the audit writer's
replays after a crash harmless (the sink drops repeated event ids; the table's
ReplacingMergeTree key collapses identical rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llmops.events.topics import audit_chain
from llmops.v1 import events_pb2

GENESIS = "0" * 64
"""prev_hash of a chain's first record."""

_HASH_TAG = b"\x82\x01\x40"  # field 16 (hash), length-delimited, 64 bytes
_PREV_TAG = b"\x7a\x40"  # field 15 (prev_hash), length-delimited, 64 bytes
_TAIL = len(_HASH_TAG) + 64
assert max(f.number for f in events_pb2.AuditEvent.DESCRIPTOR.fields) == 16, "hash is last"


@dataclass(frozen=True, slots=True)
class Head:
    """The newest record of a chain: its sequence and hash (sequence 0 = empty chain)."""

    sequence: int = 0
    hash: str = GENESIS


EMPTY = Head()


def record_hash(prev_hash: str, body: bytes) -> str:
    """The hash of a record whose serialization with ``hash`` cleared is ``body``."""
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def hash_of(record: events_pb2.AuditEvent) -> str:
    """The hash ``record`` must carry, from its own prev_hash and fields."""
    cleared = events_pb2.AuditEvent()
    cleared.CopyFrom(record)
    cleared.ClearField("hash")
    return record_hash(record.prev_hash, cleared.SerializeToString(deterministic=True))


def chain_of(record: events_pb2.AuditEvent) -> str:
    """The chain a record joins: the one its producer named, else its tenant's."""
    return record.chain or audit_chain(record.tenant)


def chain_in_place(
    records: Iterable[events_pb2.AuditEvent], heads: Mapping[str, Head]
) -> tuple[list[tuple[str, bytes]], dict[str, Head]]:
    """Chain ``records`` in their order after ``heads``, **modifying them** into the chained
    records; returns each one's chain and stored serialization, and the heads that moved.
    Chain fields the producer set (sequence, prev_hash, hash) are overwritten: only the
    writer assigns them.

    The stored serialization is the deterministic serialization with ``hash`` cleared (what
    the hash covers) followed by the ``hash`` field: the same bytes as a deterministic
    serialization of the chained record whenever it holds no unknown fields (hash, field
    16, is the highest known field), and in any case a valid encoding of it that
    :func:`split` reads back without parsing. One serialization per record: the audit
    writer's append rate depends on it."""
    moved: dict[str, Head] = {}
    out: list[tuple[str, bytes]] = []
    for record in records:
        chain = chain_of(record)
        head = moved.get(chain) or heads.get(chain) or EMPTY
        record.chain = chain
        record.sequence = head.sequence + 1
        record.prev_hash = head.hash
        record.ClearField("hash")
        body = record.SerializeToString(deterministic=True)
        digest = record_hash(head.hash, body)
        record.hash = digest
        moved[chain] = Head(record.sequence, digest)
        out.append((chain, body + _HASH_TAG + digest.encode("ascii")))
    return out, moved


def append(
    records: Iterable[events_pb2.AuditEvent], heads: Mapping[str, Head]
) -> tuple[list[events_pb2.AuditEvent], dict[str, Head]]:
    """:func:`chain_in_place` on copies: returns new chained records (the inputs are not
    modified) and the heads that moved."""
    copies = []
    for record in records:
        copy = events_pb2.AuditEvent()
        copy.CopyFrom(record)
        copies.append(copy)
    _, moved = chain_in_place(copies, heads)
    return copies, moved


def split(record: bytes) -> tuple[bytes, str, str] | None:
    """``(body with hash cleared, prev_hash, hash)`` of a stored serialization, read from its
    tail without parsing when it has the usual shape (prev_hash and hash, both 64
    characters, as its last two fields: deterministic serialization writes fields in
    number order); None when it does not (unknown fields after them, odd lengths): then
    parse it (:func:`split_parsed`)."""
    if (
        len(record) < _TAIL + 66
        or record[-_TAIL:-64] != _HASH_TAG
        or record[-_TAIL - 66 : -_TAIL - 64] != _PREV_TAG
    ):
        return None
    body = record[:-_TAIL]
    return body, body[-64:].decode("ascii", "replace"), record[-64:].decode("ascii", "replace")


def split_parsed(record: bytes) -> tuple[bytes, str, str]:
    """:func:`split` by parsing (any shape); raises ValueError when it is no AuditEvent."""
    try:
        event = events_pb2.AuditEvent.FromString(record)
    except Exception as exc:  # DecodeError; be broad for tampered bytes
        raise ValueError(f"not an AuditEvent: {exc}") from None
    stored = event.hash
    event.ClearField("hash")
    return event.SerializeToString(deterministic=True), event.prev_hash, stored
