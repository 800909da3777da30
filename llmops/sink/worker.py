"""A sink: one consumer-group member moving events from the log into ClickHouse, exactly once.

The loop: poll → decode (undecodable records go to the dead-letter topic with the reason)
→ batch until ``batch_rows`` or ``flush_interval_s`` → convert to rows (an event the
converter fails on goes to the dead-letter topic, the batch halved until it stands alone)
→ insert each table's block (a batch ClickHouse refuses for good — a constraint, a value
its column cannot hold — is halved until each refused event stands alone and goes to the
dead-letter topic with ClickHouse's reason; when nothing of it can be stored, the table is
at fault, and it is retried instead) → commit the offsets. Offsets are committed only
after every insert of the batch succeeded, so a crash or an outage replays from the last
commit; nothing is lost.

A replay must not double-count, and two mechanisms make sure it does not:

* **high-water marks** — every raw row records its log position (``log_topic``,
  ``log_partition``, ``log_offset``). When the sink starts reading a partition it asks
  ClickHouse for the highest offset already stored and skips records at or below it. An
  INSERT block is atomic, so after a crash either the whole batch is there (and skipped) or
  none of it is (and inserted). This makes the log-to-table path exactly-once whatever the
  batch boundaries were before the crash.
* **insert deduplication tokens** — a retried insert (after an error whose outcome was
  unclear, e.g. a timeout) carries the same token, so ClickHouse drops the repeat, in the
  materialized-view rollups too.

Producer retries can put the same event (same ``event_id``) in the log twice; the sink drops
repeats it has seen recently in the same partition (keys keep an event's copies in one
partition). See deploy/clickhouse/README.md for the whole argument.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseStore, ProtobufInsertStore
from llmops.clickhouse.protobuf_rows import ProtobufBlock, TableSpec
from llmops.clickhouse.rows import KIND_TABLES
from llmops.events.base import (
    ConsumedRecord,
    EventLog,
    LogConsumer,
    LogUnavailable,
    Record,
    RecordRun,
    TopicPartition,
    poll_runs,
)
from llmops.v1 import events_pb2

log = structlog.get_logger("llmops.sink")

Position = tuple[str, int, int]
"""(topic, partition, offset) of a record in the log."""

Item = tuple[str, int, int, events_pb2.EventEnvelope, bytes]
"""(topic, partition, offset, decoded envelope, the record's bytes) of a pending event."""

Rows = Mapping[str, Sequence[Any]] | ProtobufBlock
"""One table's rows: its columns, or the records' bytes for ClickHouse to parse."""

Converter = Callable[[Sequence[Item]], Mapping[str, Rows]]
"""Turns pending events into ``{table: rows}`` (:mod:`llmops.sink.convert`)."""

HighWaterMark = Callable[[ClickHouseStore, TopicPartition, int], int | None]
"""Highest log offset of ``tp`` already stored (searching from a log timestamp in ms)."""

StoredEventAt = Callable[[ClickHouseStore, TopicPartition, int, int], int | None]
"""The event time (ms) of the row stored for log position (``tp``, offset) — every raw table
has it, to the millisecond — searching from a log timestamp in ms; None when no row holds
that position."""


@dataclass(frozen=True, slots=True)
class BulkPath:
    """A sink's bulk path for one event kind: records are read as runs of bytes and handed
    to ClickHouse as they are, no Python object per event (see :meth:`Sink._bulk_tables`)."""

    spec: TableSpec
    """The raw table ClickHouse fills from the records' bytes, and its screen."""
    side_tables: Callable[[Sequence[Item]], Mapping[str, Rows]]
    """Rows made in Python for the few events the screen flags as carrying a payload."""


@dataclass(frozen=True, slots=True)
class SinkSettings:
    group: str
    topics: tuple[str, ...]
    dlq_topic: str = "llmops.dlq.v1"
    batch_rows: int = 50_000
    """Flush when this many records are pending."""
    flush_interval_s: float = 1.0
    """...or when the oldest pending record has waited this long."""
    poll_timeout_s: float = 0.2
    batch_poll_interval_s: float = 0.05
    """While a batch builds and is not yet due, look at the log at most this often: a look
    reads every partition, and a trickle of events would otherwise make one a millisecond
    (~1 ms of CPU per logged prediction under steady load, measured embedded)."""
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    dedup_window: int = 200_000
    """event_ids remembered per partition to drop producer-retry duplicates (the last
    half of them at least: see :class:`RecentIds`)."""
    lag_interval_s: float = 5.0


class SinkMetrics:
    """The sinks' instruments; one set per registry, shared by all sinks of a process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"registry": registry}
        self.rows = Counter("llmops_sink_rows_total", "Rows inserted.", ["table"], **kw)
        self.batches = Counter("llmops_sink_batches_total", "Batches committed.", ["group"], **kw)
        self.insert_seconds = Histogram(
            "llmops_sink_insert_seconds", "Time to insert one table's block.", ["table"], **kw
        )
        self.insert_failures = Counter(
            "llmops_sink_insert_failures_total", "Failed insert attempts.", ["table"], **kw
        )
        self.dead_letters = Counter(
            "llmops_sink_dead_letters_total", "Records sent to the DLQ.", ["topic"], **kw
        )
        self.refused_rows = Counter(
            "llmops_sink_refused_rows_total",
            "Events whose rows ClickHouse refused for good (sent to the DLQ with the reason).",
            ["group"],
            **kw,
        )
        self.skipped = Counter(
            "llmops_sink_skipped_total",
            "Records not inserted because already stored.",
            ["reason"],
            **kw,
        )
        self.bulk_fallbacks = Counter(
            "llmops_sink_bulk_fallbacks_total",
            "Batches of the bulk path handed to the per-event path (a record ClickHouse "
            "cannot parse, one the Python path would refuse, a repeated event id, a row "
            "refused).",
            ["group", "reason"],
            **kw,
        )
        self.restarts = Counter(
            "llmops_sink_restarts_total",
            "Sinks restarted after an error stopped them (e.g. the log unreachable).",
            ["group"],
            **kw,
        )
        self.lag = Gauge(
            "llmops_sink_lag_records",
            "Records in the log not yet committed by the group.",
            ["group", "topic", "partition"],
            **kw,
        )


@dataclass
class _Pending:
    items: list[Item] = field(default_factory=list)
    dead: list[Record] = field(default_factory=list)
    runs: list[RecordRun] = field(default_factory=list)
    """Records of the bulk path, not decoded (none are in ``items`` then)."""
    run_rows: int = 0
    unchecked: bool = False
    """Some runs are of partitions whose high-water mark is not known yet."""
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    first_at: float | None = None

    def __len__(self) -> int:
        return len(self.items) + len(self.dead) + self.run_rows

    def advance(self, record: ConsumedRecord) -> None:
        self.next_offsets[(record.topic, record.partition)] = record.offset + 1
        if self.first_at is None:
            self.first_at = time.monotonic()

    def advance_run(self, run: RecordRun) -> None:
        self.next_offsets[run.tp] = run.offsets[-1] + 1
        if self.first_at is None:
            self.first_at = time.monotonic()


class RecentIds:
    """The event ids seen last in a partition: at least the last ``window // 2``, at most
    the last ``window`` (two generations of sets: a whole batch is added in one call)."""

    def __init__(self, window: int) -> None:
        self._half = max(window // 2, 1)
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._current or event_id in self._previous

    def seen_any(self, ids: Sequence[str]) -> bool:
        return not (self._current.isdisjoint(ids) and self._previous.isdisjoint(ids))

    def add_all(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), self._half):
            self._current.update(ids[start : start + self._half])
            if len(self._current) >= self._half:
                self._previous, self._current = self._current, set()


BULK_PARSERS = max(1, min(os.cpu_count() or 1, 4))
"""Pieces ClickHouse parses in parallel for one bulk batch (one per core, up to 4)."""
BULK_PIECE_ROWS = 10_000
"""Fewest records a piece of a bulk batch holds (parallel parsing pays from about here)."""


def bulk_pieces(rows: int) -> int:
    """Pieces a bulk batch of ``rows`` records is framed in."""
    return max(1, min(BULK_PARSERS, rows // BULK_PIECE_ROWS))


@dataclass
class _InFlight:
    """A bulk batch whose insert runs in the background (:meth:`Sink._flush`)."""

    batch: _Pending
    tables: Mapping[str, Rows]
    token: str
    done: set[str]
    future: Future[None]


def decode(record: ConsumedRecord, expected_kind: str | None) -> events_pb2.EventEnvelope:
    """Parse and check one record; raise ValueError with the reason when it is unusable."""
    try:
        envelope = events_pb2.EventEnvelope.FromString(record.value)
    except Exception as exc:  # protobuf raises DecodeError; be broad for fuzzed bytes
        raise ValueError(f"not an EventEnvelope: {exc}") from None
    kind = envelope.WhichOneof("event")
    if kind is None:
        raise ValueError("envelope carries no event")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"a {kind} event on a topic of {expected_kind} events")
    event = getattr(envelope, kind)
    if not event.event_id:
        raise ValueError(f"{kind}.event_id is empty")
    if not event.HasField("event_time"):
        raise ValueError(f"{kind}.event_time is not set")
    return envelope


class Sink:
    """Moves one consumer group's records into ClickHouse. Run :meth:`run` in a thread."""

    def __init__(
        self,
        event_log: EventLog,
        store: ClickHouseStore,
        settings: SinkSettings,
        *,
        convert: Converter,
        high_water_mark: HighWaterMark,
        kind_of_topic: Mapping[str, str],
        metrics: SinkMetrics | None = None,
        stored_event_at: StoredEventAt | None = None,
        bulk: BulkPath | None = None,
    ) -> None:
        """``stored_event_at``: tells a recreated topic or wiped log from a replay (see
        :meth:`_stored_through`); without it the high-water mark is always trusted.
        ``bulk``: load the records of its kind in bulk (used when every topic of this sink
        carries that kind and the store takes protobuf blocks)."""
        self._log = event_log
        self._stored_event_at = stored_event_at
        self._store = store
        self.settings = settings
        self._convert = convert
        self._high_water_mark = high_water_mark
        self._kind_of_topic = dict(kind_of_topic)
        kinds = {self._kind_of_topic.get(t) for t in settings.topics}
        self._bulk = bulk if bulk is not None and kinds == {bulk.spec.kind} else None
        self.metrics = metrics or SinkMetrics(CollectorRegistry())
        self._consumer: LogConsumer | None = None
        self._skip_through: dict[TopicPartition, int] = {}
        self._seen: dict[TopicPartition, RecentIds] = {}
        self._pending = _Pending()
        self._inflight: _InFlight | None = None
        self._last_lag = 0.0
        self._last_poll = 0.0
        self.committed_batches = 0

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; then flush what is pending (best effort) and close.

        A run starts from the group's committed offsets, so what an earlier run (one that
        raised) held but never committed is read again; nothing of it is carried over."""
        consumer = self._open()
        log.info("sink_started", group=self.settings.group, topics=list(self.settings.topics))
        try:
            while not stop.is_set():
                self.step(stop)
            if len(self._pending) or self._inflight is not None:
                self._flush(stop=None, attempts=3, wait=True)
        finally:
            self._await_inflight()
            consumer.close()
            self._consumer = None
            log.info("sink_stopped", group=self.settings.group)

    def catch_up(self, timeout_s: float, on_commit: Callable[[], None] | None = None) -> None:
        """Consume until the group has committed everything its partitions held when the
        first poll was answered (a backfill, a benchmark), then close; TimeoutError past
        ``timeout_s``. ``on_commit`` is called after each committed batch."""
        consumer = self._open()
        deadline = time.monotonic() + timeout_s
        ends: dict[TopicPartition, int] | None = None
        try:
            while True:
                before = self.committed_batches
                self.step()
                if on_commit is not None and self.committed_batches > before:
                    on_commit()
                assigned = sorted(consumer.assignment())
                if ends is None and assigned:
                    ends = consumer.end_offsets(assigned)
                if (
                    ends is not None
                    and not len(self._pending)
                    and all((consumer.committed(tp) or 0) >= end for tp, end in ends.items())
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sink {self.settings.group} did not catch up in time")
        finally:
            self._await_inflight()
            consumer.close()
            self._consumer = None

    def _open(self) -> LogConsumer:
        """Join the group afresh: nothing pending, nothing remembered from an earlier run."""
        self._pending = _Pending()
        self._inflight = None
        self._seen.clear()
        self._skip_through.clear()
        self._consumer = self._log.consumer(self.settings.group, self.settings.topics)
        return self._consumer

    def _await_inflight(self) -> None:
        """Leaving: let the insert in flight end (uncommitted: the next run's high-water
        marks see it), so no insert of this run lands after the next run looked."""
        flight, self._inflight = self._inflight, None
        if flight is not None:
            with contextlib.suppress(Exception):
                flight.future.result()

    def step(self, stop: threading.Event | None = None) -> None:
        """One poll, and a flush when the batch is full or old enough."""
        assert self._consumer is not None
        self._pace(stop)
        room = max(self.settings.batch_rows - len(self._pending), 1)
        if self._bulk is not None:
            for run in poll_runs(self._consumer, room, self.settings.poll_timeout_s):
                self._accept_run(run)
        else:
            for record in self._consumer.poll(room, self.settings.poll_timeout_s):
                self._accept(record)
        pending = self._pending
        due = pending.first_at is not None and (
            len(pending) >= self.settings.batch_rows
            or time.monotonic() - pending.first_at >= self.settings.flush_interval_s
        )
        if due:
            self._flush(stop)
        elif self._inflight is not None and (self._inflight.future.done() or not len(pending)):
            self._finish(stop, None)  # stored by now, or nothing else to do meanwhile
        if time.monotonic() - self._last_lag >= self.settings.lag_interval_s:
            self._export_lag()

    def _pace(self, stop: threading.Event | None) -> None:
        """With a batch pending and not due, wait out the rest of ``batch_poll_interval_s``
        since the last poll (never past the batch's flush time)."""
        pending = self._pending
        if pending.first_at is None or len(pending) >= self.settings.batch_rows:
            self._last_poll = time.monotonic()
            return
        now = time.monotonic()
        due = pending.first_at + self.settings.flush_interval_s
        wait = min(self._last_poll + self.settings.batch_poll_interval_s, due) - now
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
        self._last_poll = time.monotonic()

    # -- per record --------------------------------------------------------------------

    def _accept(self, record: ConsumedRecord) -> None:
        tp = (record.topic, record.partition)
        self._pending.advance(record)
        if record.offset <= self._stored_through(tp, record):
            self.metrics.skipped.labels("already_stored").inc()
            return
        self._admit(record, self._pending, dedup=True)

    def _admit(self, record: ConsumedRecord, batch: _Pending, *, dedup: bool) -> None:
        """Decode ``record`` into ``batch``: an item, or a dead letter with the reason;
        with ``dedup``, nothing when its event id was seen recently in its partition."""
        try:
            envelope = decode(record, self._kind_of_topic.get(record.topic))
        except ValueError as exc:
            batch.dead.append(self._dead_letter(record, str(exc)))
            return
        if dedup:
            kind = envelope.WhichOneof("event")
            event_id = getattr(envelope, str(kind)).event_id
            seen = self._recent((record.topic, record.partition))
            if event_id in seen:
                self.metrics.skipped.labels("duplicate_event_id").inc()
                return
            seen.add_all((event_id,))
        batch.items.append((record.topic, record.partition, record.offset, envelope, record.value))

    def _recent(self, tp: TopicPartition) -> RecentIds:
        seen = self._seen.get(tp)
        if seen is None:
            seen = self._seen[tp] = RecentIds(self.settings.dedup_window)
        return seen

    def _accept_run(self, run: RecordRun) -> None:
        """The bulk path's :meth:`_accept`: the run, less what is already stored, pending
        undecoded (its records are screened by ClickHouse when the batch is written)."""
        if not len(run):
            return
        self._pending.advance_run(run)
        mark = self._skip_through.get(run.tp)
        if mark is None:  # asked at flush (_trim_stored): an insert may be in flight now
            self._pending.unchecked = True
        else:
            run = self._unstored(run, mark)
        if len(run):
            self._pending.runs.append(run)
            self._pending.run_rows += len(run)

    def _unstored(self, run: RecordRun, mark: int) -> RecordRun:
        """``run`` less its records at or below the high-water mark ``mark`` (counted)."""
        if run.offsets[0] > mark:
            return run
        rest = run.after(mark)
        self.metrics.skipped.labels("already_stored").inc(len(run) - len(rest))
        return rest

    def _trim_stored(self, batch: _Pending) -> None:
        """Drop from ``batch``'s runs what ClickHouse already holds, for the partitions
        whose high-water mark was not known when their runs were read."""
        kept: list[RecordRun] = []
        for run in batch.runs:  # a partition's first run first: poll order
            mark = self._skip_through.get(run.tp)
            if mark is None:
                mark = self._stored_through(run.tp, run.records(1)[0])
            run = self._unstored(run, mark)
            if len(run):
                kept.append(run)
        batch.runs, batch.run_rows, batch.unchecked = kept, sum(len(r) for r in kept), False

    def _stored_through(self, tp: TopicPartition, first: ConsumedRecord) -> int:
        """High-water mark of ``tp`` in ClickHouse, asked once per partition.

        Offsets start again at 0 when a topic is deleted and recreated or the local log's
        directory is wiped, while ClickHouse keeps the rows of the old log: trusting their
        mark would skip that many *new* records. So a mark at or above the first record is
        checked before it is used: the row stored at that record's position must hold the
        same event (its event time, to the millisecond), and no stored offset may lie beyond
        the log's end. Otherwise the rows are another log's, and nothing of this one is taken
        as stored."""
        mark = self._skip_through.get(tp)
        if mark is None:
            found = self._high_water_mark(self._store, tp, first.timestamp_ms)
            mark = -1 if found is None else found
            if found is not None and found >= first.offset:
                if self._another_log(tp, first, found):
                    log.warning("sink_log_recreated", topic=tp[0], partition=tp[1],
                                from_offset=first.offset, stale_mark=found)  # fmt: skip
                    mark = -1
                else:
                    log.warning("sink_replay_detected", topic=tp[0], partition=tp[1],
                                from_offset=first.offset, stored_through=found)  # fmt: skip
            self._skip_through[tp] = mark
        return mark

    def _another_log(self, tp: TopicPartition, first: ConsumedRecord, found: int) -> bool:
        """Whether the rows stored for ``tp`` came from an earlier incarnation of the log."""
        if self._stored_event_at is None:
            return False
        assert self._consumer is not None
        end = self._consumer.end_offsets([tp]).get(tp)
        if end is not None and found >= end:
            return True  # a stored offset this log never reached
        try:
            envelope = decode(first, self._kind_of_topic.get(first.topic))
        except ValueError:
            return False  # nothing to compare with: trust the mark (no duplicates)
        ours = getattr(envelope, str(envelope.WhichOneof("event"))).event_time.ToMilliseconds()
        stored = self._stored_event_at(self._store, tp, first.offset, first.timestamp_ms)
        return stored is not None and stored != ours

    def _dead_letter(self, record: ConsumedRecord, reason: str) -> Record:
        self.metrics.dead_letters.labels(record.topic).inc()
        log.warning("sink_dead_letter", topic=record.topic, partition=record.partition,
                    offset=record.offset, reason=reason)  # fmt: skip
        headers = (
            *record.headers,
            ("dlq.reason", reason.encode()),
            ("dlq.topic", record.topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.offset", str(record.offset).encode()),
            ("dlq.group", self.settings.group.encode()),
        )
        return Record(self.settings.dlq_topic, record.key or b"", record.value, headers)

    # -- per batch ---------------------------------------------------------------------

    def _flush(
        self, stop: threading.Event | None, attempts: int | None = None, *, wait: bool = False
    ) -> None:
        """Write the batch (DLQ records, then each table) and commit; retry with back-off.

        A bulk batch's insert runs in the background unless ``wait``: the sink reads the
        next batch meanwhile (chdb releases the GIL). The batch in flight is settled —
        committed, or retried and isolated as here — before the next one is written, so
        batches are stored and committed in log order (:meth:`_finish`)."""
        batch, self._pending = self._pending, _Pending()
        block = self._frame(batch) if batch.runs and not batch.unchecked else None
        if not self._finish(stop, attempts, later=batch) or not batch.next_offsets:
            return
        if batch.unchecked:  # nothing in flight now: the marks are the stored rows'
            self._trim_stored(batch)
            block = self._frame(batch) if batch.runs else None
        tables = self._bulk_tables(batch, block) if block is not None else None
        bulk = tables is not None
        if tables is None:
            tables = self._convert_or_dead_letter(batch)
        token = self._token(batch)
        done: set[str] = set()  # tables of the batch already inserted
        if bulk and not wait:
            self._inflight = _InFlight(
                batch, tables, token, done, self._start_write(batch, tables, token, done)
            )
            return
        self._store_batch(batch, tables, token, done, stop, attempts, bulk=bulk)

    def _start_write(
        self, batch: _Pending, tables: Mapping[str, Rows], token: str, done: set[str]
    ) -> Future[None]:
        """:meth:`_write` in a thread of its own (a daemon: it never holds the process up)."""
        future: Future[None] = Future()

        def write() -> None:
            try:
                self._write(batch, tables, token, done)
            except BaseException as exc:  # handed to _finish, which retries or gives up
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(
            target=write, name=f"sink-write-{self.settings.group}", daemon=True
        ).start()
        return future

    def _finish(
        self, stop: threading.Event | None, attempts: int | None, later: _Pending | None = None
    ) -> bool:
        """Settle the batch in flight (none: True): its insert's outcome, then retries and
        the commit as :meth:`_flush` does. False when it was abandoned: it is rewound, and
        so is what was read after it (``later``, the pending records), read again next."""
        flight, self._inflight = self._inflight, None
        if flight is None:
            return True
        if self._store_batch(flight.batch, flight.tables, flight.token, flight.done, stop, attempts,
                             bulk=True, first_attempt=flight.future.result):  # fmt: skip
            return True
        for after in (later, self._pending):
            if after is not None and after.next_offsets:
                self._rewind(after)
        self._pending = _Pending()
        return False

    def _store_batch(
        self,
        batch: _Pending,
        tables: Mapping[str, Rows],
        token: str,
        done: set[str],
        stop: threading.Event | None,
        attempts: int | None,
        *,
        bulk: bool,
        first_attempt: Callable[[], object] | None = None,
    ) -> bool:
        """Insert ``tables`` until stored, then commit; False when the batch was abandoned
        (and rewound). ``first_attempt``: the outcome of an insert made in the background,
        taken as the first try."""
        delay = self.settings.retry_initial_s
        tries = 0
        error: Exception
        while True:
            tries += 1
            try:
                if first_attempt is not None:
                    attempt, first_attempt = first_attempt, None
                    attempt()
                else:
                    self._write(batch, tables, token, done)
                break
            except ClickHouseQueryError as exc:
                if bulk and exc.ch_code not in _SYSTEMIC_CODES:
                    # A row refused: the per-event path isolates it (the same rows, token
                    # and tables; what is done stays done).
                    self._unbulk(batch, "refused", dedup=False)
                    tables, bulk = self._convert_or_dead_letter(batch), False
                    continue
                outcome = self._isolate_refused(batch, tables, done, exc, tries)
                if outcome == "stored":
                    break
                if outcome == "abandoned":
                    return False
                error = exc  # every record refused: the table, not the data (see below)
            except Exception as exc:
                error = exc
            if (stop is not None and stop.is_set()) or (attempts and tries >= attempts):
                log.error("sink_batch_abandoned_uncommitted", error=str(error), tries=tries)
                self._rewind(batch)
                return False
            log.warning("sink_write_failed", error=str(error), retry_in_s=delay, tries=tries)
            time.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max_s)
        assert self._consumer is not None
        try:
            self._consumer.commit(batch.next_offsets)
        except LogUnavailable as exc:
            # E.g. a rebalance took the partitions away. The rows are stored; whoever reads
            # these partitions next skips them by the high-water mark.
            log.warning("sink_commit_failed", error=str(exc))
            self._rewind(batch)
            return False
        for tp, nxt in batch.next_offsets.items():
            self._skip_through[tp] = max(self._skip_through.get(tp, -1), nxt - 1)
        self.committed_batches += 1
        self.metrics.batches.labels(self.settings.group).inc()
        return True

    def _frame(self, batch: _Pending) -> ProtobufBlock:
        """The bulk batch's records framed for ClickHouse, its runs put in log order (the
        screen's order; runs of one partition never overlap)."""
        assert self._bulk is not None
        batch.runs.sort(key=lambda r: (r.topic, r.partition, r.offsets[0]))
        runs = [(r.topic, r.partition, r.offsets, r.values) for r in batch.runs]
        return self._bulk.spec.run_block(runs, bulk_pieces(batch.run_rows))

    def _bulk_tables(self, batch: _Pending, block: ProtobufBlock) -> Mapping[str, Rows] | None:
        """The bulk path's tables for ``batch`` (its records still undecoded runs), or None
        when the batch must take the per-event path (its runs are then items).

        One ClickHouse query screens the batch's framed records first (:meth:`TableSpec.
        screen`): each record's event id, whether the Python path would refuse it, whether
        it carries a payload. The bulk path takes the batch only when ClickHouse parsed
        every record, none would be refused, and no event id repeats one of the batch or
        one seen recently in its partition; anything else (rare: a producer bug, a retry)
        goes through :meth:`_admit` record by record, with the per-event guarantees —
        dead letters with the reason, duplicates dropped. Only the records with a payload
        are decoded here, for their ``side_tables`` rows."""
        assert self._bulk is not None
        spec = self._bulk.spec
        runs = batch.runs  # in log order (_frame)
        store = self._store
        assert isinstance(store, ProtobufInsertStore)
        try:
            screen = store.query_protobuf(spec.screen(block))
        except Exception as exc:  # a record ClickHouse cannot parse, or ClickHouse away
            log.info("sink_bulk_screen_failed", group=self.settings.group, error=str(exc)[:300])
            self._unbulk(batch, "unparsed", dedup=True)
            return None
        if screen.num_rows != block.rows or any(screen.column("unusable").to_pylist()):
            self._unbulk(batch, "unusable", dedup=True)
            return None
        ids: list[str] = screen.column("event_id").to_pylist()
        offsets: list[int] = screen.column("log_offset").to_pylist()
        partitions: list[int] = screen.column("log_partition").to_pylist()
        at = 0
        for run in runs:
            mine = ids[at : at + len(run)]
            last = at + len(run) - 1
            if (offsets[at], offsets[last], partitions[at], partitions[last]) != (
                run.offsets[0], run.offsets[-1], run.partition, run.partition
            ):  # fmt: skip
                raise AssertionError(f"the screen's rows are not the batch's at {run.tp}")
            seen = self._seen.get(run.tp)
            if len(set(mine)) != len(mine) or (seen is not None and seen.seen_any(mine)):
                self._unbulk(batch, "duplicate_event_id", dedup=True)
                return None
            at += len(run)
        at = 0
        for run in runs:  # screened: remember the ids as _admit does
            self._recent(run.tp).add_all(ids[at : at + len(run)])
            at += len(run)
        tables: dict[str, Rows] = {}
        paid = [i for i, flag in enumerate(screen.column("has_payload").to_pylist()) if flag]
        if paid:
            items: list[Item] = []
            starts = list(itertools.accumulate((len(r) for r in runs), initial=0))
            for i in paid:
                k = bisect.bisect_right(starts, i) - 1
                run, j = runs[k], i - starts[k]
                value = run.values[j]
                envelope = events_pb2.EventEnvelope.FromString(value)
                items.append((run.topic, run.partition, run.offsets[j], envelope, value))
            tables.update(self._bulk.side_tables(items))
        tables[spec.table] = block
        return tables

    def _unbulk(self, batch: _Pending, reason: str, *, dedup: bool) -> None:
        """Turn ``batch``'s runs into items (:meth:`_admit`), for the per-event path."""
        self.metrics.bulk_fallbacks.labels(self.settings.group, reason).inc()
        for run in batch.runs:
            for record in run.records():
                self._admit(record, batch, dedup=dedup)
        batch.runs, batch.run_rows = [], 0

    def _convert_or_dead_letter(self, batch: _Pending) -> Mapping[str, Rows]:
        """The batch's rows. An event the converter cannot turn into rows (it decoded, so a
        newer producer or a converter bug) would fail the batch on every retry and stop the
        partition: the batch is halved until each such event stands alone, and it goes to
        the DLQ with the error while the rest is stored."""
        if not batch.items:
            return {}
        try:
            return self._convert(batch.items)
        except Exception:
            pass
        kept: list[Item] = []

        def split(items: list[Item]) -> None:
            try:
                self._convert(items)
            except Exception as exc:
                if len(items) == 1:
                    topic, partition, offset, envelope, value = items[0]
                    log.error("sink_conversion_failed", topic=topic, partition=partition,
                              offset=offset, error=repr(exc))  # fmt: skip
                    batch.dead.append(
                        self._dead_letter(
                            ConsumedRecord(topic, partition, offset, envelope.key.encode(),
                                           value, 0, ()),
                            f"cannot be converted to rows: {exc!r}",
                        )
                    )  # fmt: skip
                    return
                half = len(items) // 2
                split(items[:half])
                split(items[half:])
                return
            kept.extend(items)

        split(list(batch.items))
        batch.items = kept
        return self._convert(kept) if kept else {}

    def _isolate_refused(
        self,
        batch: _Pending,
        tables: Mapping[str, Rows],
        done: set[str],
        refusal: ClickHouseQueryError,
        tries: int,
    ) -> str:
        """ClickHouse refused the batch for good (a constraint, a value its column cannot
        hold): retried as it is, it would fail forever and stop the partition. The batch is
        halved, left half first, until each refused event stands alone; those go to the DLQ
        with ClickHouse's reason, the rest is stored. Returns ``stored`` when that is done;
        ``systemic`` when nothing could be stored (an unknown table, a read-only server,
        every row refused: the table is wrong, not the data — retried with back-off,
        nothing dead-lettered); ``abandoned`` when a transient failure interrupted it (the
        batch is rewound, and the high-water marks skip what was stored).

        Parts are stored in log order and a refused event is sent to the DLQ as soon as a
        part after it is stored (retried for up to two minutes), so a replay's high-water
        mark does not pass an event that is neither stored nor dead-lettered.

        A batch of one event (a quiet topic) cannot tell a bad row from a bad table: it is
        retried like an outage, and dead-lettered after :data:`_LONE_REFUSALS` refusals
        (a broken table then costs one event every few seconds, recoverable from the DLQ,
        instead of a partition stopped for good)."""
        if refusal.ch_code in _SYSTEMIC_CODES or not batch.items:
            return "systemic"
        if len(batch.items) == 1 and tries < _LONE_REFUSALS:
            return "systemic"
        # refused, not yet in the DLQ (held until something is stored: if nothing can be,
        # the table is at fault and none of them is a dead letter)
        pending: list[tuple[Item, str]] = []
        stored = refused = 0

        def store(part: list[Item]) -> None:
            part_tables = {t: c for t, c in self._convert(part).items() if t not in done}
            self._write(_Pending(), part_tables, self._token(_Pending(part)), set())

        def dead_letter(item: Item, why: str) -> None:
            nonlocal refused
            refused += 1
            pending.append((item, why))
            if stored:
                flush_dead()
            elif refused >= _REFUSED_BEFORE_SYSTEMIC:
                raise _Systemic()

        def flush_dead() -> None:
            nonlocal stored
            # Refused while nothing could be stored: the table may have been fixed since
            # (a migration finishing); those it now takes are not dead letters.
            still: list[tuple[Item, str]] = []
            for item, why in pending:
                try:
                    store([item])
                    stored += 1
                except ClickHouseQueryError as exc:
                    still.append((item, exc.message or why))
            letters = []
            for (topic, partition, offset, envelope, value), why in still:
                log.error("sink_row_refused", topic=topic, partition=partition, offset=offset,
                          reason=why[:300])  # fmt: skip
                record = ConsumedRecord(topic, partition, offset, envelope.key.encode(),
                                        value, 0, ())  # fmt: skip
                letters.append(
                    self._dead_letter(record, f"ClickHouse refused its row: {why[:500]}")
                )
            pending.clear()
            # Retried here, not by rewinding: once a later part is stored, its high-water mark
            # would make a replay skip these. Only a log away for minutes (and a crash
            # then) loses them; each is in the error log above with its position.
            delay, deadline = self.settings.retry_initial_s, time.monotonic() + 120
            while letters:
                try:
                    self._log.send(letters, timeout_s=10.0)
                    self.metrics.refused_rows.labels(self.settings.group).inc(len(letters))
                    letters = []
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, self.settings.retry_max_s)

        def insert(items: list[Item]) -> None:
            nonlocal stored
            if len(items) == 1:  # a lone event refused again and again: a dead letter
                pending.append((items[0], refusal.message))
                flush_dead()
                return
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                try:
                    store(part)
                except ClickHouseQueryError as exc:
                    if len(part) == 1:
                        dead_letter(part[0], exc.message)
                    else:
                        insert(part)
                    continue
                stored += len(part)
                flush_dead()  # what was refused before this part: settled before any more

        try:
            insert(list(batch.items))
        except _Systemic:
            return "systemic"  # nothing stored, nothing dead-lettered
        except Exception as exc:
            log.warning("sink_isolation_interrupted", error=str(exc))
            self._rewind(batch)
            return "abandoned"
        if not stored and len(batch.items) > 1:
            return "systemic"
        return "stored"

    def _write(
        self,
        batch: _Pending,
        tables: Mapping[str, Rows],
        token: str,
        done: set[str],
    ) -> None:
        if batch.dead:
            self._log.send(batch.dead, timeout_s=10.0)
            batch.dead = []  # durable in the DLQ: a retry of the inserts must not resend them
        # The table holding the high-water mark goes last: a crash between inserts then
        # replays the earlier tables' rows under the same token (dropped as duplicates).
        for table in sorted(tables, key=lambda t: t in _HWM_TABLES):
            if table in done:
                continue
            block = tables[table]
            start = time.perf_counter()
            try:
                if isinstance(block, ProtobufBlock):
                    assert isinstance(self._store, ProtobufInsertStore)
                    rows = self._store.insert_protobuf(table, block, dedup_token=f"{token}:{table}")
                else:
                    rows = self._store.insert(table, block, dedup_token=f"{token}:{table}")
            except Exception:
                self.metrics.insert_failures.labels(table).inc()
                raise
            self.metrics.insert_seconds.labels(table).observe(time.perf_counter() - start)
            self.metrics.rows.labels(table).inc(rows)
            done.add(table)

    def _rewind(self, batch: _Pending) -> None:
        """Abandoned batch: the next run (or poll) must read it again from the log."""
        assert self._consumer is not None
        for tp in batch.next_offsets:
            self._seen.pop(tp, None)  # the replayed events must not count as duplicates
            try:
                start = self._consumer.committed(tp)
                self._consumer.seek(tp, 0 if start is None else start)
            except LogUnavailable as exc:  # no longer ours: its next owner starts there
                log.warning("sink_rewind_skipped", topic=tp[0], partition=tp[1], error=str(exc))
        self._skip_through.clear()  # ask ClickHouse again: some inserts may have landed

    def _token(self, batch: _Pending) -> str:
        """Names exactly this batch's rows: per partition, first/last offset and count."""
        spans: dict[TopicPartition, list[int]] = {}
        for topic, partition, offset, _, _ in batch.items:
            span = spans.setdefault((topic, partition), [offset, offset, 0])
            span[0], span[1], span[2] = min(span[0], offset), max(span[1], offset), span[2] + 1
        for run in batch.runs:
            first, last = run.offsets[0], run.offsets[-1]
            span = spans.setdefault(run.tp, [first, last, 0])
            span[0], span[1], span[2] = min(span[0], first), max(span[1], last), span[2] + len(run)
        digest = hashlib.blake2b(repr(sorted(spans.items())).encode(), digest_size=16)
        return f"{self.settings.group}:{digest.hexdigest()}"

    def _export_lag(self) -> None:
        self._last_lag = time.monotonic()
        consumer = self._consumer
        if consumer is None:
            return
        assigned = sorted(consumer.assignment())
        if not assigned:
            return
        try:
            ends = consumer.end_offsets(assigned)
        except Exception as exc:  # lag is informational; never stop the sink for it
            log.warning("sink_lag_unavailable", error=str(exc))
            return
        for tp in assigned:
            committed = consumer.committed(tp) or 0
            self.metrics.lag.labels(self.settings.group, tp[0], str(tp[1])).set(
                max(ends.get(tp, committed) - committed, 0)
            )


_HWM_TABLES = frozenset(KIND_TABLES.values())

_LONE_REFUSALS = 5
"""Refusals of a one-event batch before that event is dead-lettered."""
_REFUSED_BEFORE_SYSTEMIC = 8
"""Events refused one by one, with nothing stored yet, that make the refusal the table's
(bisecting every row of a 50,000-row batch would cost 100,000 inserts per retry)."""


class _Systemic(Exception):
    """Raised inside the isolation of refused rows: nothing can be stored."""


_SYSTEMIC_CODES = frozenset({16, 60, 81, 164, 242, 497})
"""ClickHouse errors that say the table or the server is wrong, never a row: no such column,
unknown table, unknown database, read-only, table read-only, access denied."""
"""Tables whose log positions are the high-water marks (the per-topic main tables)."""
