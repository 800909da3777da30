"""The non-blocking publisher every service uses to emit events.

``publish()`` runs on the request path (also on an asyncio loop): it validates the envelope,
fills ``publish_time`` and ``key``, serializes it and appends it to a bounded in-memory buffer
— no I/O, no waiting. A background *thread* (the logs' clients are blocking) takes batches
from the buffer and appends them to the :class:`~llmops.events.base.EventLog`.

Guarantees:

- **Nothing accepted is dropped.** A batch that fails (:class:`LogUnavailable` or any other
  error) stays at the head and is retried with exponential back-off until it is appended;
  newer events wait behind it, so one key's events are appended in publish order.
- **At-least-once.** A retry may append a record twice when the earlier attempt's outcome was
  unknown; consumers dedupe on ``event_id``.
- **Back-pressure, not blocking.** When ``capacity`` events are waiting (buffered or being
  sent), ``publish()`` raises :class:`~llmops.errors.ResourceExhausted` (RESOURCE_EXHAUSTED at
  the RPC edge) and counts the rejection. The caller decides: fail the RPC, or drop a
  best-effort event knowingly.
- **Overload spills.** With an ``overflow`` spill (:mod:`llmops.events.spill`: a local log,
  fsynced), a log that keeps refusing does not fill the buffer: a second thread, the
  spiller, appends everything buffered to the spill once half of the capacity is waiting
  (``spill_at``), and when an RPC has waited ``spill_after_s`` for a durable event also the
  batch whose send has been under way that long; spilled events count as durable (on this
  machine's disk). Events complete out of order then: a sequence number is durable once
  every event up to it is in the log or the spill. The sender replays the spill into the
  log in chunks between batches once the log takes sends again, then deletes it. Replayed
  events arrive after newer ones (at-least-once, not in order; consumers dedupe on
  ``event_id``). What a previous process spilled is replayed the same way.
- **Shutdown flushes.** ``close(timeout_s)`` delivers what is buffered; what the log does
  not take in time goes to the spill when one is given (the ``overflow`` spill by default),
  else :class:`UndeliveredEvents` says how many were not delivered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from google.protobuf.message import DecodeError, EncodeError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmops.errors import FailedPrecondition, InvalidArgument, LLMOpsError, ResourceExhausted
from llmops.events.base import MAX_RECORD_BYTES, EventLog, Record, RecordSender, RecordsRefused
from llmops.events.topics import DLQ_TOPIC, KIND_TOPICS, event_key
from llmops.redact import redact_text
from llmops.v1 import events_pb2

log = structlog.get_logger("llmops.events.publisher")

_SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class UndeliveredEvents(LLMOpsError):
    """``close()`` ran out of time with events not yet appended to the log."""

    code = "UNAVAILABLE"

    def __init__(self, count: int, backend: str) -> None:
        super().__init__(f"{count} accepted event(s) not delivered to the {backend} event log")
        self.count = count


class Spill(Protocol):
    """Where :meth:`EventPublisher.close` puts what the log did not take in time."""

    def send(self, records: Sequence[Record], timeout_s: float) -> None: ...


class Overflow(Spill, Protocol):
    """A spill the publisher also replays from (:class:`~llmops.events.spill.SpillLog`)."""

    def topics(self) -> list[str]: ...

    def replay(
        self, target: RecordSender, *, timeout_s: float, batch: int, limit: int | None
    ) -> int: ...

    def clear(self) -> None: ...


REPLAY_CHUNK = 20_000
"""Most spilled events replayed between two batches (new events wait behind a chunk)."""
SPILL_RETRY_S = 5.0
"""After a spill or replay attempt failed, wait this long before the next one (default)."""


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """Delay before retrying a failed batch: ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.05
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(attempt - 1, 30))


