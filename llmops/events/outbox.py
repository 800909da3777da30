"""The audit outbox: a change's audit record is stored with the change, in the same atomic
write, and taken out once the event log holds it.

A service that stores a change and then publishes its audit record can die in between: the
change would stay without its record. With an outbox the record is written in the change's
own transaction (or atomic file rename, or Lua script); the process then publishes it as
usual and :meth:`AuditOutbox.relay` — run periodically — forgets the records this process
published once the log has them, and publishes (durably) those older than ``min_age_s``
that no live process claims: left by a process that died between its commit and the append.
At-least-once: a process that died after the append and before forgetting has its record
relayed again with the same event id, which the audit writer drops as a repeat.

The store side is two methods (:class:`OutboxStore`); staging is the store's own business,
because it must happen inside the change's write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
from pydantic import Field

from llmops.scheduler import Periodic
from llmops.settings import Settings
from llmops.v1 import events_pb2

if TYPE_CHECKING:
    from llmops.events.port import ServiceEvents

log = structlog.get_logger("llmops.events.outbox")

OUTBOX_BATCH = 500
"""Most audit records one relay publishes."""
OUTBOX_PUBLISH_TIMEOUT_S = 30.0


class AuditOutboxSettings(Settings):
    """The settings of a service with an audit outbox (its config section inherits them)."""

    audit_outbox_interval_s: float = Field(
        5.0, gt=0, description="How often the audit outbox is emptied: records the log holds "
        "are forgotten, and those a dead process left there are published.",
    )  # fmt: skip
    audit_outbox_min_age_s: float = Field(
        60.0, gt=0, description="How old a record another process left in the audit outbox "
        "must be before it is published here (a live process publishes its own at once).",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StagedAudit:
    """A change's audit record, stored with the change in the audit outbox."""

    event_id: str
    envelope: bytes
    at_us: int


class OutboxStore(Protocol):
    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` staged records (event id, serialized envelope) staged before
        ``cutoff_us`` (µs since the epoch), oldest first."""
        ...

    async def delete_outbox(self, event_ids: Sequence[str]) -> None: ...


class AuditOutbox:
    """The relay side of one service's outbox (see the module docstring)."""

    def __init__(
        self,
        store: OutboxStore,
        events: ServiceEvents,
        *,
        min_age_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``min_age_s``: how old a record another process left must be before
        :meth:`relay` publishes it (a live writer publishes its own within milliseconds)."""
        self.store = store
        self.events = events
        self.min_age_s = min_age_s
        self._clock = clock
        # records staged and published by this process: event id -> the publisher's
        # sequence number (relay forgets them once durable)
        self._sent: dict[str, int] = {}

    def now_us(self) -> int:
        return int(self._clock() * 1e6)

    def published(self, event_id: str, sequence: int) -> None:
        """This process published the staged record ``event_id`` as ``sequence``."""
        self._sent[event_id] = sequence

    def task(self, interval_s: float) -> Periodic:
        """The service's ``audit_outbox`` task: :meth:`relay` every ``interval_s``."""

        async def relay() -> None:
            await self.relay()

        return Periodic("audit_outbox", interval_s, relay)

    async def relay(self) -> int:
        """Forget what this process published once durable; publish (durably) and forget
        the records older than ``min_age_s`` that it did not publish. Returns how many it
        relayed."""
        done = [e for e, sequence in self._sent.items() if self.events.is_durable(sequence)]
        if done:
            await self.store.delete_outbox(done)
            for event_id in done:
                self._sent.pop(event_id, None)
        cutoff = self.now_us() - int(self.min_age_s * 1e6)
        rows = await self.store.outbox_before(cutoff, OUTBOX_BATCH)
        orphans = [(e, payload) for e, payload in rows if e not in self._sent]
        if not orphans:
            return 0
        envelopes = [events_pb2.EventEnvelope.FromString(payload) for _, payload in orphans]
        await self.events.publish_durable(envelopes, OUTBOX_PUBLISH_TIMEOUT_S)
        relayed = [e for e, _ in orphans]
        await self.store.delete_outbox(relayed)
        log.warning("audit_outbox_relayed", events=len(relayed), first=relayed[0])
        return len(relayed)
