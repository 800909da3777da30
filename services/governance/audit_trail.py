"""The audit trail's reads: QueryAudit (filters, paging) and VerifyAudit (recompute a chain).

VerifyAudit walks the stored records of a chain in sequence order, in batches, and checks for
each: its sequence is the next one (a gap = a deleted record, a repeat = an inserted one), the
``hash`` column equals the hash inside the record bytes, the record's prev_hash is the previous
record's hash (re-ordered or inserted records), and the hash recomputes from the record bytes
(a modified record). The range ends at the anchored head (registry database) unless asked
otherwise; a stored chain that stops short of the head, or whose head record's hash is not the
anchored one, is broken too (a deleted or rewritten tail).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime

import orjson

from llmops.errors import InvalidArgument
from llmops.v1 import events_pb2
from services.governance.audit_chain import GENESIS, Head, split_parsed
from services.governance.audit_store import (
    AnchorStore,
    AuditFilter,
    AuditRecords,
    StoredBatch,
    StoredRecord,
)

MAX_PAGE = 1_000
DEFAULT_PAGE = 100
VERIFY_BATCH = 50_000
SUMMARY_BATCH = 200_000
"""Sequences per range checked inside the store (its rows are sorted for the window)."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    chain: str = ""
    start: datetime | None = None
    end: datetime | None = None
    actor_id: str = ""
    action_prefix: str = ""
    resource_type: str = ""
    resource_name: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[events_pb2.AuditEvent]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Verification:
    valid: bool
    records_checked: int
    first_invalid_sequence: int = 0
    expected_hash: str = ""
    actual_hash: str = ""
    head_sequence: int = 0
    head_hash: str = ""
    message: str = ""


