"""``ctx.events``: what a service publishes, and the one builder of audit events.

Services publish through this port, never through the process's publisher directly, so the
rules hold everywhere: publishing never blocks the event loop; a full buffer is an error the
caller sees (``RESOURCE_EXHAUSTED``), never a silent drop; several events of one action are
published all or none (:meth:`ServiceEvents.publish_all`); and an audit record's actor is
the caller's identity (:mod:`llmops.identity`), never a request field.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from google.protobuf import json_format

from llmops.callcontext import current_request_id, durable_var
from llmops.errors import AuditNotPublished
from llmops.events.ids import uuid7
from llmops.identity import Identity, current_identity
from llmops.v1 import events_pb2

if TYPE_CHECKING:
    from llmops.events.publisher import EventPublisher

log = structlog.get_logger("llmops.events")


class ServiceEvents:
    """One service's view of the process's event publisher (opened on first use)."""

    def __init__(
        self,
        service: str,
        publisher: Callable[[], EventPublisher],
        clock: Callable[[], float] = time.time,
        *,
        durable: frozenset[str] = frozenset(),
        durable_timeout_s: float = 5.0,
    ) -> None:
        """``durable``: event kinds (``audit``, ``feedback``, ...) an RPC that publishes
        them answers only once they are in the log (``events.durable``)."""
        self.service = service
        self._open = publisher
        self._opened: EventPublisher | None = None
        self._clock = clock
        self._durable = durable
        self._durable_timeout_s = durable_timeout_s

    def _publisher(self) -> EventPublisher:
        # Opened on first use (it starts the sender thread), then kept: no lock per event.
        if self._opened is None:
            self._opened = self._open()
        return self._opened

    def publish(self, envelope: events_pb2.EventEnvelope) -> int:
        """Buffer one event; its sequence number (:meth:`is_durable`). Raises
        ResourceExhausted when the buffer is full."""
        publisher = self._publisher()
        sequence = publisher.publish(envelope)
        if self._durable and envelope.WhichOneof("event") in self._durable:
            self._must_be_durable(publisher, sequence)
        return sequence

    def is_durable(self, sequence: int) -> bool:
        """Whether the events published up to ``sequence`` are in the log."""
        return self._publisher().is_durable(sequence)

    def publish_all(self, envelopes: Sequence[events_pb2.EventEnvelope]) -> None:
        """Buffer every event or none (ResourceExhausted when they do not all fit)."""
        publisher = self._publisher()
        sequence = publisher.publish_all(envelopes)
        if self._durable and any(e.WhichOneof("event") in self._durable for e in envelopes):
            self._must_be_durable(publisher, sequence)

    def _must_be_durable(self, publisher: EventPublisher, sequence: int) -> None:
        """Inside an RPC, the runtime answers only once ``sequence`` is in the log; outside
        one (a periodic task) the event stays buffered like any other."""
        pending = durable_var.get()
        if pending is not None:
            pending[publisher] = (sequence, self._durable_timeout_s)

    async def publish_durable(
        self, envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float
    ) -> None:
        """Buffer every event or none, then wait until all are in the log (durable).
        ResourceExhausted: none accepted; TimeoutError: accepted, not yet durable."""
        await self._publisher().publish_durable(envelopes, timeout_s)

    def publish_audit(self, envelope: events_pb2.EventEnvelope, applied: str) -> int:
        """Publish the audit record of an action already applied (``applied`` says so, e.g.
        ``"experiment.start of x is stored (version 3)"``). On failure the whole record goes
        to the service log (so it can be replayed) and :class:`AuditNotPublished` (DATA_LOSS)
        tells the caller: the action must not look like a plain success. Returns the
        sequence number."""
        try:
            return self.publish(envelope)
        except Exception as exc:
            record = json_format.MessageToJson(envelope, indent=None)
            log.error("audit_publish_failed", error=str(exc), record=record)
            raise AuditNotPublished(
                f"{applied} but its audit record could not be published ({exc}); the record "
                "is in the service log"
            ) from exc

    def has_room(self, count: int) -> bool:
        """Whether ``count`` events fit now: check it before a side effect that must be
        followed by its events (then publish with :meth:`publish_all`)."""
        return self._publisher().has_room(count)

    def audit_event(
        self,
        action: str,
        resource_type: str,
        name: str,
        *,
        version: str = "",
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        reason: str = "",
        tenant: str = "",
        outcome: events_pb2.AuditOutcome.ValueType = events_pb2.AUDIT_OUTCOME_SUCCESS,
        actor: Identity | None = None,
    ) -> events_pb2.EventEnvelope:
        """An audit record of ``action`` on ``resource_type``/``name``, wrapped for publishing.

        The actor is ``actor`` when given (e.g. :func:`llmops.identity.system` for scheduled
        work), else the identity of the RPC being served; the request id is the current
        one. ``before``/``after`` are plain values (Struct numbers are doubles: large ids and
        versions belong in strings). Publish it with :meth:`publish` (or with the action's
        other events via :meth:`publish_all`); a failure raises — an audited change whose
        record cannot be published must not look successful.
        """
        who = actor or current_identity()
        # Built in place inside its envelope, field by field: nested messages passed to a
        # constructor are copied (this halves the cost; the audit trail's append rate
        # depends on it).
        envelope = events_pb2.EventEnvelope()
        event = envelope.audit
        event.event_id = uuid7()
        event.request_id = current_request_id() or ""
        event.tenant = tenant
        if who is not None:
            actor_pb = event.actor
            actor_pb.type = who.actor_type
            actor_pb.id = who.principal
            actor_pb.via = who.via
        else:
            event.actor.id = "unknown"
        event.action = action
        res = event.resource
        res.type = resource_type
        res.name = name
        res.version = version
        res.service = self.service
        event.outcome = outcome
        event.reason = reason
        ns = int(self._clock() * 1e9)
        event.event_time.seconds, event.event_time.nanos = divmod(ns, 1_000_000_000)
        for field, value in (("before", before), ("after", after)):
            if value is not None:
                getattr(event, field).update(value)
                if not value:  # an empty mapping is still "set" (as CopyFrom made it)
                    getattr(event, field).SetInParent()
        return envelope
