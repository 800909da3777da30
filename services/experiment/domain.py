"""The experiment service's behaviour, free of gRPC: assignment, exposures, lifecycle.

``assign`` is pure computation over the in-memory :class:`~services.experiment.model.Snapshot`
(no I/O; exposures go to the non-blocking event publisher). Lifecycle changes go through the
config store with optimistic versions, publish an audit event, and swap in a new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from google.protobuf import field_mask_pb2, struct_pb2

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from llmops.events.ids import uuid7
from llmops.v1 import common_pb2, events_pb2, experiment_pb2
from services.experiment import hashing, model, stats
from services.experiment.sticky import MemoryStickyStore, StickyStore
from services.experiment.store import Aborted, ConfigStore, layer_guard
from services.experiment.targeting import context_from_request

log = structlog.get_logger("llmops.experiment")

OVERRIDE = experiment_pb2.ASSIGNMENT_REASON_OVERRIDE
BUCKETED = experiment_pb2.ASSIGNMENT_REASON_BUCKETED
BANDIT_REASON = experiment_pb2.ASSIGNMENT_REASON_BANDIT
HOLDOUT_SALT = "llmops-holdout"
_SYSTEM = events_pb2.Actor(
    type=events_pb2.ACTOR_TYPE_SYSTEM, id="system:experiments", via="llmops.v1.ExperimentService"
)

Publish = Callable[[events_pb2.EventEnvelope], None]
RewardSource = Callable[
    [experiment_pb2.Experiment], Awaitable[tuple[dict[str, int], dict[str, int]]]
]
"""(successes, trials) per arm of a bandit, e.g. from ClickHouse (results.bandit_rewards)."""


class ExposureDedup:
    """Remembers (experiment, version, unit) for ``window_s``: a page refresh that assigns
    the same unit again within the window returns the first exposure id and publishes
    nothing. Bounded (oldest forgotten first); per process, so replicas may each log a
    unit once per window — analysis counts distinct units."""

    def __init__(self, window_s: float, max_entries: int = 1_000_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, int, str], tuple[float, str]] = OrderedDict()

    def first(self, key: tuple[str, int, str], now: float) -> str | None:
        """The exposure id already logged for ``key`` within the window, else None."""
        hit = self._seen.get(key)
        if hit is not None and now - hit[0] < self.window_s:
            return hit[1]
        return None

    def remember(self, key: tuple[str, int, str], now: float, exposure_id: str) -> None:
        self._seen[key] = (now, exposure_id)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        # Expired entries at the old end go too (amortized; insertion order ~ time order).
        while self._seen:
            oldest_key, (t, _) = next(iter(self._seen.items()))
            if now - t < self.window_s:
                break
            del self._seen[oldest_key]


class Experiments:
    def __init__(
        self,
        store: ConfigStore,
        publish: Publish,
        *,
        holdout_bps: int = 0,
        dedup_window_s: float = 1800.0,
        clock: Callable[[], float] = time.time,
        clickhouse: Callable[[], ClickHouseStore] | None = None,
        sticky: StickyStore | None = None,
    ) -> None:
        self.store = store
        self.sticky = sticky or MemoryStickyStore()
        self._clickhouse = clickhouse
        self.publish = publish
        self.holdout_bps = holdout_bps
        self.dedup = ExposureDedup(dedup_window_s)
        self._clock = clock
        self.snapshot = model.build_snapshot(0, {}, {})
        self._loaded = False
        self._write_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    def clickhouse(self) -> ClickHouseStore:
        """The ClickHouse store analyses read (opened on first use)."""
        if self._clickhouse is None:
            raise FailedPrecondition("no ClickHouse store configured for experiment analysis")
        return self._clickhouse()

    # -- configuration ------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Reload from the store if its revision moved; True when a new snapshot is in force."""
        revision = await self.store.revision()
        if self._loaded and revision == self.snapshot.revision:
            return False
        self._loaded = True
        stored = await self.store.load()
        self.snapshot = model.build_snapshot(stored.revision, stored.layers, stored.experiments)
        return True

    def start_polling(self, interval_s: float) -> None:
        if interval_s > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval_s))

    async def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self.refresh():
                    log.info("experiments_reloaded", revision=self.snapshot.revision)
            except Exception as exc:  # a store outage must not stop the poller
                log.warning("experiments_reload_failed", error=str(exc))

    # -- assignment (hot path) ----------------------------------------------------------------

    async def assign(self, request: experiment_pb2.AssignRequest) -> experiment_pb2.AssignResponse:
        unit_type, unit_id = request.unit_type, request.unit_id
        if not unit_type:
            raise InvalidArgument("unit_type", "required (e.g. user, session)")
        if not unit_id:
            raise InvalidArgument("unit_id", "required")
        snap = self.snapshot
        layers = snap.by_unit_type.get(unit_type, ())
        if request.layers:
            for i, name in enumerate(request.layers):
                if name not in snap.layers:
                    raise InvalidArgument(f"layers[{i}]", f"unknown layer {name!r}")
            wanted_layers = set(request.layers)
            layers = [layer for layer in layers if layer.name in wanted_layers]
        wanted: set[str] | None = None
        if request.experiment_ids:
            for i, exp_id in enumerate(request.experiment_ids):
                if exp_id not in snap.experiments:
                    raise InvalidArgument(f"experiment_ids[{i}]", f"unknown experiment {exp_id!r}")
            wanted = set(request.experiment_ids)
        held_out = (
            self.holdout_bps > 0
            and hashing.point(f"{HOLDOUT_SALT}:{unit_type}", unit_id) < self.holdout_bps
        )
        response = experiment_pb2.AssignResponse()
        context: dict[str, Any] | None = None
        sticky_doc: dict[str, str] | None = None
        now = self._clock()
        for layer in layers:
            b = hashing.bucket(layer.salt, unit_id, layer.bucket_count)
            chosen: tuple[model.CompiledExperiment, int, int] | None = None
            for exp, index in layer.overrides.get(unit_id, ()):
                if wanted is None or exp.id in wanted:
                    chosen = (exp, index, OVERRIDE)
                    break
            if chosen is None:
                if held_out:
                    continue
                found = layer.experiment_at(b)
                if found is None or (wanted is not None and found.id not in wanted):
                    continue
                if context is None:
                    context = context_from_request(request.context, request.attributes)
                if not found.predicate(context):
                    continue
                if found.bandit:  # weights move while it runs: first assignments stick
                    if sticky_doc is None:
                        sticky_doc = await self.sticky.get(f"{unit_type}:{unit_id}")
                    field = f"{found.id}:{found.salt}"
                    index = found.key_index.get(sticky_doc.get(field, ""), -1)
                    if index < 0:
                        index = found.variant_for(unit_id)
                        self.sticky.put(f"{unit_type}:{unit_id}", field, found.keys[index])
                    chosen = (found, index, BANDIT_REASON)
                else:
                    chosen = (found, found.variant_for(unit_id), BUCKETED)
            exp, index, reason = chosen
            entry = response.assignments.add()
            entry.CopyFrom(exp.templates[index])
            entry.bucket = b
            entry.reason = reason  # type: ignore[assignment]
            if not request.skip_exposure:
                entry.exposure_id = self._expose(request, exp, index, b, reason, now)
        return response

    def _expose(
        self,
        request: experiment_pb2.AssignRequest,
        exp: model.CompiledExperiment,
        index: int,
        b: int,
        reason: int,
        now: float,
    ) -> str:
        key = (exp.id, exp.version, request.unit_id)
        earlier = self.dedup.first(key, now)
        if earlier is not None:
            return earlier
        ctx = request.context
        event = events_pb2.ExposureEvent(
            event_id=uuid7(int(now * 1000)),
            request_id=ctx.request_id,
            tenant=ctx.tenant,
            unit_type=request.unit_type,
            unit_id=request.unit_id,
            experiment_id=exp.id,
            experiment_version=exp.version,
            layer=exp.layer,
            variant=exp.keys[index],
            bucket=b,
            reason=reason,  # type: ignore[arg-type]
            market=ctx.market,
            device=ctx.device,
        )
        event.event_time.FromNanoseconds(int(now * 1e9))
        self.publish(events_pb2.EventEnvelope(exposure=event))  # RESOURCE_EXHAUSTED if full
        self.dedup.remember(key, now, event.event_id)
        return event.event_id

    # -- reads --------------------------------------------------------------------------------

    def get(self, exp_id: str) -> experiment_pb2.Experiment:
        if not exp_id:
            raise InvalidArgument("id", "required")
        found = self.snapshot.experiments.get(exp_id)
        if found is None:
            raise NotFound(f"experiment {exp_id!r} does not exist")
        return found

    def list_experiments(
        self, statuses: Sequence[int], layer: str
    ) -> list[experiment_pb2.Experiment]:
        if layer and layer not in self.snapshot.layers:
            raise InvalidArgument("layer", f"unknown layer {layer!r}")
        return [
            e
            for _, e in sorted(self.snapshot.experiments.items())
            if (not statuses or e.status in statuses) and (not layer or e.layer == layer)
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    async def create_layer(
        self, layer: experiment_pb2.Layer, ctx: common_pb2.RequestContext
    ) -> experiment_pb2.Layer:
        clean = model.validate_layer(layer)
        async with self._write_lock:
            await self.refresh()
            if clean.name in self.snapshot.layers:
                raise AlreadyExists(f"layer {clean.name!r} already exists")
            await self._write([], [(clean, 0)])
        self._audit(ctx, "layer.create", "layer", clean.name, None, clean)
        return clean

    async def create(
        self, exp: experiment_pb2.Experiment, ctx: common_pb2.RequestContext
    ) -> experiment_pb2.Experiment:
        async with self._write_lock:
            await self.refresh()
            model.validate_experiment(exp, self.snapshot.layers)
            if exp.id in self.snapshot.experiments:
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
            await self._write([(stored, 0)], [])
        self._audit(ctx, "experiment.create", "experiment", exp.id, None, stored)
        return stored

    async def update(
        self,
        exp: experiment_pb2.Experiment,
        paths: Sequence[str],
        ctx: common_pb2.RequestContext,
    ) -> experiment_pb2.Experiment:
        """Apply the fields named in ``paths``. A DRAFT takes any configuration field; a
        running or stopped experiment only description, owner and end_time (changing its
        variants, traffic, targeting or salt would reshuffle units mid-test: stop it and
        create a new one)."""
        if not paths:
            raise InvalidArgument("update_mask", "name the fields to update")
        config = {f.name for f in experiment_pb2.Experiment.DESCRIPTOR.fields if f.number < 30}
        for i, path in enumerate(paths):
            if path not in config or path == "id":
                raise InvalidArgument(f"update_mask.paths[{i}]", f"{path!r} is not updatable")
        async with self._write_lock:
            await self.refresh()
            current = self.get(exp.id)
            if exp.version != current.version:
                raise Aborted(
                    f"experiment.version: {exp.id} is at version {current.version}, "
                    f"the request names {exp.version} (re-read it and retry)"
                )
            if current.status != model.DRAFT:
                frozen = sorted(set(paths) - {"description", "owner", "end_time"})
                if frozen:
                    raise FailedPrecondition(
                        f"experiment {exp.id} is {model.status_name(current.status)}: "
                        f"{', '.join(frozen)} can change only in DRAFT"
                    )
            after = experiment_pb2.Experiment()
            after.CopyFrom(current)
            field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
                exp, after, replace_message_field=True, replace_repeated_field=True
            )
            model.validate_experiment(after, self.snapshot.layers)
            after.version = current.version + 1
            after.update_time.FromNanoseconds(int(self._clock() * 1e9))
            await self._write([(after, current.version)], [])
        self._audit(ctx, "experiment.update", "experiment", exp.id, current, after)
        return after

    async def reweight(
        self,
        exp_id: str,
        weights_bps: dict[str, int],
        ctx: common_pb2.RequestContext | None = None,
        reason: str = "",
    ) -> experiment_pb2.Experiment:
        """Set a running bandit's current weights (new units follow them; units already
        assigned keep their arm through the sticky store). Audited as a SYSTEM action."""
        async with self._write_lock:
            await self.refresh()
            current = self.get(exp_id)
            if current.type != model.BANDIT or current.status != model.RUNNING:
                raise FailedPrecondition(f"experiment {exp_id} is not a running bandit")
            keys = {v.key for v in current.variants}
            if set(weights_bps) != keys or sum(weights_bps.values()) != 10_000:
                raise InvalidArgument(
                    "current_weights_bps", f"needs every variant of {exp_id}, summing to 10000"
                )
            after = experiment_pb2.Experiment()
            after.CopyFrom(current)
            after.current_weights_bps.clear()
            after.current_weights_bps.update(weights_bps)
            after.version = current.version + 1
            after.update_time.FromNanoseconds(int(self._clock() * 1e9))
            await self._write([(after, current.version)], [])
        system = common_pb2.RequestContext(tenant=(ctx.tenant if ctx else ""))
        self._audit(
            system, "experiment.reweight", "experiment", exp_id, current, after, reason, _SYSTEM
        )
        return after

    async def update_bandits(self, rewards: RewardSource, *, seed: int | None = None) -> list[str]:
        """Recompute the weights of every running bandit that is due (``update_interval``,
        default 1 h, since its last change) by Thompson sampling on (successes, trials) per
        arm; returns the ids updated. A replica that loses the race to another (ABORTED)
        skips: the other one did the update."""
        now = self._clock()
        done = []
        for exp in list(self.snapshot.experiments.values()):
            if exp.type != model.BANDIT or exp.status != model.RUNNING:
                continue
            interval = exp.bandit.update_interval.ToSeconds() or 3600
            if now - exp.update_time.ToNanoseconds() / 1e9 < interval:
                continue
            successes, trials = await rewards(exp)
            weights = stats.thompson_weights(
                successes, trials, min_weight_bps=exp.bandit.min_weight_bps, seed=seed
            )
            try:
                await self.reweight(exp.id, weights, reason="thompson sampling")
            except Aborted:
                continue
            done.append(exp.id)
        return done

    async def stop_expired(self) -> list[str]:
        """Stop every running experiment whose ``end_time`` has passed (a SYSTEM action)."""
        now_us = int(self._clock() * 1e6)
        stopped = []
        for exp in list(self.snapshot.experiments.values()):
            if exp.status != model.RUNNING or not exp.HasField("end_time"):
                continue
            if exp.end_time.ToMicroseconds() > now_us:
                continue
            try:
                await self.transition(
                    exp.id, exp.version, model.STOPPED, common_pb2.RequestContext(),
                    reason="end_time reached", actor=_SYSTEM,
                )  # fmt: skip
            except Aborted:
                continue  # another replica (or an operator) got there first
            stopped.append(exp.id)
        return stopped

    async def transition(
        self,
        exp_id: str,
        version: int,
        target: int,
        ctx: common_pb2.RequestContext,
        reason: str = "",
        actor: events_pb2.Actor | None = None,
    ) -> experiment_pb2.Experiment:
        """DRAFT/STOPPED -> RUNNING (takes buckets), RUNNING -> STOPPED (keeps them),
        DRAFT/STOPPED -> ARCHIVED (frees them)."""
        allowed: tuple[int, ...] = {
            model.RUNNING: (model.DRAFT, model.STOPPED),
            model.STOPPED: (model.RUNNING,),
            model.ARCHIVED: (model.DRAFT, model.STOPPED),
        }[target]  # type: ignore[index]
        async with self._write_lock:
            await self.refresh()
            current = self.get(exp_id)
            if version != current.version:
                raise Aborted(
                    f"version: experiment {exp_id} is at version {current.version}, "
                    f"the request names {version} (re-read it and retry)"
                )
            if current.status not in allowed:
                raise FailedPrecondition(
                    f"experiment {exp_id} is {model.status_name(current.status)}; "
                    f"{model.status_name(target)} needs "
                    + " or ".join(model.status_name(s) for s in allowed)
                )
            after = experiment_pb2.Experiment()
            after.CopyFrom(current)
            after.status = target  # type: ignore[assignment]
            after.version = current.version + 1
            now_ns = int(self._clock() * 1e9)
            after.update_time.FromNanoseconds(now_ns)
            layer = experiment_pb2.Layer()
            layer.CopyFrom(self.snapshot.layers[current.layer])
            guard = layer_guard(self.snapshot.layers[current.layer])
            layers: list[tuple[experiment_pb2.Layer, int]] = []
            if target == model.RUNNING:
                if current.id not in layer.allocations:
                    model.validate_experiment(current, self.snapshot.layers)
                    ranges = model.allocate(layer, current.id, current.traffic_bps)
                    model.hold(layer, current.id, ranges)
                    layers.append((layer, guard))
                after.start_time.FromNanoseconds(now_ns)
            elif target == model.STOPPED:
                after.stop_time.FromNanoseconds(now_ns)
            else:
                model.release(layer, current.id)
                layers.append((layer, guard))
            del after.bucket_ranges[:]
            if target != model.ARCHIVED:
                for r in (
                    layer.allocations[current.id].ranges if current.id in layer.allocations else ()
                ):
                    after.bucket_ranges.add(start=r.start, end=r.end)
            await self._write([(after, current.version)], layers)
        actions: dict[int, str] = {model.RUNNING: "start", model.STOPPED: "stop"}
        action = actions.get(target, "archive")
        self._audit(
            ctx, f"experiment.{action}", "experiment", exp_id, current, after, reason, actor
        )
        return after

    async def _write(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
    ) -> None:
        await self.store.write(experiments, layers)
        await self.refresh()

    def _audit(
        self,
        ctx: common_pb2.RequestContext,
        action: str,
        kind: str,
        name: str,
        before: Any,
        after: Any,
        reason: str = "",
        actor: events_pb2.Actor | None = None,
    ) -> None:
        event = events_pb2.AuditEvent(
            event_id=uuid7(),
            request_id=ctx.request_id,
            tenant=ctx.tenant,
            actor=actor
            or events_pb2.Actor(
                type=events_pb2.ACTOR_TYPE_USER if ctx.user_id else events_pb2.ACTOR_TYPE_SERVICE,
                id=ctx.user_id or "unknown",
                via="llmops.v1.ExperimentAdminService",
            ),
            action=action,
            resource=events_pb2.Resource(
                type=kind,
                name=name,
                version=str(getattr(after, "version", "") or ""),
                service="llmops.v1.ExperimentAdminService",
            ),
            outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
            reason=reason,
        )
        event.event_time.FromNanoseconds(int(self._clock() * 1e9))
        for field, message in (("before", before), ("after", after)):
            if message is not None:
                struct = struct_pb2.Struct()
                struct.update(model.as_dict(message))
                getattr(event, field).CopyFrom(struct)
        try:
            self.publish(events_pb2.EventEnvelope(audit=event))
        except Exception as exc:  # the change is stored; a full buffer must not hide it
            log.error("audit_publish_failed", action=action, name=name, error=str(exc))