def _token(key: tuple[int, str, int]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode()


def _after(token: str) -> tuple[int, str, int] | None:
    if not token:
        return None
    try:
        t, chain, seq = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return int(t), str(chain), int(seq)
    except Exception:  # any malformed token
        raise InvalidArgument("page_token", "not a token of QueryAudit") from None


class AuditTrail:
    """QueryAudit and VerifyAudit over the stored records and the anchored heads."""

    def __init__(
        self,
        records: AuditRecords,
        anchors: AnchorStore,
        batch: int = VERIFY_BATCH,
        summary_batch: int = SUMMARY_BATCH,
        *,
        in_store: bool = True,
    ) -> None:
        self.records = records
        self.anchors = anchors
        self.batch = batch
        self.summary_batch = summary_batch
        self.in_store = in_store

    async def query(self, q: AuditQuery) -> AuditPage:
        if q.page_size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        if q.start and q.end and q.end <= q.start:
            raise InvalidArgument("window", "end must be after start")
        size = min(q.page_size or DEFAULT_PAGE, MAX_PAGE)
        where = AuditFilter(
            chain=q.chain,
            start=q.start,
            end=q.end,
            actor_id=q.actor_id,
            action_prefix=q.action_prefix,
            resource_type=q.resource_type,
            resource_name=q.resource_name,
            after=_after(q.page_token),
            limit=size + 1,
        )
        rows = await asyncio.to_thread(self.records.query, where)
        page = rows[:size]
        records = [events_pb2.AuditEvent.FromString(record) for _, record in page]
        token = _token(page[-1][0]) if len(rows) > size else ""
        return AuditPage(records, token)

    async def verify(self, chain: str, first: int = 0, last: int = 0) -> Verification:
        if not chain:
            raise InvalidArgument("chain", "required, e.g. tenant:acme")
        if first < 0 or last < 0:
            raise InvalidArgument("from_sequence, to_sequence", "must be >= 0")
        return await asyncio.to_thread(self._verify, chain, first or 1, last)

    def _verify(self, chain: str, first: int, last: int) -> Verification:
        anchored = self.anchors.head(chain) or Head()
        stored_last = self.records.last_sequence(chain)
        if anchored.sequence == 0 and stored_last == 0:
            return Verification(True, 0, message=f"chain {chain} has no records")
        head = anchored if anchored.sequence else Head(stored_last, "")
        to = last or head.sequence
        if last and first > last:
            raise InvalidArgument("from_sequence", "must not exceed to_sequence")
        prev: str | None = GENESIS
        if first > 1:  # the link into the range: the stored hash of the record before it
            before = list(self.records.chain_batches(chain, first - 1, first - 1, 1))
            prev = _text(before[0].hashes[0]) if before else None  # none: not checked
        result = self._check_range(chain, first, to, prev)
        out = Verification(
            valid=result.valid,
            records_checked=result.records_checked,
            first_invalid_sequence=result.first_invalid_sequence,
            expected_hash=result.expected_hash,
            actual_hash=result.actual_hash,
            head_sequence=head.sequence,
            head_hash=head.hash,
            message=result.message,
        )
        at_head = anchored.sequence and to == anchored.sequence
        if out.valid and at_head and result.last_hash != anchored.hash:
            return _with(
                out,
                valid=False,
                first_invalid_sequence=anchored.sequence,
                expected_hash=anchored.hash,
                actual_hash=result.last_hash,
                message=f"record {anchored.sequence} does not match the anchored head",
            )
        return out

    def _check_range(self, chain: str, first: int, last: int, prev: str | None) -> _Checked:
        """Check ``first..last`` a range of ``summary_batch`` at a time: inside the store
        when it can (:meth:`AuditRecords.summarize`, ~1 M records/s in ClickHouse), and a
        range whose summary shows anything wrong, or a store that cannot, record by record
        here (:func:`check_batches`), which finds and explains the first break."""
        checked = 0
        link = prev
        for low in range(first, last + 1, self.summary_batch):
            high = min(low + self.summary_batch - 1, last)
            s = self.records.summarize(chain, low, high) if self.in_store else None
            if (
                s is not None
                and s.failing == 0
                and s.rows == high - low + 1
                and (s.first_sequence, s.last_sequence) == (low, high)
                and (link is None or s.first_prev_hash == link)
            ):
                checked += s.rows
                link = s.last_hash
                continue
            batches = self.records.chain_batches(chain, low, high, self.batch)
            with closing(prefetched(batches)) as rows:
                part = check_batches(rows, low, high, link)
            if not part.valid:
                return _with_checked(part, records_checked=checked + part.records_checked)
            checked += part.records_checked
            link = part.last_hash
        return _Checked(True, checked, message=f"{checked} records intact", last_hash=link or "")


def _with_checked(c: _Checked, **changes: object) -> _Checked:
    fields = {name: getattr(c, name) for name in _Checked.__slots__}
    fields.update(changes)
    return _Checked(**fields)


@dataclass(frozen=True, slots=True)
class _Checked:
    valid: bool
    records_checked: int
    first_invalid_sequence: int = 0
    expected_hash: str = ""
    actual_hash: str = ""
    message: str = ""
    last_hash: str = ""


def _with(v: Verification, **changes: object) -> Verification:
    fields = {name: getattr(v, name) for name in Verification.__slots__}
    fields.update(changes)
    return Verification(**fields)


def check(rows: Iterable[StoredRecord], first: int, last: int, prev: str | None) -> _Checked:
    """Walk ``rows`` (StoredRecords in sequence order) from ``first`` to ``last`` after a
    record whose hash is ``prev`` (None: unknown, the first record's prev_hash is taken as
    given); the first broken link ends the walk."""
    return check_batches([StoredBatch.of(rows)], first, last, prev)


_HASH_TAG = b"\x82\x01\x40"  # audit_chain's tail shape: ... prev_hash field, hash field
_PREV_TAG = b"\x7a\x40"


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value is not None else ""


def check_batches(
    batches: Iterable[StoredBatch], first: int, last: int, prev: str | None
) -> _Checked:
    """:func:`check` over column-wise batches; hashes compared as ASCII bytes, the usual
    record shape (:func:`~services.governance.audit_chain.split`) sliced inline, others
    parsed. ~1 M records/s on one core (the SHA-256 is most of it)."""
    expected_seq = first
    checked = 0
    link = prev.encode("ascii") if prev is not None else None
    sha256 = hashlib.sha256
    for batch in batches:
        for seq, column, record in zip(batch.sequences, batch.hashes, batch.records, strict=True):
            if seq != expected_seq:
                if seq < expected_seq:
                    return _Checked(
                        False, checked, seq, _text(link), _text(column),
                        f"sequence {seq} appears twice (a record was inserted)",
                    )  # fmt: skip
                missing = (
                    f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
                )
                return _Checked(
                    False, checked, expected_seq, "", "",
                    f"sequence {missing} missing (a record was deleted)",
                )  # fmt: skip
            if (
                len(record) >= 133
                and record[-67:-64] == _HASH_TAG
                and record[-133:-131] == _PREV_TAG
            ):
                body = record[:-67]
                prev_hash = record[-131:-67]
                stored = record[-64:]
            else:
                try:
                    body, parsed_prev, parsed_hash = split_parsed(record)
                except ValueError as err:
                    return _Checked(False, checked, seq, "", _text(column), f"record {seq}: {err}")
                prev_hash = parsed_prev.encode("utf-8")
                stored = parsed_hash.encode("utf-8")
            if link is None:
                link = prev_hash
            if stored != column:
                return _Checked(
                    False, checked, seq, _text(stored), _text(column),
                    f"record {seq}: the hash column differs from the record's hash",
                )  # fmt: skip
            if prev_hash != link:
                return _Checked(
                    False, checked, seq, _text(link), _text(prev_hash),
                    f"record {seq} does not link to record {seq - 1}: prev_hash differs "
                    "(records re-ordered or inserted)",
                )  # fmt: skip
            recomputed = sha256(prev_hash + body).hexdigest().encode()
            if recomputed != stored:
                return _Checked(
                    False, checked, seq, _text(recomputed), _text(stored),
                    f"record {seq} was modified: its hash does not recompute",
                )  # fmt: skip
            checked += 1
            link = stored
            expected_seq += 1
    if expected_seq <= last:
        missing = f"{expected_seq}" if expected_seq == last else f"{expected_seq}-{last}"
        return _Checked(
            False, checked, expected_seq, "", "",
            f"sequence {missing} missing (records deleted)", _text(link),
        )  # fmt: skip
    return _Checked(True, checked, message=f"{checked} records intact", last_hash=_text(link))


def prefetched(batches: Iterator[StoredBatch]) -> Generator[StoredBatch, None, None]:
    """``batches`` read one ahead on a thread of its own: the next batch is fetched (chdb and
    the driver release the GIL while they read) while this one is checked."""
    with ThreadPoolExecutor(1, thread_name_prefix="audit-verify") as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch
