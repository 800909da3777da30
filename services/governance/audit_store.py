"""Where the audit chains are anchored: their heads (and the raw offsets those heads account
for) in the registry database, and the chained records in ClickHouse.

Two small protocols keep the audit domain off the storage details: :class:`AnchorStore`
(the registry's SQL database, :class:`SqlAnchorStore`) and :class:`AuditRecords` (the
``audit`` table, :class:`ClickHouseAuditRecords`).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseStore
from llmops.errors import Aborted
from llmops.events.base import TopicPartition
from services.governance import schema
from services.governance.audit_chain import Head

log = structlog.get_logger("llmops.governance")

# -- anchors (registry database) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchors:
    heads: dict[str, Head]
    offsets: dict[TopicPartition, int]
    """Next raw offset to read per partition, as of these heads."""


class AnchorStore(Protocol):
    """The chain heads and the raw offsets they account for; blocking (call from a thread)."""

    def load(self) -> Anchors: ...

    def head(self, chain: str) -> Head | None: ...

    def advance(
        self,
        moved: Mapping[str, Head],
        expected: Mapping[str, Head],
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        """Store the heads that moved (compare-and-set on each chain's ``expected`` head:
        :class:`~llmops.errors.Aborted` when another writer moved one) and ``offsets``, in
        one transaction."""
        ...


class SqlAnchorStore:
    """:class:`AnchorStore` on the registry's SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self) -> Anchors:
        with self.engine.begin() as conn:
            heads = {
                row.chain: Head(int(row.sequence), row.hash)
                for row in conn.execute(sa.select(schema.audit_chain_heads))
            }
            offsets = {
                (row.topic, int(row.partition)): int(row.next_offset)
                for row in conn.execute(sa.select(schema.audit_writer_offsets))
            }
        return Anchors(heads, offsets)

    def head(self, chain: str) -> Head | None:
        table = schema.audit_chain_heads
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(table).where(table.c.chain == chain)).first()
        return Head(int(row.sequence), row.hash) if row is not None else None

    def advance(
        self,
        moved: Mapping[str, Head],
        expected: Mapping[str, Head],
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        now = time.time_ns() // 1000
        with self.engine.begin() as conn:
            for chain, head in sorted(moved.items()):
                _move_head(conn, chain, head, expected.get(chain), now)
            table = schema.audit_writer_offsets
            for (topic, partition), offset in sorted(offsets.items()):
                where = (table.c.topic == topic) & (table.c.partition == partition)
                values = {"next_offset": offset, "updated_at_us": now}
                if conn.execute(table.update().where(where).values(**values)).rowcount == 0:
                    conn.execute(table.insert().values(topic=topic, partition=partition, **values))


def _move_head(conn: Connection, chain: str, head: Head, expected: Head | None, now: int) -> None:
    table = schema.audit_chain_heads
    values = {"sequence": head.sequence, "hash": head.hash, "updated_at_us": now}
    if expected is None or expected.sequence == 0:
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(chain=chain, **values))
            return
        except sa.exc.IntegrityError:
            raise Aborted(
                f"audit chain {chain} was started by another writer: only one audit writer "
                "may run (governance.audit_writer)"
            ) from None
    where = (table.c.chain == chain) & (table.c.sequence == expected.sequence)
    if conn.execute(table.update().where(where).values(**values)).rowcount != 1:
        raise Aborted(
            f"audit chain {chain} moved past sequence {expected.sequence} under this writer: "
            "only one audit writer may run (governance.audit_writer)"
        )


# -- records (ClickHouse) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """QueryAudit's filters; ``after`` is the paging key (event time ms, chain, sequence)."""

    chain: str = ""
    start: datetime | None = None
    end: datetime | None = None
    actor_id: str = ""
    action_prefix: str = ""
    resource_type: str = ""
    resource_name: str = ""
    after: tuple[int, str, int] | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One row of a chain as VerifyAudit reads it: the columns it checks, the record bytes."""

    sequence: int
    hash: str
    record: bytes


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Rows of a chain column-wise (the bulk form VerifyAudit checks): ``hashes`` are the
    ``hash`` column's ASCII bytes, ``records`` the serialized records (b"" for a cell that
    is no base64)."""

    sequences: list[int]
    hashes: list[bytes]
    records: list[bytes]

    def __len__(self) -> int:
        return len(self.sequences)

    @classmethod
    def of(cls, rows: Iterable[StoredRecord]) -> StoredBatch:
        items = list(rows)
        return cls(
            [r.sequence for r in items],
            [r.hash.encode("ascii", "replace") for r in items],
            [r.record for r in items],
        )


@dataclass(frozen=True, slots=True)
class RangeSummary:
    """What the store computed itself over a sequence range of a chain: the rows, their
    first and last sequence, how many rows fail a check, the first row's prev_hash and the
    last row's hash (as in the record bytes)."""

    rows: int
    first_sequence: int
    last_sequence: int
    failing: int
    first_prev_hash: str
    last_hash: str


class AuditRecords(Protocol):
    """The stored chained records; blocking (call from a thread)."""

    def query(self, where: AuditFilter) -> list[tuple[tuple[int, str, int], bytes]]:
        """Up to ``where.limit`` records oldest first, each with its paging key."""
        ...

    def chain_batches(self, chain: str, first: int, last: int, batch: int) -> Iterator[StoredBatch]:
        """Records of ``chain`` with ``first <= sequence <= last`` in sequence order (more
        than one per sequence when a row was inserted), ``batch`` sequences per read;
        empty reads are skipped."""
        ...

    def last_sequence(self, chain: str) -> int:
        """The highest sequence stored for ``chain`` (0 when none)."""
        ...

    def summarize(self, chain: str, first: int, last: int) -> RangeSummary | None:
        """Check ``first..last`` of ``chain`` inside the store when it can (None: it cannot,
        read the records instead). A row fails when it has not the usual record shape, its
        hash column differs from the record's hash, its hash does not recompute, or it does
        not follow the previous row (next sequence, prev_hash = that row's hash)."""
        ...


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return b""  # a tampered cell: the record fails its hash


class ClickHouseAuditRecords:
    """:class:`AuditRecords` on the ``audit`` table (read with FINAL: the replacing key
    collapses replays; a row rewritten through the key wins, as a tamperer would make it)."""

    def __init__(
        self, store: ClickHouseStore | Callable[[], ClickHouseStore], table: str = "audit"
    ) -> None:
        self._store = store
        self.table = table
        self._summaries = True  # until the server says it cannot

    @property
    def store(self) -> ClickHouseStore:
        """The store, opened on first use when given as a factory (the service does: chdb
        is opened by the first RPC that reads the trail, not at start)."""
        if callable(self._store):
            self._store = self._store()
        return self._store

    def query(self, where: AuditFilter) -> list[tuple[tuple[int, str, int], bytes]]:
        conds = ["chain != ''"]
        params: dict[str, Any] = {"limit": where.limit}
        if where.chain:
            conds.append("chain = %(chain)s")
            params["chain"] = where.chain
        if where.start is not None:
            conds.append("event_time >= %(start)s")
            params["start"] = where.start
        if where.end is not None:
            conds.append("event_time < %(end)s")
            params["end"] = where.end
        for column in ("actor_id", "resource_type", "resource_name"):
            if value := getattr(where, column):
                conds.append(f"{column} = %({column})s")
                params[column] = value
        if where.action_prefix:
            conds.append("startsWith(action, %(action_prefix)s)")
            params["action_prefix"] = where.action_prefix
        if where.after is not None:
            conds.append(
                "(toUnixTimestamp64Milli(event_time), chain, sequence) > (%(t)s, %(c)s, %(s)s)"
            )
            params.update(t=where.after[0], c=where.after[1], s=where.after[2])
        rows = self.store.query(
            f"SELECT toUnixTimestamp64Milli(event_time) AS t, chain, sequence, record "
            f"FROM {self.table} FINAL WHERE {' AND '.join(conds)} "
            "ORDER BY t, chain, sequence LIMIT %(limit)s",
            params,
        )
        return [
            ((int(r["t"]), str(r["chain"]), int(r["sequence"])), _decode(r["record"])) for r in rows
        ]

    def chain_batches(self, chain: str, first: int, last: int, batch: int) -> Iterator[StoredBatch]:
        """One read per ``batch`` sequences (``BETWEEN``, no LIMIT: the rows of an inserted
        duplicate come in the same read), columnar (:meth:`ClickHouseStore.query_columns`),
        the record decoded from base64 by ClickHouse (``tryBase64Decode``: a cell that is no
        base64 reads as empty and fails its hash)."""
        for low in range(first, last + 1, batch):
            high = min(low + batch - 1, last)
            cols = self.store.query_columns(
                f"SELECT sequence, hash, tryBase64Decode(record) AS record FROM {self.table} "
                "FINAL WHERE chain = %(chain)s AND sequence BETWEEN %(low)s AND %(high)s "
                "ORDER BY sequence, event_id SETTINGS max_threads = 1",
                {"chain": chain, "low": low, "high": high},
            )
            if cols and cols["sequence"]:
                yield StoredBatch(cols["sequence"], cols["hash"], cols["record"])

    def summarize(self, chain: str, first: int, last: int) -> RangeSummary | None:
        """In ClickHouse: SHA-256 over the decoded record bytes and the links to the previous
        row (a window over the range in sequence order), one row back. The usual record
        shape (audit_chain.split: prev_hash then hash as the last two fields) is required of
        every row; a range with any other row is read and checked in Python instead."""
        if not self._summaries:
            return None
        try:
            rows = self.store.query(
                _SUMMARY_SQL.format(table=self.table),
                {"chain": chain, "low": first, "high": last},
            )
        except ClickHouseQueryError as err:  # a server without window functions (< 21.x)
            log.warning("audit_summary_unsupported", error=str(err)[:300])
            self._summaries = False
            return None
        if not rows or not rows[0]["n"]:
            return RangeSummary(0, 0, 0, 0, "", "")
        r = rows[0]
        return RangeSummary(
            int(r["n"]),
            int(r["first_seq"]),
            int(r["last_seq"]),
            int(r["bad"]),
            _ascii(r["first_prev"]),
            _ascii(r["last_hash"]),
        )

    def last_sequence(self, chain: str) -> int:
        rows = self.store.query(
            f"SELECT max(sequence) AS s FROM {self.table} FINAL WHERE chain = %(chain)s",
            {"chain": chain},
        )
        return int(rows[0]["s"]) if rows else 0


def _ascii(value: str | bytes) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


# VerifyAudit's check of a range inside ClickHouse (see ClickHouseAuditRecords.summarize).
# Offsets from the record's end: the hash field's tag (3 bytes) and value (64), the
# prev_hash field's tag (2) and value (64): audit_chain's _HASH_TAG and _PREV_TAG.
_SUMMARY_SQL = r"""
SELECT
    count() AS n,
    min(sequence) AS first_seq,
    max(sequence) AS last_seq,
    countIf(NOT row_ok) AS bad,
    argMin(prev_in, (sequence, event_id)) AS first_prev,
    argMax(hash_in, (sequence, event_id)) AS last_hash
FROM
(
    SELECT
        sequence,
        event_id,
        length(r) AS len,
        substring(r, len - 130, 64) AS prev_in,
        substring(r, len - 63, 64) AS hash_in,
        lagInFrame(hash_in, 1, '') OVER w AS prev_row_hash,
        lagInFrame(sequence, 1, 0) OVER w AS prev_row_seq,
        len >= 133
            AND substring(r, len - 66, 3) = '\x82\x01\x40'
            AND substring(r, len - 132, 2) = '\x7a\x40'
            AND hash_in = hash
            AND lower(hex(SHA256(concat(prev_in, substring(r, 1, len - 67))))) = hash_in
            AND (row_number() OVER w = 1
                 OR (prev_row_seq + 1 = sequence AND prev_row_hash = prev_in)) AS row_ok
    FROM
    (
        SELECT sequence, event_id, hash, tryBase64Decode(record) AS r
        FROM {table} FINAL
        WHERE chain = %(chain)s AND sequence BETWEEN %(low)s AND %(high)s
    )
    WINDOW w AS (ORDER BY sequence, event_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
SETTINGS max_threads = 2
"""