class PublisherMetrics:
    """Prometheus instruments of one publisher (label children resolved once per topic)."""

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.published = Counter(
            "llmops_events_published_total", "Events accepted into the buffer.", ("topic",),
            registry=registry,
        )  # fmt: skip
        self.delivered = Counter(
            "llmops_events_delivered_total", "Events appended to the log.", ("topic",),
            registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "llmops_events_rejected_total",
            "Events refused with RESOURCE_EXHAUSTED because the buffer was full.",
            ("topic",),
            registry=registry,
        )
        self.oversized = Counter(
            "llmops_events_oversized_total",
            "Events refused with INVALID_ARGUMENT: larger than a log record may be.",
            ("topic",),
            registry=registry,
        )
        self.send_failures = Counter(
            "llmops_events_send_failures_total",
            "Sends to the log that failed, of buffered batches and of spill replays (each is "
            "retried after a back-off).",
            ("backend",),
            registry=registry,
        ).labels(backend)
        self.depth = Gauge(
            "llmops_events_buffer_depth",
            "Events accepted and not yet delivered (buffered or being sent).",
            registry=registry,
        )
        self.spilled = Counter(
            "llmops_events_spilled_total",
            "Events appended to the local spill instead of the log (the log refused them "
            "while the buffer filled, or at shutdown); replayed into the log later.",
            ("reason",),
            registry=registry,
        )
        self.replayed = Counter(
            "llmops_events_replayed_total",
            "Spilled events replayed into the log.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "llmops_events_dead_lettered_total",
            "Events the log refused for good (INVALID_RECORD, INVALID_TIMESTAMP, "
            "MESSAGE_TOO_LARGE), sent to the dead-letter topic instead of retried forever.",
            ("topic",),
            registry=registry,
        )
        self.dead_letters_lost = Counter(
            "llmops_events_dead_letters_lost_total",
            "Dead letters the log refused too: written whole to the service log, then dropped.",
            registry=registry,
        )
        self.send_seconds = Histogram(
            "llmops_events_send_seconds",
            "Duration of successful batch sends to the log, in seconds.",
            ("backend",),
            buckets=_SEND_BUCKETS,
            registry=registry,
        ).labels(backend)


