"""Accepting feedback: validate, resolve repeated keys, redact typed text, make it durable.

For a batch (``Submit`` is a batch of one):

1. every record is checked on its own (:mod:`services.feedback.validation`); a bad one is
   refused with its field and the rest go on;
2. repeated idempotency keys (within the window, or twice in the batch) resolve to the
   earlier event: a duplicate, or — the signal overwrites and the content changed — a new
   record that supersedes it;
3. texts people typed (a label's note, a correction) go through the guardrail service in
   one ``CheckBatch`` and are stored redacted; if it cannot answer, those records are
   refused (UNAVAILABLE) rather than stored with personal data;
4. the new FeedbackEvents are published all or none and awaited until the event log holds
   them (the contract: durable before OK); then their keys are recorded.

Records whose key another call is processing wait for that call, so one process never
accepts a key twice. The prediction a record names may not be logged yet (feedback can
arrive first): nothing here looks it up; ClickHouse joins the two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from llmops.errors import InvalidArgument, LLMOpsError, Unavailable
from llmops.events.ids import uuid7_many
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from llmops.yamlfiles import HotReload
from services.feedback.idempotency import KeyEntry, KeyStore
from services.feedback.metrics import FeedbackMetrics
from services.feedback.signals import SignalTable
from services.feedback.validation import CheckedRecord, check_record

log = structlog.get_logger("llmops.feedback")

MAX_BATCH = 1000
REDACTED_BLOCK = "[REMOVED]"
"""What a typed text becomes when the text policy blocks it outright."""
_KIND_ENUM = {
    "thumbs": feedback_pb2.FEEDBACK_KIND_THUMBS,
    "rating": feedback_pb2.FEEDBACK_KIND_RATING,
    "label": feedback_pb2.FEEDBACK_KIND_LABEL,
    "correction": feedback_pb2.FEEDBACK_KIND_CORRECTION,
    "click": feedback_pb2.FEEDBACK_KIND_CLICK,
    "booking": feedback_pb2.FEEDBACK_KIND_BOOKING,
    "dwell": feedback_pb2.FEEDBACK_KIND_DWELL,
    "conversion": feedback_pb2.FEEDBACK_KIND_CONVERSION,
    "preference": feedback_pb2.FEEDBACK_KIND_PREFERENCE,
    "interaction": feedback_pb2.FEEDBACK_KIND_INTERACTION,
}


class TextGuard(Protocol):
    async def redact(
        self, context: common_pb2.RequestContext, texts: Sequence[str], timeout_s: float
    ) -> list[str]:
        """``texts`` as they may be stored (PII replaced); raises Unavailable."""
        ...


class DurableEvents(Protocol):
    async def publish_durable(
        self, envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float
    ) -> None: ...


class Outcome(NamedTuple):
    """One record's result: accepted (event id, duplicate or replaced) or refused (error).
    A tuple: a batch makes a thousand of them, and a frozen dataclass costs three times as
    much to build."""

    event_id: str = ""
    duplicate: bool = False
    replaced: bool = False
    error: LLMOpsError | None = None


@dataclass(slots=True)
class _Item:
    index: int
    feedback: feedback_pb2.Feedback
    checked: CheckedRecord
    key: str
    outcome: Outcome | None = None
    event: events_pb2.EventEnvelope | None = None
    replaced: bool = False
    """It supersedes an earlier record of its key (the signal overwrites)."""
    same_as: _Item | None = None
    """A repeat within the batch: it gets the outcome of this record."""


def _template(
    context: common_pb2.RequestContext, received: tuple[int, int]
) -> events_pb2.EventEnvelope:
    """What every FeedbackEvent of one call shares: the tenant and market, and ``received``
    = (seconds, nanos) of the accept time as the received time and the default event time
    (a record's own ``occurred_time`` replaces the latter)."""
    envelope = events_pb2.EventEnvelope()
    ev = envelope.feedback
    ev.event_time.seconds, ev.event_time.nanos = received
    ev.received_time.seconds, ev.received_time.nanos = received
    ev.tenant = context.tenant
    ev.market = context.market
    return envelope


class Intake:
    def __init__(
        self,
        signals: HotReload[SignalTable],
        keys: KeyStore,
        events: DurableEvents,
        guard: TextGuard | None,
        metrics: FeedbackMetrics | None = None,
        *,
        durable_timeout_s: float = 5.0,
        guard_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signals = signals
        self.keys = keys
        self.events = events
        self.guard = guard
        self.metrics = metrics
        self.durable_timeout_s = durable_timeout_s
        self.guard_timeout_s = guard_timeout_s
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def submit(
        self,
        context: common_pb2.RequestContext,
        records: Sequence[feedback_pb2.Feedback],
        field: Callable[[int], str],
    ) -> list[Outcome]:
        """One outcome per record, in order; ``field(i)`` is record i's path in the request
        (``feedback`` or ``feedback[i]``). Raises ResourceExhausted (none accepted) when the
        event buffer is full, Unavailable when the records are accepted but not yet durable
        within ``durable_timeout_s`` (a retry with the same keys is safe)."""
        now = self._clock()
        table = self.signals.current
        outcomes: list[Outcome | None] = [None] * len(records)
        items: list[_Item] = []
        for i, feedback in enumerate(records):
            try:
                checked = check_record(feedback, table, field(i), now)
            except InvalidArgument as exc:
                outcomes[i] = Outcome(error=exc)
                continue
            key = f"{context.tenant}\x1f{feedback.idempotency_key}"
            items.append(_Item(i, feedback, checked, key))
        keys = {item.key for item in items}
        mine: asyncio.Future[None] | None = None
        try:
            mine = await self._claim(keys)
            await self._resolve_repeats(items)
            fresh = [item for item in items if item.outcome is None and item.same_as is None]
            await self._redact(context, fresh)
            fresh = [item for item in fresh if item.outcome is None]
            stamp = divmod(int(now * 1e9), 1_000_000_000)
            template = _template(context, stamp)
            for item, event_id in zip(fresh, uuid7_many(len(fresh)), strict=True):
                item.event = self._event(template, item, event_id)
            envelopes = [item.event for item in fresh if item.event is not None]
            if envelopes:
                try:
                    await self.events.publish_durable(envelopes, self.durable_timeout_s)
                except TimeoutError as exc:
                    raise Unavailable(
                        f"{len(envelopes)} feedback record(s) accepted but not yet durable "
                        f"after {self.durable_timeout_s:g} s"
                        + (f" ({exc})" if str(exc) else "")
                        + "; retrying with the same idempotency keys is safe"
                    ) from None
                await self.keys.put_many(
                    {
                        item.key: KeyEntry(item.outcome.event_id, item.checked.fingerprint)
                        for item in fresh
                        if item.outcome is not None
                    }
                )
        finally:
            if mine is not None:
                mine.set_result(None)
                for key in keys:
                    self._inflight.pop(key, None)
        for item in items:
            final = item
            while final.same_as is not None:
                final = final.same_as
            if final is not item:
                got = final.outcome
                item.outcome = (
                    Outcome(event_id=got.event_id, duplicate=True)
                    if got is not None and got.error is None
                    else got
                )
            outcomes[item.index] = item.outcome
        done = [
            o if o is not None else Outcome(error=Unavailable("not processed")) for o in outcomes
        ]
        self._count(records, done)
        return done

    async def _claim(self, keys: set[str]) -> asyncio.Future[None]:
        """Wait until no other call processes one of ``keys``, then claim them all (one
        future for the call: resolved when it is done)."""
        while True:
            busy = {id(f): f for k in keys if (f := self._inflight.get(k)) is not None}
            if not busy:
                break
            await asyncio.wait_for(
                asyncio.gather(*map(asyncio.shield, busy.values())), self.durable_timeout_s
            )
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._inflight[key] = mine
        return mine

    async def _resolve_repeats(self, items: list[_Item]) -> None:
        known = await self.keys.get_many(sorted({item.key for item in items}))
        in_force: dict[str, _Item] = {}  # the batch's record of each key that will be stored
        for item in items:
            first = in_force.get(item.key)
            entry = known.get(item.key)
            prior = first.checked.fingerprint if first is not None else None
            if prior is None and entry is not None:
                prior = entry.fingerprint
            if prior is None:
                in_force[item.key] = item
                continue
            changed = prior != item.checked.fingerprint
            if not (changed and item.checked.signal.on_repeat == "overwrite"):
                if first is not None:
                    item.same_as = first
                elif entry is not None:
                    item.outcome = Outcome(event_id=entry.event_id, duplicate=True)
                continue
            if first is not None:  # changed twice in one batch: only the last is stored
                first.same_as = item
            item.replaced = True
            in_force[item.key] = item

    async def _redact(self, context: common_pb2.RequestContext, items: list[_Item]) -> None:
        typed = [(item, path, text) for item in items for path, text in item.checked.texts]
        if not typed or self.guard is None:
            return
        try:
            clean = await self.guard.redact(context, [t for _, _, t in typed], self.guard_timeout_s)
        except LLMOpsError as exc:
            failed = Unavailable(f"typed text not stored: the guardrail could not check it ({exc})")
            for item, _, _ in typed:
                item.outcome = Outcome(error=failed)
            return
        copied: set[int] = set()
        for (item, path, _), text in zip(typed, clean, strict=True):
            if item.index not in copied:  # the caller's message stays as it came
                copy = feedback_pb2.Feedback()
                copy.CopyFrom(item.feedback)
                item.feedback = copy
                copied.add(item.index)
            message_name, field_name = path.split(".")
            setattr(getattr(item.feedback, message_name), field_name, text)

    def _event(
        self, template: events_pb2.EventEnvelope, item: _Item, event_id: str
    ) -> events_pb2.EventEnvelope:
        """The FeedbackEvent of ``item``: the batch's ``template`` (:func:`_template`) with
        the record's own fields."""
        fb = item.feedback
        envelope = events_pb2.EventEnvelope()
        envelope.CopyFrom(template)  # one call for the fields every record of a call shares
        ev = envelope.feedback
        ev.event_id = event_id
        if fb.HasField("occurred_time"):
            ev.event_time.CopyFrom(fb.occurred_time)
        if fb.request_id:
            ev.request_id = fb.request_id
        if fb.unit_id:
            ev.unit_type = fb.unit_type
            ev.unit_id = fb.unit_id
        ev.kind = _KIND_ENUM[item.checked.kind]
        ev.feedback.CopyFrom(fb)
        if not fb.name:
            ev.feedback.name = item.checked.signal.name
        item.outcome = Outcome(event_id, False, item.replaced)  # positional: 3x cheaper
        return envelope

    def _count(self, records: Sequence[feedback_pb2.Feedback], outcomes: list[Outcome]) -> None:
        if self.metrics is None:
            return
        known = self.signals.current.signals
        counts: dict[tuple[str, str], int] = {}
        for fb, outcome in zip(records, outcomes, strict=True):
            signal = fb.name or (fb.WhichOneof("kind") or "")
            if outcome.error is not None:
                result = "refused"
            elif outcome.duplicate:
                result = "duplicate"
            elif outcome.replaced:
                result = "replaced"
            else:
                result = "accepted"
            label = (signal if signal in known else "unknown", result)
            counts[label] = counts.get(label, 0) + 1
        for (signal, result), n in counts.items():  # one labelled increment per pair
            self.metrics.records.labels(signal, result).inc(n)
