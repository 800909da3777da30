"""Changes to layers and experiments: validation, optimistic versions, the audit trail.

Every change is read-check-write under one lock per process, guarded in the store by the
version it read (ABORTED when another writer won), and audited: the audit record is built
before the write and stored with it in the store's audit outbox (one atomic step), the
event buffer must have room for it (RESOURCE_EXHAUSTED otherwise, nothing written), and if
publishing still fails after the write the caller gets DATA_LOSS naming what was stored —
the outbox relay publishes the record later (:mod:`llmops.events.outbox`), so a change is
never left unaudited, not even by a process killed between the write and the publish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from google.protobuf import field_mask_pb2

from llmops.errors import (
    Aborted,
    AlreadyExists,
    AuditNotPublished,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from llmops.events.outbox import AuditOutbox, StagedAudit
from llmops.identity import Identity, system
from llmops.v1 import events_pb2, experiment_pb2
from services.experiment import model
from services.experiment.catalog import Catalog
from services.experiment.store import layer_guard

if TYPE_CHECKING:
    from llmops.events.port import ServiceEvents

log = structlog.get_logger("llmops.experiment")

SYSTEM = system("experiments")
"""The actor of changes the service makes by itself (expiry, bandits, demo data)."""

_CONFIG_FIELDS = frozenset(
    f.name for f in experiment_pb2.Experiment.DESCRIPTOR.fields if f.number < 30
)
_TRANSITIONS: dict[int, tuple[tuple[int, ...], str]] = {
    # target -> (statuses it may come from, audit action)
    model.RUNNING: ((model.DRAFT, model.STOPPED), "experiment.start"),
    model.STOPPED: ((model.RUNNING,), "experiment.stop"),
    model.ARCHIVED: ((model.DRAFT, model.STOPPED), "experiment.archive"),
}


@dataclass(frozen=True, slots=True)
class Change:
    """Who makes a change, for its audit record."""

    tenant: str = ""
    reason: str = ""
    actor: Identity | None = None
    """None: the caller of the RPC being served (``llmops.identity``)."""


class Lifecycle:
    def __init__(
        self,
        catalog: Catalog,
        events: ServiceEvents,
        clock: Callable[[], float] = time.time,
        *,
        outbox_min_age_s: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.events = events
        self._clock = clock
        self._write_lock = asyncio.Lock()
        self.outbox = AuditOutbox(catalog.store, events, min_age_s=outbox_min_age_s, clock=clock)

    async def create_layer(
        self, layer: experiment_pb2.Layer, change: Change
    ) -> experiment_pb2.Layer:
        clean = model.validate_layer(layer)
        async with self._write_lock:
            await self.catalog.refresh()
            if clean.name in self.catalog.snapshot.layers:
                raise AlreadyExists(f"layer {clean.name!r} already exists")
            audit = self._audit("layer.create", "layer", clean.name, None, clean, change)
            await self._commit([], [(clean, 0)], audit)
        return clean

    async def create(
        self, exp: experiment_pb2.Experiment, change: Change
    ) -> experiment_pb2.Experiment:
        async with self._write_lock:
            await self.catalog.refresh()
            model.validate_experiment(exp, self.catalog.snapshot.layers)
            if exp.id in self.catalog.snapshot.experiments:
                raise AlreadyExists(f"experiment {exp.id!r} already exists")
            stored = experiment_pb2.Experiment()
            stored.CopyFrom(exp)
            for name in ("status", "version", "bucket_ranges", "create_time", "update_time",
                         "start_time", "stop_time", "current_weights_bps"):  # fmt: skip
                stored.ClearField(name)
            stored.type = exp.type or model.AB
            stored.status = model.DRAFT
            stored.version = 1
            stored.name = exp.name or exp.id
            stored.create_time.FromNanoseconds(int(self._clock() * 1e9))
            stored.update_time.CopyFrom(stored.create_time)
            audit = self._audit("experiment.create", "experiment", exp.id, None, stored, change)
            await self._commit([(stored, 0)], [], audit)
        return stored

    async def update(
        self, exp: experiment_pb2.Experiment, paths: Sequence[str], change: Change
    ) -> experiment_pb2.Experiment:
        """Apply the fields named in ``paths``. A DRAFT takes any configuration field; a
        running or stopped experiment only description, owner and end_time (changing its
        variants, traffic, targeting or salt would reshuffle units mid-test: stop it and
        create a new one)."""
        if not paths:
            raise InvalidArgument("update_mask", "name the fields to update")
        for i, path in enumerate(paths):
            if path not in _CONFIG_FIELDS or path == "id":
                raise InvalidArgument(f"update_mask.paths[{i}]", f"{path!r} is not updatable")
        async with self._write_lock:
            current = await self._current(exp.id, exp.version, "experiment.version")
            if current.status != model.DRAFT:
                frozen = sorted(set(paths) - {"description", "owner", "end_time"})
                if frozen:
                    raise FailedPrecondition(
                        f"experiment {exp.id} is {model.status_name(current.status)}: "
                        f"{', '.join(frozen)} can change only in DRAFT"
                    )
            after = self._next_version(current)
            field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
                exp, after, replace_message_field=True, replace_repeated_field=True
            )
            model.validate_experiment(after, self.catalog.snapshot.layers)
            audit = self._audit("experiment.update", "experiment", exp.id, current, after, change)
            await self._commit([(after, current.version)], [], audit)
        return after

    async def transition(
        self, exp_id: str, version: int, target: int, change: Change
    ) -> experiment_pb2.Experiment:
        """DRAFT/STOPPED -> RUNNING (takes buckets), RUNNING -> STOPPED (keeps them),
        DRAFT/STOPPED -> ARCHIVED (frees them)."""
        allowed, action = _TRANSITIONS[target]
        async with self._write_lock:
            current = await self._current(exp_id, version, "version")
            if current.status not in allowed:
                raise FailedPrecondition(
                    f"experiment {exp_id} is {model.status_name(current.status)}; "
                    f"{model.status_name(target)} needs "
                    + " or ".join(model.status_name(s) for s in allowed)
                )
            after = self._next_version(current)
            after.status = target  # type: ignore[assignment]
            layers = self._move_buckets(current, after, target)
            audit = self._audit(action, "experiment", exp_id, current, after, change)
            await self._commit([(after, current.version)], layers, audit)
        return after

    async def reweight(
        self, exp_id: str, weights_bps: dict[str, int], change: Change
    ) -> experiment_pb2.Experiment:
        """Set a running bandit's current weights (new units follow them; units already
        assigned keep their arm through the sticky store)."""
        async with self._write_lock:
            current = await self._current(exp_id, None, "version")
            if current.type != model.BANDIT or current.status != model.RUNNING:
                raise FailedPrecondition(f"experiment {exp_id} is not a running bandit")
            keys = {v.key for v in current.variants}
            if set(weights_bps) != keys or sum(weights_bps.values()) != 10_000:
                raise InvalidArgument(
                    "current_weights_bps", f"needs every variant of {exp_id}, summing to 10000"
                )
            after = self._next_version(current)
            after.current_weights_bps.clear()
            after.current_weights_bps.update(weights_bps)
            audit = self._audit("experiment.reweight", "experiment", exp_id, current, after, change)
            await self._commit([(after, current.version)], [], audit)
        return after

    # -- steps ----------------------------------------------------------------------------------

    async def _current(
        self, exp_id: str, version: int | None, field: str
    ) -> experiment_pb2.Experiment:
        """The stored experiment, which must be at ``version`` (any when None)."""
        await self.catalog.refresh()
        current = self.catalog.experiment(exp_id)
        if version is not None and version != current.version:
            raise Aborted(
                f"{field}: experiment {exp_id} is at version {current.version}, "
                f"the request names {version} (re-read it and retry)"
            )
        return current

    def _next_version(self, current: experiment_pb2.Experiment) -> experiment_pb2.Experiment:
        after = experiment_pb2.Experiment()
        after.CopyFrom(current)
        after.version = current.version + 1
        after.update_time.FromNanoseconds(int(self._clock() * 1e9))
        return after

    def _move_buckets(
        self, current: experiment_pb2.Experiment, after: experiment_pb2.Experiment, target: int
    ) -> list[tuple[experiment_pb2.Layer, int]]:
        """Take (start), keep (stop) or free (archive) the experiment's layer buckets; the
        layers to write with their guards."""
        stored_layer = self.catalog.snapshot.layers[current.layer]
        layer = experiment_pb2.Layer()
        layer.CopyFrom(stored_layer)
        changed: list[tuple[experiment_pb2.Layer, int]] = []
        now_ns = after.update_time.ToNanoseconds()
        if target == model.RUNNING:
            if current.id not in layer.allocations:
                model.validate_experiment(current, self.catalog.snapshot.layers)
                model.hold(
                    layer, current.id, model.allocate(layer, current.id, current.traffic_bps)
                )
                changed.append((layer, layer_guard(stored_layer)))
            after.start_time.FromNanoseconds(now_ns)
        elif target == model.STOPPED:
            after.stop_time.FromNanoseconds(now_ns)
        else:
            model.release(layer, current.id)
            changed.append((layer, layer_guard(stored_layer)))
        del after.bucket_ranges[:]
        if current.id in layer.allocations:
            for r in layer.allocations[current.id].ranges:
                after.bucket_ranges.add(start=r.start, end=r.end)
        return changed

    def _audit(
        self,
        action: str,
        kind: str,
        name: str,
        before: experiment_pb2.Experiment | None,
        after: experiment_pb2.Experiment | experiment_pb2.Layer,
        change: Change,
    ) -> events_pb2.EventEnvelope:
        version = after.version if isinstance(after, experiment_pb2.Experiment) else 0
        return self.events.audit_event(
            action,
            kind,
            name,
            version=str(version or ""),
            before=model.as_dict(before) if before is not None else None,
            after=model.as_dict(after),
            reason=change.reason,
            tenant=change.tenant,
            actor=change.actor,
        )

    async def _commit(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
        audit: events_pb2.EventEnvelope,
    ) -> None:
        """Write, publish the audit record, refresh the snapshot."""
        if not self.events.has_room(1):
            raise ResourceExhausted(
                f"event buffer full: the audit record of {audit.audit.action} "
                f"{audit.audit.resource.name} cannot be published now; nothing was changed "
                "(retry later)"
            )
        # The audit record goes into the outbox with the change: a process that dies after
        # the write and before the log has the record leaves it for the relay.
        staged = StagedAudit(audit.audit.event_id, audit.SerializeToString(), self.outbox.now_us())
        await self.catalog.store.write(experiments, layers, staged)
        failure = self._publish(audit)
        try:
            await self.catalog.refresh()
        except Exception as exc:  # the periodic refresh catches up; the audit error wins
            if failure is None:
                raise
            log.warning("experiments_refresh_failed", error=str(exc))
        if failure is not None:
            raise failure

    def _publish(self, audit: events_pb2.EventEnvelope) -> AuditNotPublished | None:
        """Publish the audit record of a stored change; a failure is returned (after the
        snapshot refresh) rather than raised."""
        event = audit.audit
        applied = (
            f"{event.action} of {event.resource.name} is stored "
            f"(version {event.resource.version or '-'})"
        )
        try:
            sequence = self.events.publish_audit(audit, applied)
        except AuditNotPublished as failure:
            return failure  # still staged: the relay publishes it once it is old enough
        self.outbox.published(event.event_id, sequence)
        return None

    async def relay_outbox(self) -> int:
        """Empty the audit outbox (:meth:`AuditOutbox.relay`); how many records a dead
        process had left there were published."""
        return await self.outbox.relay()
