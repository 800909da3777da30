"""The feature store's behaviour, free of gRPC: online reads, pushes, freshness.

The online read is the hot path (a storefront ranking call makes one per request): the
requested refs or feature service are resolved to a :class:`ReadPlan` once per registry
revision and cached; a request then costs one key validation per entity, one pipelined
round trip to the online store and one pass that parses the stored ``Value`` bytes straight
into the response message (the domain builds the protobuf response itself: converting
through intermediate objects costs more than the store round trip).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, feature_pb2
from services.feature import codec
from services.feature.online import OnlineStore, RecordWrite
from services.feature.registry import Registry, ViewDef

MAX_KEYS = 1000
MAX_PUSH_ROWS = 10_000
PRESENT = feature_pb2.FEATURE_STATUS_PRESENT
NOT_FOUND = feature_pb2.FEATURE_STATUS_NOT_FOUND
OUTSIDE_MAX_AGE = feature_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE
_STATUS_NAMES: dict[int, str] = {
    PRESENT: "PRESENT",
    NOT_FOUND: "NOT_FOUND",
    OUTSIDE_MAX_AGE: "OUTSIDE_MAX_AGE",
}


@dataclass(frozen=True, slots=True)
class ViewRead:
    """One view's part of a plan: where its values go in the response row."""

    view: str
    ttl_us: int
    ts_index: int
    """Position of the view's event-time field in the plan's field list."""
    slots: tuple[tuple[int, int], ...]
    """(response column, field-list position) per requested feature of the view."""


@dataclass(frozen=True, slots=True)
class PushRow:
    """A validated row: key text (online record), event time µs, typed values, key proto."""

    key_text: str
    event_time_us: int
    values: dict[str, common_pb2.Value]
    key: common_pb2.EntityKey


@dataclass(frozen=True, slots=True)
class ReadPlan:
    entity: str
    refs: tuple[common_pb2.FeatureRef, ...]
    fields: tuple[bytes, ...]
    views: tuple[ViewRead, ...]
    header: bytes
    """The response's ``features`` field, serialized once."""


class FeatureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.values = Counter(
            "llmops_feature_values_total",
            "Feature values served online, by view and status (hit = PRESENT).",
            ["feature_view", "status"],
            registry=registry,
        )
        self.pushed = Counter(
            "llmops_feature_rows_pushed_total",
            "Rows written by PushFeatures, by view and target.",
            ["feature_view", "target"],
            registry=registry,
        )
        self.stale = Counter(
            "llmops_feature_rows_stale_total",
            "Pushed rows not written online because a newer value was stored.",
            ["feature_view"],
            registry=registry,
        )
        self._children: dict[tuple[str, int], Any] = {}

    def count(self, view: str, status: int, n: int) -> None:
        """Add ``n`` values of ``status`` (label children cached: no lookup per call)."""
        child = self._children.get((view, status))
        if child is None:
            name = _STATUS_NAMES[status]
            child = self._children[(view, status)] = self.values.labels(view, name)
        child.inc(n)


