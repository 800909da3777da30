"""The feature store's behaviour, free of gRPC: the registry in force, online reads, pushes,
freshness, materialization and point-in-time retrieval.

The servicer converts requests into the arguments here and the results (:mod:`model`) into
responses; every decision is taken here: what a request names (checked against the
registry), each value's status (TTL), which store a push goes to, materialization windows
and watermarks. The stores sit behind protocols — :class:`~services.feature.online.
OnlineStore` and :class:`OfflineBackend` — and never see this object.

The online read is the hot path (a storefront ranking call makes one per request): the
requested refs or feature service resolve to a read plan once per registry
(:mod:`plans`); a request then costs one key validation per entity, one pipelined round
trip to the online store and one pass deciding each view's status per key. The values stay
the stored bytes: the servicer writes them straight into the response's wire format
(:mod:`wire`), which costs less than any intermediate object per value.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2
from llmops.yamlfiles import HotReload
from services.feature import codec
from services.feature.model import (
    Cell,
    EntitySource,
    Freshness,
    Historical,
    HistoricalRow,
    Materialized,
    OnlineRows,
    PointInTimeRow,
    PushResult,
    PushRow,
    PushTarget,
    ReadPlan,
    RegistryReload,
    RowInput,
    Status,
    ViewState,
)
from services.feature.online import OnlineStore, RecordWrite
from services.feature.plans import PlanCache
from services.feature.registry import EntityDef, FeatureDef, Registry, ServiceDef, ViewDef

log = structlog.get_logger("llmops.feature")

MAX_KEYS = 1000
MAX_PUSH_ROWS = 10_000
MAX_ENTITY_ROWS = 100_000
PRESENT = Status.PRESENT
NOT_FOUND = Status.NOT_FOUND
OUTSIDE_MAX_AGE = Status.OUTSIDE_MAX_AGE
_ABSENT: ViewState = (NOT_FOUND, 0)


class OfflineBackend(Protocol):
    """Where pushed rows are kept for training and backfills (offline.py: ClickHouse)."""

    async def write(self, view: ViewDef, entity: EntityDef, rows: Sequence[PushRow]) -> int:
        """Append validated rows; the number written."""
        ...

    def latest(
        self, view: ViewDef, entity: EntityDef, start_us: int, end_us: int
    ) -> AsyncIterator[list[PushRow]]:
        """The latest row per key with an event time in [start_us, end_us), in chunks."""
        ...

    async def point_in_time(
        self,
        entity: EntityDef,
        views: Sequence[tuple[ViewDef, Sequence[FeatureDef]]],
        entities: EntitySource,
    ) -> list[PointInTimeRow]:
        """Per entity row, each view's newest row at or before the row's time."""
        ...


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
        self._children: dict[tuple[str, Status], Any] = {}

    def count(self, view: str, status: Status, n: int) -> None:
        """Add ``n`` values of ``status`` (label children cached: no lookup per call)."""
        child = self._children.get((view, status))
        if child is None:
            child = self._children[(view, status)] = self.values.labels(view, status.name)
        child.inc(n)


def now_us() -> int:
    return time.time_ns() // 1000


class FeatureStore:
    """The feature service's domain over its registry, online store and offline store."""

    def __init__(
        self,
        registry: HotReload[Registry],
        online: OnlineStore,
        offline: OfflineBackend,
        metrics: FeatureMetrics,
        *,
        namespace: str,
        clock_us: Callable[[], int] = now_us,
    ) -> None:
        self.registry = registry
        self.online = online
        self.offline = offline
        self.metrics = metrics
        self.namespace = namespace
        self.plans = PlanCache()
        self._clock_us = clock_us

    # -- registry -------------------------------------------------------------------------

    def views(self, entity: str = "") -> list[ViewDef]:
        """Every view, or those of ``entity`` (NOT_FOUND if it does not exist), by name."""
        reg = self.registry.current
        if entity:
            reg.entity(entity)
        return [
            reg.views[n] for n in sorted(reg.views) if not entity or reg.views[n].entity == entity
        ]

    def view(self, name: str) -> tuple[ViewDef, EntityDef]:
        if not name:
            raise InvalidArgument("name", "required")
        reg = self.registry.current
        view = reg.view(name)
        return view, reg.entities[view.entity]

    def services(self) -> list[ServiceDef]:
        reg = self.registry.current
        return [reg.services[n] for n in sorted(reg.services)]

    async def reload_registry(self, *, dry_run: bool = False) -> RegistryReload:
        """Load the registry files; swap them in if they validate, unless ``dry_run``.

        Files that do not validate raise (INVALID_ARGUMENT naming file, object and field)
        and the registry in force stays.
        """
        outcome = await self.registry.reload(dry_run=dry_run)
        candidate = outcome.candidate
        changed = outcome.previous.changed_views(candidate)
        if outcome.applied:
            log.info("registry_changed_views", revision=outcome.revision, changed_views=changed)
        return RegistryReload(
            previous_revision=outcome.previous_revision,
            revision=outcome.revision,
            candidate_revision=outcome.candidate_revision,
            feature_views=len(candidate.views),
            feature_services=len(candidate.services),
            entities=len(candidate.entities),
            changed_views=changed,
            applied=outcome.applied,
        )

    # -- online reads ---------------------------------------------------------------------

    def _plan(
        self, reg: Registry, service: str | None, refs: tuple[tuple[str, str], ...] | None
    ) -> ReadPlan:
        if service is not None:
            return self.plans.for_service(reg, service)
        if refs is not None:
            return self.plans.for_refs(reg, refs)
        raise InvalidArgument("features", "set feature_refs or feature_service")

    async def read_online(
        self,
        service: str | None,
        refs: tuple[tuple[str, str], ...] | None,
        keys: Sequence[common_pb2.EntityKey],
    ) -> OnlineRows:
        """The features of a feature service (or of ``refs``: (view, feature) pairs) for
        ``keys``, with each view's status per key."""
        reg = self.registry.current
        plan = self._plan(reg, service, refs)
        if not keys:
            raise InvalidArgument("entity_keys", "name at least one entity key")
        if len(keys) > MAX_KEYS:
            raise InvalidArgument("entity_keys", f"at most {MAX_KEYS} keys per call")
        entity = reg.entities[plan.entity]
        prefix = f"{self.namespace}:{plan.entity}:"
        records = [
            prefix + codec.key_text(entity, key, f"entity_keys[{i}]") for i, key in enumerate(keys)
        ]
        stored = await self.online.read(records, plan.fields)
        now = self._clock_us()
        counts: dict[tuple[str, Status], int] = {}
        get = counts.get
        states: list[list[ViewState]] = []
        for raw in stored:
            row: list[ViewState] = []
            for vr in plan.views:
                width = len(vr.slots)
                ts_raw = raw[vr.ts_index]
                if ts_raw is None:
                    row.append(_ABSENT)
                    counts[(vr.view, NOT_FOUND)] = get((vr.view, NOT_FOUND), 0) + width
                    continue
                ts = int(ts_raw)
                status = PRESENT if vr.ttl_us == 0 or now - ts <= vr.ttl_us else OUTSIDE_MAX_AGE
                row.append((status, ts))
                missing = raw[vr.ts_index - width : vr.ts_index].count(None)
                counts[(vr.view, status)] = get((vr.view, status), 0) + width - missing
                if missing:
                    counts[(vr.view, NOT_FOUND)] = get((vr.view, NOT_FOUND), 0) + missing
            states.append(row)
        for (view, status), n in counts.items():
            self.metrics.count(view, status, n)
        return OnlineRows(plan, stored, states)

    # -- writes ---------------------------------------------------------------------------

    def validate_push(
        self, view_name: str, rows: Sequence[RowInput], reg: Registry | None = None
    ) -> tuple[ViewDef, list[PushRow]]:
        """Check every row before anything is written."""
        reg = reg or self.registry.current
        try:
            view = reg.view(view_name)
        except NotFound:
            raise NotFound(f"feature_view: feature view {view_name!r} does not exist") from None
        entity = reg.entities[view.entity]
        if not rows:
            raise InvalidArgument("rows", "push at least one row")
        if len(rows) > MAX_PUSH_ROWS:
            raise InvalidArgument("rows", f"at most {MAX_PUSH_ROWS} rows per call")
        out = []
        for i, row in enumerate(rows):
            where = f"rows[{i}]"
            text = codec.key_text(entity, row.key, f"{where}.entity_key")
            if row.event_time_us is None:
                raise InvalidArgument(f"{where}.event_time", "required")
            if not row.values:
                raise InvalidArgument(f"{where}.values", "set at least one feature")
            for name, value in row.values.items():
                feature = view.by_name.get(name)
                if feature is None:
                    raise InvalidArgument(
                        f'{where}.values["{name}"]', f"{view.name} has no feature {name!r}"
                    )
                codec.check_value(feature, value, f'{where}.values["{name}"]')
            out.append(PushRow(text, row.event_time_us, dict(row.values), row.key))
        return view, out

    async def push(
        self, view_name: str, rows: Sequence[RowInput], target: PushTarget
    ) -> PushResult:
        """Validate every row, then write them offline (the record of truth the online store
        can be rebuilt from) and online (write-if-newer), as ``target`` says."""
        reg = self.registry.current
        view, valid = self.validate_push(view_name, rows, reg)
        if target.online and not view.online:
            raise InvalidArgument("target", f"feature view {view.name} is offline only")
        offline = online = stale = 0
        if target.offline:
            offline = await self.offline.write(view, reg.entities[view.entity], valid)
            self.metrics.pushed.labels(view.name, "offline").inc(offline)
        if target.online:
            online, stale = await self._write_online(reg, view, valid)
        return PushResult(offline_rows=offline, online_rows=online, stale_rows=stale)

    @staticmethod
    def _expire_s(reg: Registry, view: ViewDef) -> int | None:
        """Expiry of an entity's record: the entity's online_ttl, else its longest view TTL
        (None when a view has no TTL: such records stay until deleted)."""
        entity = reg.entities[view.entity]
        if entity.online_ttl_s is not None:
            return entity.online_ttl_s or None
        ttls = [v.ttl_s for v in reg.views.values() if v.entity == entity.name and v.online]
        return None if not ttls or 0 in ttls else max(ttls)

    async def _write_online(
        self, reg: Registry, view: ViewDef, rows: Sequence[PushRow]
    ) -> tuple[int, int]:
        """Write validated rows to the online store: (written, stale)."""
        prefix = f"{self.namespace}:{view.entity}:"
        ts_field = codec.ts_field(view.name)
        expire = self._expire_s(reg, view)
        writes = [
            RecordWrite(
                record=prefix + row.key_text,
                ts_field=ts_field,
                event_time_us=row.event_time_us,
                values={
                    codec.field_id(view.name, n): v.SerializeToString()
                    for n, v in row.values.items()
                },
                expire_s=expire,
            )
            for row in rows
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

    # -- freshness ------------------------------------------------------------------------

    async def freshness(self, names: Sequence[str]) -> list[Freshness]:
        """Per view (every online view when ``names`` is empty): watermarks, lag, staleness."""
        reg = self.registry.current
        views = [reg.view(n) for n in names] or [v for v in reg.views.values() if v.online]
        metas = await self.online.read_meta([v.name for v in views])
        now = self._clock_us()
        out = []
        for view, meta in zip(views, metas, strict=True):
            newest = meta.get("newest_event_us")
            out.append(
                Freshness(
                    view=view.name,
                    ttl_s=view.ttl_s,
                    materialized_until_us=meta.get("materialized_until_us"),
                    last_push_us=meta.get("last_push_us"),
                    newest_event_us=newest,
                    lag_us=None if newest is None else max(0, now - newest),
                    stale=newest is not None
                    and view.ttl_s > 0
                    and now - newest > view.ttl_s * 1_000_000,
                )
            )
        return out

    # -- offline --------------------------------------------------------------------------

    async def materialize(
        self, names: Sequence[str], start_us: int | None, end_us: int | None
    ) -> list[Materialized]:
        """Latest value per key in the window -> online store (write-if-newer), per view
        (every online view when ``names`` is empty).

        Without ``start_us`` a view resumes from its watermark (``materialized_until``),
        which rises to the window's end once the view is done; without ``end_us`` the window
        ends now. A cut-short run is safe to repeat (writes are idempotent).
        """
        reg = self.registry.current
        names = list(names) or [n for n, v in reg.views.items() if v.online]
        views = []
        for i, name in enumerate(names):
            try:
                view = reg.view(name)
            except NotFound as exc:
                raise NotFound(f"feature_views[{i}]: {exc.message}") from None
            if not view.online:
                raise InvalidArgument(f"feature_views[{i}]", f"{name} is offline only")
            views.append(view)
        end = self._clock_us() if end_us is None else end_us
        metas = await self.online.read_meta([v.name for v in views])
        results = []
        for view, meta in zip(views, metas, strict=True):
            t0 = time.perf_counter()
            start = meta.get("materialized_until_us", 0) if start_us is None else start_us
            if start > end:
                raise InvalidArgument("window", "start_time is after end_time")
            written = 0
            async for chunk in self.offline.latest(view, reg.entities[view.entity], start, end):
                written += (await self._write_online(reg, view, chunk))[0]
            await self.online.set_meta_max(view.name, {"materialized_until_us": end})
            results.append(Materialized(view.name, written, end, time.perf_counter() - t0))
            log.info("materialized", view=view.name, rows=written, start_us=start, end_us=end)
        return results

    async def historical(
        self,
        service: str | None,
        refs: tuple[tuple[str, str], ...] | None,
        entities: EntitySource | None,
    ) -> Historical:
        """Point-in-time retrieval: per entity row, each feature as it was at the row's time
        (the newest offline value at or before it; OUTSIDE_MAX_AGE past the view's TTL)."""
        reg = self.registry.current
        wanted = self._historical_refs(reg, service, refs)
        entity_names = {reg.views[v].entity for v, _ in wanted}
        if len(entity_names) != 1:
            raise InvalidArgument("features", "views of several entities in one retrieval")
        entity = reg.entities[entity_names.pop()]
        by_view: dict[str, list[int]] = {}
        for column, (view_name, _) in enumerate(wanted):
            by_view.setdefault(view_name, []).append(column)
        views = [
            (reg.views[v], [reg.views[v].by_name[wanted[c][1]] for c in columns])
            for v, columns in by_view.items()
        ]
        found = await self.offline.point_in_time(entity, views, _entity_rows(entity, entities))
        layout = [(view.ttl_s * 1_000_000, by_view[view.name]) for view, _ in views]
        return Historical(wanted, [_as_of(row, layout, len(wanted)) for row in found])

    @staticmethod
    def _historical_refs(
        reg: Registry, service: str | None, refs: tuple[tuple[str, str], ...] | None
    ) -> tuple[tuple[str, str], ...]:
        if service is not None:
            return reg.service(service).refs
        if not refs:
            raise InvalidArgument("features", "set feature_refs or feature_service")
        for i, (view, feature) in enumerate(refs):
            try:
                reg.view(view).feature(feature)
            except NotFound as exc:
                raise NotFound(f"feature_refs[{i}]: {exc.message}") from None
        return refs


def _entity_rows(entity: EntityDef, entities: EntitySource | None) -> EntitySource:
    """Inline entity rows checked (keys of ``entity``, a time each); a table name as is."""
    if isinstance(entities, str):
        return entities
    if not entities:
        raise InvalidArgument("entities", "set entity_rows (at least one) or entity_table")
    if len(entities) > MAX_ENTITY_ROWS:
        raise InvalidArgument("entity_rows", f"at most {MAX_ENTITY_ROWS} rows inline")
    for i, row in enumerate(entities):
        codec.key_text(entity, row.key, f"entity_rows.rows[{i}].entity_key")
        if row.event_time_us is None:
            raise InvalidArgument(f"entity_rows.rows[{i}].event_time", "required")
    return entities


def _as_of(
    row: PointInTimeRow, layout: Sequence[tuple[int, list[int]]], width: int
) -> HistoricalRow:
    """One retrieval row: each view's values PRESENT within its TTL (``layout``: per view,
    TTL µs and the response columns of its features)."""
    cells: list[Cell] = [_NO_CELL] * width
    for found, (ttl_us, columns) in zip(row.views, layout, strict=True):
        ts = found.event_time_us
        if ts is None:
            continue
        if ttl_us and row.event_time_us - ts > ttl_us:
            outside = Cell(OUTSIDE_MAX_AGE, None, ts)
            for c in columns:
                cells[c] = outside
            continue
        for c, value in zip(columns, found.values, strict=True):
            cells[c] = Cell(PRESENT, value, ts)
    return HistoricalRow(row.key, row.event_time_us, cells)


_NO_CELL = Cell(NOT_FOUND, None, None)
