"""Assign: which variant of which experiment a unit sees, and the exposures it logs.

Pure computation over the catalog's in-memory snapshot (no I/O but one sticky-store read
when a unit falls into a bandit). All or nothing: every layer is decided first, then the
exposures are checked against the event buffer's room, and only then are they published
(together), the bandits' first assignments recorded and the dedup window noted. A full
buffer is RESOURCE_EXHAUSTED and leaves no trace.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.ids import uuid7
from llmops.v1 import common_pb2, events_pb2, experiment_pb2
from services.experiment import hashing
from services.experiment.catalog import Catalog
from services.experiment.model import CompiledExperiment, CompiledLayer
from services.experiment.sticky import StickyStore

OVERRIDE = experiment_pb2.ASSIGNMENT_REASON_OVERRIDE
BUCKETED = experiment_pb2.ASSIGNMENT_REASON_BUCKETED
BANDIT = experiment_pb2.ASSIGNMENT_REASON_BANDIT
HOLDOUT_SALT = "llmops-holdout"


class ExposureSink(Protocol):
    """Where exposures go (``ctx.events``): checked for room, then published together."""

    def has_room(self, count: int) -> bool: ...

    def publish_all(self, envelopes: Sequence[events_pb2.EventEnvelope]) -> None: ...


def _no_attributes() -> Mapping[str, Any]:
    return {}


@dataclass(slots=True)  # not frozen: built on every call, and frozen __init__ is slow
class AssignQuery:
    """One Assign call in domain terms."""

    unit_type: str
    unit_id: str
    layers: Sequence[str] = ()
    """Only these layers; empty = every layer of the unit type."""
    experiment_ids: Sequence[str] = ()
    """Only these experiments; empty = all."""
    log_exposure: bool = True
    targeting: Callable[[], Mapping[str, Any]] = _no_attributes
    """The flat targeting context (:mod:`services.experiment.targeting`), built only when
    a targeted experiment needs it."""
    request_id: str = ""
    tenant: str = ""
    market: str = ""
    device: common_pb2.Device.ValueType = common_pb2.DEVICE_UNSPECIFIED


@dataclass(slots=True)
class Assigned:
    """The unit's variant in one experiment (at most one per layer)."""

    experiment: CompiledExperiment
    variant: int
    """Index into the experiment's variants."""
    bucket: int
    reason: experiment_pb2.AssignmentReason.ValueType
    exposure_id: str = ""
    """The exposure logged for it (the first one within the dedup window); empty when the
    query logs none."""


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