class RegistryHolder:
    """The registry in force and the plans built from it (dropped when it changes)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._plans: dict[Any, ReadPlan] = {}

    def swap(self, registry: Registry) -> Registry:
        previous, self.registry = self.registry, registry
        self._plans = {}
        return previous

    def plan_for_service(self, name: str) -> ReadPlan:
        plan = self._plans.get(name)
        if plan is None:
            refs = self.registry.service(name).refs
            plan = self._plans[name] = self._build(refs, "feature_service")
        return plan

    def plan_for_refs(self, refs: Sequence[common_pb2.FeatureRef]) -> ReadPlan:
        key = tuple((r.feature_view, r.name) for r in refs)
        plan = self._plans.get(key)
        if plan is None:
            if not key:
                raise InvalidArgument("feature_refs", "name at least one feature")
            plan = self._build(key, "feature_refs")
            if len(self._plans) < 10_000:  # callers with ever-new ref lists stay bounded
                self._plans[key] = plan
        return plan

    def _build(self, refs: Sequence[tuple[str, str]], where: str) -> ReadPlan:
        reg = self.registry
        by_view: dict[str, list[tuple[int, str]]] = {}
        for i, (view_name, feature) in enumerate(refs):
            try:
                view = reg.view(view_name)
                view.feature(feature)
            except NotFound as exc:
                raise NotFound(f"{where}[{i}]: {exc.message}") from None
            if not view.online:
                raise InvalidArgument(f"{where}[{i}]", f"feature view {view_name} is offline only")
            by_view.setdefault(view_name, []).append((i, feature))
        entities = {reg.views[v].entity for v in by_view}
        if len(entities) != 1:
            raise InvalidArgument(
                where, f"views of several entities ({', '.join(sorted(entities))}) in one read"
            )
        fields: list[bytes] = []
        views: list[ViewRead] = []
        names: list[tuple[str, bytes]] = []
        for view_name, wanted in by_view.items():
            slots = []
            for column, feature in wanted:
                slots.append((column, len(fields)))
                fields.append(codec.field_id(view_name, feature))
                names.append((f"{view_name}:{feature}", fields[-1]))
            ts_index = len(fields)
            fields.append(codec.ts_field(view_name))
            names.append((f"_ts:{view_name}", fields[-1]))
            ttl_us = reg.views[view_name].ttl_s * 1_000_000
            views.append(ViewRead(view_name, ttl_us, ts_index, tuple(slots)))
        entity = next(iter(entities))
        codec.check_unique_fields(entity, names)
        ref_protos = tuple(common_pb2.FeatureRef(feature_view=v, name=f) for v, f in refs)
        return ReadPlan(
            entity=entity,
            refs=ref_protos,
            fields=tuple(fields),
            views=tuple(views),
            header=feature_pb2.GetOnlineFeaturesResponse(features=ref_protos).SerializeToString(),
        )


def now_us() -> int:
    return time.time_ns() // 1000


# The read path writes the response's wire format directly: the stored bytes *are* the
# serialized ``Value`` messages, so a cell is ``value`` + ``status`` + ``event_time`` by
# concatenation, and one C-level parse (``FromString``) yields the message. Building it
# field by field through the Python API cost ~1.8 µs per value (1.9 ms for 50 x 20 values,
# ``llmops bench features``); concatenation costs a fraction of that. Field numbers below
# are FeatureValue's (value = 1, status = 2, event_time = 3), FeatureRow's (entity_key = 1,
# values = 2) and GetOnlineFeaturesResponse's (features = 1, rows = 2); Timestamp's are
# seconds = 1, nanos = 2. tests/integration/test_feature_online.py checks the result.


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [_encode_varint(n) for n in range(16384)]


def _varint(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else _encode_varint(n)


def _status(status: int) -> bytes:
    return b"\x10" + _varint(status)


_NOT_FOUND_CELL = _status(NOT_FOUND)
_PRESENT = _status(PRESENT)
_OUTSIDE = _status(OUTSIDE_MAX_AGE)


@functools.lru_cache(maxsize=65536)  # event times repeat: a view is pushed in batches
def _event_time(ts_us: int) -> bytes:
    """``event_time`` (field 3) holding a Timestamp of ``ts_us``."""
    seconds, micros = divmod(ts_us, 1_000_000)
    ts = b"\x08" + _encode_varint(seconds) if seconds else b""
    if micros:
        ts += b"\x10" + _varint(micros * 1000)
    return b"\x1a" + _varint(len(ts)) + ts


def _fill(
    cells: list[bytes], vr: ViewRead, raw: list[Any], now: int, counts: dict[tuple[str, int], int]
) -> None:
    """Put one view's cells (serialized FeatureValues) into ``cells``; count statuses."""
    ts_raw = raw[vr.ts_index]
    if ts_raw is None:  # cells start as NOT_FOUND
        key = (vr.view, NOT_FOUND)
        counts[key] = counts.get(key, 0) + len(vr.slots)
        return
    ts = int(ts_raw)
    stamp = _event_time(ts)
    fresh = vr.ttl_us == 0 or now - ts <= vr.ttl_us
    found = 0
    if fresh:
        tail = _PRESENT + stamp
        small = _SMALL_VARINTS
        for column, index in vr.slots:
            blob = raw[index]
            if blob is not None:
                n = len(blob)
                cells[column] = (
                    b"\x0a" + (small[n] if n < 16384 else _encode_varint(n)) + blob + tail
                )
                found += 1
    else:
        outside = _OUTSIDE + stamp
        for column, index in vr.slots:
            if raw[index] is not None:
                cells[column] = outside
                found += 1
    status = PRESENT if fresh else OUTSIDE_MAX_AGE
    counts[(vr.view, status)] = counts.get((vr.view, status), 0) + found
    if found < len(vr.slots):
        key = (vr.view, NOT_FOUND)
        counts[key] = counts.get(key, 0) + len(vr.slots) - found