class EventPublisher:
    """Bounded, batching, retrying publisher of :class:`events_pb2.EventEnvelope` s."""

    def __init__(
        self,
        log: EventLog,
        *,
        capacity: int = 100_000,
        max_batch: int = 1000,
        linger_s: float = 0.005,
        send_timeout_s: float = 10.0,
        retry_backoff: RetryBackoff = RetryBackoff(),
        registry: CollectorRegistry | None = None,
        producer: str = "",
        topics: Mapping[str, str] = KIND_TOPICS,
        max_record_bytes: int = MAX_RECORD_BYTES,
        overflow: Overflow | None = None,
        spill_at: float = 0.5,
        spill_after_s: float = 2.0,
        spill_retry_s: float = SPILL_RETRY_S,
        spill_on_overload: bool = True,
    ) -> None:
        """``capacity``: most events accepted and not yet delivered (memory bound: capacity
        x event size). ``max_batch``: most events per ``log.send``. ``linger_s``: how long a
        partial batch waits for more events. ``send_timeout_s``: per ``log.send`` call.
        ``registry``: where the metrics register (a private registry when None).
        ``producer``: EventEnvelope.producer filled when empty. ``topics``: event kind ->
        topic (tests and benchmarks route to their own topics). ``max_record_bytes``: the
        largest serialized event (key included) accepted. ``overflow``: where events go
        while the log refuses them (None: they wait in the buffer); ``spill_at``: the
        fraction of ``capacity`` waiting that spills; ``spill_after_s``: how long an RPC
        waiting for a durable event waits on a refusing log before its events spill;
        ``spill_retry_s``: the wait after a spill or replay attempt failed;
        ``spill_on_overload`` False: no spiller — the ``overflow`` spill only takes what is
        left at close, and what is in it is still replayed."""
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be >= 1")
        if not 0 < spill_at <= 1:
            raise ValueError("spill_at must be in (0, 1]")
        self._log = log
        self.capacity = capacity
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._send_timeout_s = send_timeout_s
        self._backoff = retry_backoff
        self._producer = producer
        self._topics = dict(topics)
        self.max_record_bytes = max_record_bytes
        self.metrics = PublisherMetrics(registry or CollectorRegistry(), log.name)
        self._sender = DeadLettering(log, self.metrics)  # every send: the buffer's and replays
        self._published = {k: self.metrics.published.labels(t) for k, t in self._topics.items()}
        self._delivered = {t: self.metrics.delivered.labels(t) for t in self._topics.values()}
        self._rejected = {k: self.metrics.rejected.labels(t) for k, t in self._topics.items()}
        self._oversized = {k: self.metrics.oversized.labels(t) for k, t in self._topics.items()}
        self._buffer: deque[Record] = deque()
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the sender waits on it for events
        self._progress = threading.Condition(lock)  # flush() waits on it for deliveries
        self._spill_wake = threading.Condition(lock)  # the spiller waits on it
        self._pending = 0  # accepted, not yet done (buffered, being sent or spilled)
        self._accepted = 0  # sequence number of the last accepted event
        self._taken = 0  # sequence number of the last event taken from the buffer
        self._done = 0  # every event up to this sequence number is in the log (or spill)
        self._completed: list[tuple[int, int]] = []  # done ranges beyond _done, a min-heap
        self._first_at = 0.0  # monotonic time the oldest buffered event was accepted
        self._flushing = 0  # flush() calls waiting: skip the linger
        # publish_durable() calls waiting: (sequence, tie-breaker, since, loop, future), a
        # min-heap; ``since``: monotonic time the wait began
        self._waiters: list[
            tuple[int, int, float, asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = []
        self._waiter_ids = itertools.count()
        self._state = "new"  # new -> running -> closing -> closed
        self._abandon = False
        self._thread: threading.Thread | None = None
        self._sending: _Batch | None = None  # the batch the sender thread is delivering
        self.last_error: str | None = None
        """Why the log refused the last send, while it keeps refusing (None once one succeeds):
        what a caller waiting for durability is told (a full disk, a broker away)."""
        self._overflow = overflow
        self._spiller: threading.Thread | None = None
        self._spilling: list[_Batch] = []  # batches the spiller took from the buffer
        self._spill_io = threading.Lock()  # spill appends vs deleting a replayed spill
        self._spill_threshold = max(1, int(capacity * spill_at))
        self._spill_after_s = spill_after_s
        self._spill_retry_s = spill_retry_s
        self._spill_on_overload = spill_on_overload
        self._spill_retry_at = 0.0  # monotonic: no spill attempt before (one just failed)
        # the spill holds events to replay (a previous process's too); none before _replay_at
        self._replay_pending = overflow is not None and bool(overflow.topics())
        self._replay_at = 0.0
        self._replayed = 0  # replayed since the spill was last empty

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> EventPublisher:
        """Start the sender thread, and the spiller's with an ``overflow`` (idempotent);
        returns self."""
        with self._work:
            if self._state == "new":
                self._state = "running"
                self._thread = threading.Thread(
                    target=self._run, name=f"llmops-publisher-{self._log.name}", daemon=True
                )
                self._thread.start()
                if self._overflow is not None and self._spill_on_overload:
                    self._spiller = threading.Thread(
                        target=self._run_spiller, name="llmops-publisher-spill", daemon=True
                    )
                    self._spiller.start()
        return self

    def close(self, timeout_s: float = 10.0, spill: Spill | None = None) -> None:
        """Stop accepting, deliver what is buffered within ``timeout_s``, stop the thread.

        What the log did not take in time goes to ``spill`` (default: the ``overflow``
        spill) when there is one (a local log the next start replays:
        :mod:`llmops.events.spill`). Raises :class:`UndeliveredEvents` (count
        of events neither appended nor spilled) otherwise; it may then wait up to
        ``send_timeout_s`` more for a send in progress to finish. Does not close the log
        (its owner does).
        """
        spill = spill if spill is not None else self._overflow
        with self._work:
            if self._state in ("closing", "closed"):
                return
            started = self._state == "running"
            self._state = "closing"
            self._work.notify()
            self._spill_wake.notify()
        delivered = self.flush(timeout_s) if started else self._pending == 0
        with self._work:
            self._abandon = not delivered
            self._work.notify()
        for thread in (self._thread, self._spiller):
            if thread is not None:
                thread.join(self._send_timeout_s + 1.0)
        with self._work:
            self._state = "closed"
            left = self._pending
            # the batch being sent (a send may still be stuck in it), what the spiller held,
            # and what waits behind
            unfinished = [b for b in (self._sending, *self._spilling) if b and not b.done]
            held = [r for b in unfinished for r in b.records] + list(self._buffer)
        if held and spill is not None:
            try:
                spill.send(held, self._send_timeout_s)
            except Exception as exc:
                log.error("events_spill_failed", count=len(held), error=redact_text(str(exc)))
            else:
                log.warning(
                    "events_spilled", count=len(held), backend=self._log.name,
                    reason=self.last_error or "close timed out",
                )  # fmt: skip
                self.metrics.spilled.labels("shutdown").inc(len(held))
                with self._work:
                    self._buffer.clear()
                    self._sending = None
                    self._spilling = []
                    self._pending = 0
                self.metrics.depth.dec(len(held))
                return
        if left:
            log.error("events_undelivered_at_close", count=left, backend=self._log.name)
            raise UndeliveredEvents(left, self._log.name)

    def __enter__(self) -> EventPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Events accepted and not yet appended to the log."""
        return self._pending

    # -- the request path -----------------------------------------------------------------

    def publish(self, envelope: events_pb2.EventEnvelope) -> int:
        """Validate, stamp, serialize and buffer ``envelope``; never blocks. Returns its
        sequence number (:meth:`wait_durable` waits for it).

        Fills ``publish_time`` (now, UTC), ``key`` (events.proto's rule for the kind) and
        ``producer`` when empty — on the caller's message. Raises
        :class:`~llmops.errors.InvalidArgument` naming the missing field (or the event kind,
        when the event is over ``max_record_bytes``: never buffered, as no log would take it),
        :class:`~llmops.errors.ResourceExhausted` when the buffer is full, and
        :class:`~llmops.errors.FailedPrecondition` after ``close()``.
        """
        record, kind = self._prepare(envelope)
        return self._append(record, kind)

    def publish_all(self, envelopes: Sequence[events_pb2.EventEnvelope]) -> int:
        """Publish ``envelopes`` all or none: every one is validated and serialized first,
        then they are buffered together only if the buffer has room for all of them
        (else :class:`~llmops.errors.ResourceExhausted` and nothing was buffered). Returns
        the sequence number of the last one (that of the last accepted event when empty)."""
        stamp = divmod(time.time_ns(), 1_000_000_000)
        records = [self._prepare(envelope, stamp) for envelope in envelopes]
        if records:
            return self._append_all(records)
        return self._accepted

    async def publish_durable(
        self, envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float
    ) -> None:
        """:meth:`publish_all`, then wait (without blocking the loop) until every one of
        ``envelopes`` is appended to the log — durable in the log's sense (fsynced locally,
        acknowledged by the Kafka brokers). Waiters make the sender skip its linger.

        Raises what :meth:`publish_all` raises (nothing was accepted then), and
        :class:`TimeoutError` after ``timeout_s``: the events *were* accepted and will still
        be delivered (at-least-once), only not yet.
        """
        stamp = divmod(time.time_ns(), 1_000_000_000)
        records = [self._prepare(envelope, stamp) for envelope in envelopes]
        if not records:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # the waiter goes in with the events: the sender wakes once, already urgent
        self._append_all(records, (loop, future))
        await self._await_durable(future, timeout_s)

    async def wait_durable(self, sequence: int, timeout_s: float) -> None:
        """Wait (without blocking the loop) until the events accepted up to ``sequence`` are
        appended to the log; TimeoutError after ``timeout_s`` (they are still delivered
        later, at-least-once), saying why when the log refuses appends (a full disk, a broker
        away: :attr:`last_error`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._progress:
            if self._done >= sequence:
                return
            waiter = (sequence, next(self._waiter_ids), time.monotonic(), loop, future)
            heapq.heappush(self._waiters, waiter)
            self._work.notify()
            self._spill_wake.notify()
        await self._await_durable(future, timeout_s)

    async def _await_durable(self, future: asyncio.Future[None], timeout_s: float) -> None:
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            why = self.last_error
            raise TimeoutError(f"the log refuses appends: {why}" if why else "") from None

    def is_durable(self, sequence: int) -> bool:
        """Whether every event accepted up to ``sequence`` is in the log."""
        return self._done >= sequence

    def has_room(self, count: int) -> bool:
        """Whether ``count`` more events fit in the buffer now (a hint: another caller may
        take the room first; :meth:`publish_all` is the atomic check)."""
        return self._pending + count <= self.capacity

    def _prepare(
        self, envelope: events_pb2.EventEnvelope, now: tuple[int, int] | None = None
    ) -> tuple[Record, str]:
        """``now``: (seconds, nanos) for ``publish_time`` (one reading for a whole batch)."""
        kind = self._validate(envelope)
        if not envelope.HasField("publish_time"):
            stamp = envelope.publish_time  # set directly: FromNanoseconds is pure Python
            stamp.seconds, stamp.nanos = now or divmod(time.time_ns(), 1_000_000_000)
        text_key = envelope.key
        if not text_key:
            text_key = envelope.key = event_key(envelope, kind)
        if self._producer and not envelope.producer:
            envelope.producer = self._producer
        try:
            value = envelope.SerializeToString()
        except (EncodeError, DecodeError) as exc:
            raise InvalidArgument("event", f"cannot serialize: {exc}") from exc
        key = text_key.encode()
        if len(value) + len(key) > self.max_record_bytes:
            # refused here: the log would refuse it on every retry, at the head of the queue,
            # until the buffer filled and every publish failed
            self._oversized[kind].inc()
            raise InvalidArgument(
                kind,
                f"{len(value) + len(key):,} bytes serialized; an event may be at most "
                f"{self.max_record_bytes:,} (the event log's record size limit)",
            )
        return Record(self._topics[kind], key, value), kind

    def _validate(self, envelope: events_pb2.EventEnvelope) -> str:
        kind = envelope.WhichOneof("event")
        if kind is None:
            raise InvalidArgument("event", "exactly one event kind must be set")
        if kind not in self._topics:
            raise InvalidArgument(kind, f"no topic is configured for {kind} events")
        event = getattr(envelope, kind)
        if not event.event_id:
            raise InvalidArgument(f"{kind}.event_id", "required (a UUIDv7)")
        if not event.HasField("event_time"):
            raise InvalidArgument(f"{kind}.event_time", "required (UTC time of the event)")
        return kind

    def _append(self, record: Record, kind: str) -> int:
        with self._work:
            if self._state not in ("new", "running"):
                raise FailedPrecondition("event publisher is closed")
            if self._pending >= self.capacity:
                self._rejected[kind].inc()
                raise ResourceExhausted(
                    f"event buffer full: {self._pending} events waiting for the "
                    f"{self._log.name} event log (capacity {self.capacity}); retry later"
                )
            if not self._buffer:
                self._first_at = time.monotonic()
                self._work.notify()
            self._buffer.append(record)
            self._pending += 1
            self._accepted += 1
            sequence = self._accepted
            if len(self._buffer) == self._max_batch:
                self._work.notify()
            if self._pending >= self._spill_threshold and self._overflow is not None:
                self._spill_wake.notify()
        self._published[kind].inc()
        self.metrics.depth.inc()
        return sequence

    def _append_all(
        self,
        records: list[tuple[Record, str]],
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None,
    ) -> int:
        """Buffer ``records`` together; the sequence number of the last one. ``waiter``:
        (loop, future) resolved once they are all in the log."""
        with self._work:
            if self._state not in ("new", "running"):
                raise FailedPrecondition("event publisher is closed")
            if self._pending + len(records) > self.capacity:
                for _, kind in records:
                    self._rejected[kind].inc()
                raise ResourceExhausted(
                    f"event buffer full: {self._pending} events waiting for the "
                    f"{self._log.name} event log (capacity {self.capacity}), "
                    f"{len(records)} more do not fit; retry later"
                )
            was_empty = not self._buffer
            if was_empty:
                self._first_at = time.monotonic()
            self._buffer.extend(record for record, _ in records)
            self._pending += len(records)
            self._accepted += len(records)
            target = self._accepted
            if waiter is not None:
                entry = (target, next(self._waiter_ids), time.monotonic(), *waiter)
                heapq.heappush(self._waiters, entry)
                self._spill_wake.notify()
            if was_empty or waiter is not None or len(self._buffer) >= self._max_batch:
                self._work.notify()
            if self._pending >= self._spill_threshold and self._overflow is not None:
                self._spill_wake.notify()
        per_kind: dict[str, int] = {}
        for _, kind in records:  # one increment per kind, not per event (1,000-event batches)
            per_kind[kind] = per_kind.get(kind, 0) + 1
        for kind, n in per_kind.items():
            self._published[kind].inc(n)
        self.metrics.depth.inc(len(records))
        return target

    # -- flushing ----------------------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Wait until every event accepted before this call is appended to the log, at most
        ``timeout_s`` seconds; True when they all were (the publisher must be started)."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            target = self._accepted
            self._flushing += 1
            self._work.notify()
            try:
                while self._done < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._progress.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    async def aflush(self, timeout_s: float) -> bool:
        """:meth:`flush` without blocking the event loop (runs in the default executor)."""
        return await asyncio.to_thread(self.flush, timeout_s)

    # -- the sender thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch.records and not self._deliver(batch):
                return
            if self._replay_pending and time.monotonic() >= self._replay_at:
                self._replay_step()

    def _next_batch(self) -> _Batch | None:
        """The next batch once it is full, has lingered, or a flush/close wants it; an
        empty one when idle and a spill replay is due; None when closing with nothing left
        (or abandoned)."""
        with self._work:
            while True:
                if self._abandon:
                    return None
                if self._buffer:
                    wait = self._first_at + self._linger_s - time.monotonic()
                    urgent = self._flushing or self._waiters or self._state != "running"
                    if len(self._buffer) >= self._max_batch or urgent or wait <= 0:
                        batch = self._take(self._max_batch)
                        batch.since = time.monotonic()
                        self._sending = batch
                        if self._waiters:  # the spiller times a batch that durable calls wait on
                            self._spill_wake.notify()
                        return batch
                    self._work.wait(wait)
                elif self._state != "running":
                    return None
                elif self._replay_pending:
                    wait = self._replay_at - time.monotonic()
                    if wait <= 0:
                        return _Batch([], 0)
                    self._work.wait(wait)
                else:
                    self._work.wait()

    def _take(self, most: int) -> _Batch:
        """Under the lock: up to ``most`` events from the head of the buffer."""
        n = min(most, len(self._buffer))
        batch = _Batch([self._buffer.popleft() for _ in range(n)], self._taken + 1)
        self._taken += n
        self._first_at = time.monotonic()
        return batch

    def _deliver(self, batch: _Batch) -> bool:
        """Append ``batch``, retrying with back-off until it is (or the spiller spilled
        it); False if abandoned."""
        attempt = 0
        while not batch.done:
            started = time.perf_counter()
            try:
                self._sender.send(batch.records, self._send_timeout_s)
            except Exception as exc:  # any failure: keep the batch and retry it
                self._send_failed(exc)
                attempt += 1
                delay = self._backoff.delay(attempt)
                log.warning(
                    "events_send_failed", backend=self._log.name, events=len(batch.records),
                    attempt=attempt, retry_in_s=delay, error=str(exc),
                )  # fmt: skip
                if self._sleep_unless_abandoned(delay, batch):
                    return False
                continue
            self.metrics.send_seconds.observe(time.perf_counter() - started)
            self.last_error = None
            if self._replay_pending:  # the log takes sends again: replay the spill now
                self._replay_at = 0.0
            self._complete(batch, delivered=True)
            break
        with self._work:
            self._sending = None
        return True

    def _send_failed(self, exc: Exception) -> None:
        """Count a send the log refused and keep why (redacted) for :attr:`last_error`."""
        self.metrics.send_failures.inc()
        self.last_error = redact_text(f"{type(exc).__name__}: {exc}")[:300]

    def _sleep_unless_abandoned(self, delay_s: float, batch: _Batch) -> bool:
        """Sleep ``delay_s`` (publishes do not cut it short; the spiller taking ``batch``
        does); True if close() gave up."""
        end = time.monotonic() + delay_s
        with self._work:
            while not self._abandon and not batch.done and (left := end - time.monotonic()) > 0:
                self._work.wait(left)
            return self._abandon

    def _complete(self, batch: _Batch, *, delivered: bool) -> bool:
        """``batch`` is in the log (``delivered``) or the spill: advance what is durable
        and wake who waits for it. False when it was done already (spilled while its send
        was still under way, and then appended too: a duplicate, at-least-once)."""
        if delivered:
            per_topic: dict[str, int] = {}
            for r in batch.records:
                per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
            for topic, n in per_topic.items():
                self._delivered[topic].inc(n)
        with self._progress:
            if batch.done:
                return False
            batch.done = True
            n = len(batch.records)
            heapq.heappush(self._completed, (batch.first, batch.first + n - 1))
            while self._completed and self._completed[0][0] == self._done + 1:
                self._done = heapq.heappop(self._completed)[1]
            self._pending -= n
            self._progress.notify_all()
            self._work.notify()  # a sender backing off on this batch stops waiting
            while self._waiters and self._waiters[0][0] <= self._done:
                loop, future = heapq.heappop(self._waiters)[3:]
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, future)
        self.metrics.depth.dec(n)
        return True

    # -- the overflow spill ----------------------------------------------------------------

    def _run_spiller(self) -> None:
        """While running: spill what is due (:meth:`_spill_plan`), else sleep until it may
        be."""
        while True:
            with self._spill_wake:
                while True:
                    if self._state != "running":
                        return
                    plan, wait = self._spill_plan(time.monotonic())
                    if plan:
                        break
                    self._spill_wake.wait(wait)
            for batch in plan:
                self._spill(batch)

    def _spill_plan(self, now: float) -> tuple[list[_Batch], float | None]:
        """Under the lock: the batches to spill now — once ``spill_at`` of the capacity is
        waiting, or a durable call has waited ``spill_after_s``: the sender's batch when its
        send has been under way that long, and everything buffered — else how long until
        one may be due (None: until woken)."""
        if now < self._spill_retry_at:
            return [], self._spill_retry_at - now
        sending = self._sending
        if sending is not None and (sending.done or sending.spilling):
            sending = None
        waited = min((w[2] for w in self._waiters), default=None)
        due = self._pending >= self._spill_threshold or (
            waited is not None and now - waited >= self._spill_after_s
        )
        plan: list[_Batch] = []
        if due:
            if sending is not None and now - sending.since >= self._spill_after_s:
                sending.spilling = True
                plan.append(sending)
            if self._buffer:
                taken = self._take(len(self._buffer))
                self._spilling.append(taken)
                plan.append(taken)
            if plan:
                return plan, None
        times = []
        if sending is not None and (due or waited is not None):
            times.append(sending.since + self._spill_after_s)
        if waited is not None and self._buffer:
            times.append(waited + self._spill_after_s)
        return [], max(0.001, min(times) - now) if times else None

    def _spill(self, batch: _Batch) -> bool:
        """Append ``batch`` to the overflow spill; it is then done (durable on this disk).
        When the spill refuses: the sender's batch stays the sender's; one taken from the
        buffer is sent to the log instead, or tried again after ``spill_retry_s`` (it is
        the spiller's until done, or the close's). False when the spill refused."""
        assert self._overflow is not None
        while True:
            try:
                with self._spill_io:
                    self._overflow.send(batch.records, self._send_timeout_s)
            except Exception as exc:
                error = redact_text(str(exc))
                log.error(
                    "events_spill_failed", count=len(batch.records), error=error,
                    retry_in_s=self._spill_retry_s,
                )  # fmt: skip
            else:
                self._spilled(batch)
                return True
            with self._spill_wake:
                self._spill_retry_at = time.monotonic() + self._spill_retry_s
                if batch is self._sending:
                    batch.spilling = False
                    return False
            with contextlib.suppress(Exception):  # the log may be back meanwhile
                self._sender.send(batch.records, self._send_timeout_s)
                self._complete(batch, delivered=True)
                with self._spill_wake:
                    self._spilling.remove(batch)
                return False
            with self._spill_wake:
                self._spill_wake.wait(self._spill_retry_s)
                if self._state != "running":
                    return False  # close() spills or counts it

    def _spilled(self, batch: _Batch) -> None:
        with self._spill_wake:
            if batch in self._spilling:
                self._spilling.remove(batch)
            self._replay_pending = True
            self._replay_at = time.monotonic() + self._spill_retry_s
            delivered_meanwhile = batch.done  # the sender's send of it went through after all
        if not delivered_meanwhile:  # counted before a waiter can see it done
            self.metrics.spilled.labels("overload").inc(len(batch.records))
            log.warning(
                "events_spilled", count=len(batch.records), backend=self._log.name,
                waiting=self._pending, reason=self.last_error,
                replay="once the log takes sends again",
            )  # fmt: skip
        self._complete(batch, delivered=False)

    def _replay_step(self) -> None:
        """Replay a chunk of the overflow spill into the log; delete the spill once it is
        all replayed; on failure try again after ``spill_retry_s``."""
        assert self._overflow is not None
        try:
            sent = self._replay()
            if sent < REPLAY_CHUNK:  # caught up: once more with spills held off, then delete
                with self._spill_io:
                    last = self._replay()
                    sent += last
                    if last == 0:
                        self._overflow.clear()
                        with self._work:
                            self._replay_pending = False
        except Exception as exc:
            self._replay_at = time.monotonic() + self._spill_retry_s
            # a failed send to the log like any other: while everything waits in the spill,
            # replays are the only sends, and the metric must still show the log refusing
            self._send_failed(exc)
            log.warning(
                "events_spill_replay_waiting", error=redact_text(str(exc)),
                retry_in_s=self._spill_retry_s,
            )  # fmt: skip
            return
        self.last_error = None
        self._replayed += sent
        if not self._replay_pending:
            log.warning("events_spill_replayed", events=self._replayed, backend=self._log.name)
            self._replayed = 0

    def _replay(self) -> int:
        assert self._overflow is not None
        sent = self._overflow.replay(
            self._sender, timeout_s=self._send_timeout_s, batch=self._max_batch, limit=REPLAY_CHUNK
        )
        self.metrics.replayed.inc(sent)
        return sent


class DeadLettering:
    """Sends to ``log``; the records it refuses for good (:class:`RecordsRefused`) go to the
    dead-letter topic instead — the record as it was, its key, and headers saying where it
    was going and why (``dlq.reason``, ``dlq.topic``, ``dlq.stage`` = publish: the sinks'
    dead letters say the same) — so one bad record is neither retried forever nor holds up
    the others. A dead letter the log refuses too is written whole (base64) to the service
    log and counted, then dropped. A dead letter that cannot be sent *now* raises, and the
    caller resends the batch: at-least-once, as every send."""

    def __init__(self, log: EventLog, metrics: PublisherMetrics, topic: str = DLQ_TOPIC) -> None:
        self._log = log
        self._metrics = metrics
        self._topic = topic

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        try:
            self._log.send(records, timeout_s)
        except RecordsRefused as refused:
            letters = [self._letter(records[i], why) for i, why in refused.refused.items()]
            log.error(
                "events_dead_lettered", count=len(letters), topic=self._topic,
                sources=sorted({records[i].topic for i in refused.refused}),
                reason=next(iter(refused.refused.values())),
            )  # fmt: skip
            try:
                self._log.send(letters, timeout_s)
            except RecordsRefused as again:
                for i in again.refused:
                    self._lost(letters[i], again.refused[i])
            for i in refused.refused:
                self._metrics.dead_lettered.labels(records[i].topic).inc()

    def _letter(self, record: Record, why: str) -> Record:
        where = (
            ("dlq.reason", why[:500].encode()),
            ("dlq.topic", record.topic.encode()),
            ("dlq.stage", b"publish"),
        )
        return Record(self._topic, record.key, record.value, (*record.headers, *where))

    def _lost(self, letter: Record, why: str) -> None:
        self._metrics.dead_letters_lost.inc()
        log.error(
            "events_dead_letter_refused", reason=why, key=letter.key.decode("latin-1"),
            headers={k: v.decode("latin-1") for k, v in letter.headers},
            value_b64=base64.b64encode(letter.value).decode(), bytes=len(letter.value),
        )  # fmt: skip


@dataclass(eq=False, slots=True)
class _Batch:
    """Events taken from the buffer together: sequence numbers ``first`` onwards."""

    records: list[Record]
    first: int
    since: float = 0.0  # monotonic time its first send began
    spilling: bool = False  # the spiller is appending it to the spill
    done: bool = False  # in the log or the spill


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter that timed out cancelled it
        future.set_result(None)