class Assigner:
    def __init__(
        self,
        catalog: Catalog,
        events: ExposureSink,
        sticky: StickyStore,
        *,
        holdout_bps: int = 0,
        dedup_window_s: float = 1800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.events = events
        self.sticky = sticky
        self.holdout_bps = holdout_bps
        self.dedup = ExposureDedup(dedup_window_s)
        self._clock = clock

    async def assign(self, query: AssignQuery) -> list[Assigned]:
        picks, sticky = await self._decide(query)
        if query.log_exposure and picks:
            self._expose(query, picks)  # raises before any side effect when there is no room
        for unit, sticky_field, variant in sticky:
            self.sticky.put(unit, sticky_field, variant)
        return picks

    def _layers(self, query: AssignQuery) -> tuple[Sequence[CompiledLayer], set[str] | None]:
        snap = self.catalog.snapshot
        layers: Sequence[CompiledLayer] = snap.by_unit_type.get(query.unit_type, ())
        if query.layers:
            for i, name in enumerate(query.layers):
                if name not in snap.layers:
                    raise InvalidArgument(f"layers[{i}]", f"unknown layer {name!r}")
            wanted_layers = set(query.layers)
            layers = [layer for layer in layers if layer.name in wanted_layers]
        wanted: set[str] | None = None
        if query.experiment_ids:
            for i, exp_id in enumerate(query.experiment_ids):
                if exp_id not in snap.experiments:
                    raise InvalidArgument(f"experiment_ids[{i}]", f"unknown experiment {exp_id!r}")
            wanted = set(query.experiment_ids)
        return layers, wanted

    async def _decide(
        self, query: AssignQuery
    ) -> tuple[list[Assigned], list[tuple[str, str, str]]]:
        """Every layer's assignment, and the (unit, field, variant) first assignments of
        bandits to record; no side effect."""
        unit_type, unit_id = query.unit_type, query.unit_id
        if not unit_type:
            raise InvalidArgument("unit_type", "required (e.g. user, session)")
        if not unit_id:
            raise InvalidArgument("unit_id", "required")
        layers, wanted = self._layers(query)
        held_out = (
            self.holdout_bps > 0
            and hashing.point(f"{HOLDOUT_SALT}:{unit_type}", unit_id) < self.holdout_bps
        )
        picks: list[Assigned] = []
        sticky: list[tuple[str, str, str]] = []
        context: Mapping[str, Any] | None = None
        sticky_doc: dict[str, str] | None = None
        for layer in layers:
            b = hashing.bucket(layer.salt, unit_id, layer.bucket_count)
            override = _override(layer, unit_id, wanted) if layer.overrides else None
            if override is not None:
                picks.append(Assigned(override[0], override[1], b, OVERRIDE))
                continue
            if held_out:
                continue
            found = layer.experiment_at(b)
            if found is None or (wanted is not None and found.id not in wanted):
                continue
            if context is None:
                context = query.targeting()
            if not found.predicate(context):
                continue
            if not found.bandit:
                picks.append(Assigned(found, found.variant_for(unit_id), b, BUCKETED))
                continue
            # Bandit weights move while it runs: a unit's first assignment sticks.
            unit = f"{unit_type}:{unit_id}"
            if sticky_doc is None:
                sticky_doc = await self.sticky.get(unit)
            sticky_field = f"{found.id}:{found.salt}"
            index = found.key_index.get(sticky_doc.get(sticky_field, ""), -1)
            if index < 0:
                index = found.variant_for(unit_id)
                sticky.append((unit, sticky_field, found.keys[index]))
            picks.append(Assigned(found, index, b, BANDIT))
        return picks, sticky

    def _expose(self, query: AssignQuery, picks: list[Assigned]) -> None:
        """Set every pick's exposure id: the one logged within the dedup window, or a new
        one, all of which are published together (ResourceExhausted, and nothing noted,
        when the buffer has no room for them)."""
        now = self._clock()
        fresh: list[tuple[Assigned, tuple[str, int, str], events_pb2.EventEnvelope]] = []
        for pick in picks:
            exp = pick.experiment
            key = (exp.id, exp.version, query.unit_id)
            earlier = self.dedup.first(key, now)
            if earlier is not None:
                pick.exposure_id = earlier
                continue
            event = events_pb2.ExposureEvent(
                event_id=uuid7(int(now * 1000)),
                request_id=query.request_id,
                tenant=query.tenant,
                unit_type=query.unit_type,
                unit_id=query.unit_id,
                experiment_id=exp.id,
                experiment_version=exp.version,
                layer=exp.layer,
                variant=exp.keys[pick.variant],
                bucket=pick.bucket,
                reason=pick.reason,
                market=query.market,
                device=query.device,
            )
            event.event_time.FromNanoseconds(int(now * 1e9))
            fresh.append((pick, key, events_pb2.EventEnvelope(exposure=event)))
        if not fresh:
            return
        if not self.events.has_room(len(fresh)):
            raise ResourceExhausted(
                f"event buffer full: the {len(fresh)} exposure(s) of this assignment cannot "
                "be logged now; nothing was recorded (retry later)"
            )
        self.events.publish_all([envelope for _, _, envelope in fresh])
        for pick, key, envelope in fresh:
            pick.exposure_id = envelope.exposure.event_id
            self.dedup.remember(key, now, pick.exposure_id)


def _override(
    layer: CompiledLayer, unit_id: str, wanted: set[str] | None
) -> tuple[CompiledExperiment, int] | None:
    """The (experiment, variant) a QA override forces on ``unit_id`` in ``layer``, if any."""
    for exp, index in layer.overrides.get(unit_id, ()):
        if wanted is None or exp.id in wanted:
            return exp, index
    return None