class FeatureStore:
    """Online reads and pushes over an :class:`OnlineStore` (offline store: see offline.py)."""

    def __init__(
        self,
        holder: RegistryHolder,
        online: OnlineStore,
        metrics: FeatureMetrics,
        *,
        namespace: str,
        clock_us: Callable[[], int] = now_us,
    ) -> None:
        self.holder = holder
        self.online = online
        self.metrics = metrics
        self.namespace = namespace
        self._clock_us = clock_us

    # -- reads ----------------------------------------------------------------------------

    def _plan(
        self, which: str | None, service: str, refs: Sequence[common_pb2.FeatureRef]
    ) -> ReadPlan:
        if which == "feature_service":
            return self.holder.plan_for_service(service)
        if which == "feature_refs":
            return self.holder.plan_for_refs(refs)
        raise InvalidArgument("features", "set feature_refs or feature_service")

    async def get_online(
        self, request: feature_pb2.GetOnlineFeaturesRequest
    ) -> feature_pb2.GetOnlineFeaturesResponse:
        plan = self._plan(
            request.WhichOneof("features"), request.feature_service, request.feature_refs.refs
        )
        keys = request.entity_keys
        if not keys:
            raise InvalidArgument("entity_keys", "name at least one entity key")
        if len(keys) > MAX_KEYS:
            raise InvalidArgument("entity_keys", f"at most {MAX_KEYS} keys per call")
        entity = self.holder.registry.entities[plan.entity]
        prefix = f"{self.namespace}:{plan.entity}:"
        records = [
            prefix + codec.key_text(entity, key, f"entity_keys[{i}]") for i, key in enumerate(keys)
        ]
        raw_rows = await self.online.read(records, plan.fields)
        now = self._clock_us()
        counts: dict[tuple[str, int], int] = {}
        parts = [plan.header]
        for key, raw in zip(keys, raw_rows, strict=True):
            cells = [_NOT_FOUND_CELL] * len(plan.refs)
            for vr in plan.views:
                _fill(cells, vr, raw, now, counts)
            key_bytes = key.SerializeToString()
            body = b"".join(
                [b"\x0a", _varint(len(key_bytes)), key_bytes]
                + [b"\x12" + _varint(len(c)) + c for c in cells]
            )
            parts += (b"\x12", _varint(len(body)), body)
        for (view, status), n in counts.items():
            self.metrics.count(view, status, n)
        return feature_pb2.GetOnlineFeaturesResponse.FromString(b"".join(parts))

    # -- writes ---------------------------------------------------------------------------

    def validate_push(
        self, request: feature_pb2.PushFeaturesRequest
    ) -> tuple[ViewDef, list[PushRow]]:
        """Check every row before anything is written."""
        reg = self.holder.registry
        try:
            view = reg.view(request.feature_view)
        except NotFound:
            raise NotFound(
                f"feature_view: feature view {request.feature_view!r} does not exist"
            ) from None
        entity = reg.entities[view.entity]
        if not request.rows:
            raise InvalidArgument("rows", "push at least one row")
        if len(request.rows) > MAX_PUSH_ROWS:
            raise InvalidArgument("rows", f"at most {MAX_PUSH_ROWS} rows per call")
        rows = []
        for i, row in enumerate(request.rows):
            where = f"rows[{i}]"
            text = codec.key_text(entity, row.entity_key, f"{where}.entity_key")
            if not row.HasField("event_time"):
                raise InvalidArgument(f"{where}.event_time", "required")
            if not row.values:
                raise InvalidArgument(f"{where}.values", "set at least one feature")
            values: dict[str, common_pb2.Value] = {}
            for name, value in row.values.items():
                feature = view.by_name.get(name)
                if feature is None:
                    raise InvalidArgument(
                        f'{where}.values["{name}"]', f"{view.name} has no feature {name!r}"
                    )
                codec.check_value(feature, value, f'{where}.values["{name}"]')
                values[name] = value
            ts = row.event_time.seconds * 1_000_000 + row.event_time.nanos // 1000
            rows.append(PushRow(text, ts, values, row.entity_key))
        return view, rows

    def expire_s(self, view: ViewDef) -> int | None:
        """Expiry of an entity's record: the entity's online_ttl, else its longest view TTL
        (None when a view has no TTL: such records stay until deleted)."""
        reg = self.holder.registry
        entity = reg.entities[view.entity]
        if entity.online_ttl_s is not None:
            return entity.online_ttl_s or None
        ttls = [v.ttl_s for v in reg.views.values() if v.entity == entity.name and v.online]
        return None if not ttls or 0 in ttls else max(ttls)

    async def write_online(
        self, view: ViewDef, rows: Sequence[tuple[str, int, dict[str, common_pb2.Value]]]
    ) -> tuple[int, int]:
        """Write validated rows to the online store: (written, stale)."""
        prefix = f"{self.namespace}:{view.entity}:"
        ts_field = codec.ts_field(view.name)
        expire = self.expire_s(view)
        writes = [
            RecordWrite(
                record=prefix + text,
                ts_field=ts_field,
                event_time_us=ts,
                values={
                    codec.field_id(view.name, n): v.SerializeToString() for n, v in values.items()
                },
                expire_s=expire,
            )
            for text, ts, values in rows
        ]
        applied = await self.online.write(writes)
        written = sum(applied)
        if written:
            newest = max(w.event_time_us for w, ok in zip(writes, applied, strict=True) if ok)
            await self.online.set_meta_max(
                view.name, {"newest_event_us": newest, "last_push_us": self._clock_us()}
            )
        self.metrics.pushed.labels(view.name, "online").inc(written)
        if written < len(writes):
            self.metrics.stale.labels(view.name).inc(len(writes) - written)
        return written, len(writes) - written

    async def freshness(self, names: Sequence[str]) -> list[feature_pb2.ViewFreshness]:
        reg = self.holder.registry
        views = [reg.view(n) for n in names] or [v for v in reg.views.values() if v.online]
        metas = await self.online.read_meta([v.name for v in views])
        now = self._clock_us()
        out = []
        for view, meta in zip(views, metas, strict=True):
            fresh = feature_pb2.ViewFreshness(feature_view=view.name)
            fresh.ttl.FromSeconds(view.ttl_s)
            if "materialized_until_us" in meta:
                fresh.materialized_until.FromMicroseconds(meta["materialized_until_us"])
            if "last_push_us" in meta:
                fresh.last_push_time.FromMicroseconds(meta["last_push_us"])
            if "newest_event_us" in meta:
                newest = meta["newest_event_us"]
                fresh.newest_event_time.FromMicroseconds(newest)
                fresh.lag.FromMicroseconds(max(0, now - newest))
                fresh.stale = view.ttl_s > 0 and now - newest > view.ttl_s * 1_000_000
            out.append(fresh)
        return out
