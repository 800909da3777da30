"""The offline store: one ClickHouse table per feature view (its ``source``).

Table shape (created by the service when missing; a pipeline may also fill it directly)::

    <join keys typed>, event_timestamp DateTime64(6, 'UTC'), created_timestamp ...,
    <features: Nullable scalars; arrays and vectors as Array(...), empty for null>
    ENGINE = ReplacingMergeTree(created_timestamp)
    PARTITION BY toYYYYMM(event_timestamp) ORDER BY (<join keys>, event_timestamp)

ReplacingMergeTree keyed by (key, event time): a row pushed again for the same key and time
(a replayed stream) replaces the earlier one on merge, the latest push winning.

Point-in-time retrieval is one ClickHouse query: the entity rows ASOF LEFT JOIN each view
on the join keys and ``entity.event_timestamp >= view.event_timestamp`` (the newest value
at or before the row's time: nothing from the future leaks in); a value older than the
view's TTL at the row's time is reported OUTSIDE_MAX_AGE. Inline entity rows go to a
temporary Memory table first. chdb and the server backend run the same SQL (ASOF JOIN
needs ClickHouse >= 19.x, so not Debian's 18.16).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from google.protobuf import struct_pb2

from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.sql import identifier
from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, feature_pb2
from services.feature import codec
from services.feature.domain import PushRow
from services.feature.registry import EntityDef, FeatureDef, Registry, ViewDef

log = structlog.get_logger("llmops.feature.offline")

MAX_ENTITY_ROWS = 100_000
STREAM_BATCH = 1000
_SCALARS = {
    "INT64": "Int64",
    "DOUBLE": "Float64",
    "STRING": "String",
    "BOOL": "Bool",
    "BYTES": "String",
    "TIMESTAMP": "DateTime64(6, 'UTC')",
}
_ARRAYS = {
    "INT64_LIST": "Array(Int64)",
    "DOUBLE_LIST": "Array(Float64)",
    "STRING_LIST": "Array(String)",
    "BOOL_LIST": "Array(Bool)",
    "FLOAT_VECTOR": "Array(Float32)",
}
_KEY_TYPES = {"INT64": "Int64", "STRING": "String", "BYTES": "String", "BOOL": "Bool"}


def column_type(feature: FeatureDef) -> str:
    if feature.type in _SCALARS:
        return f"Nullable({_SCALARS[feature.type]})"
    return _ARRAYS[feature.type]


def source_ddl(view: ViewDef, entity: EntityDef) -> str:
    keys = [f"{identifier(k.name)} {_KEY_TYPES[k.type]}" for k in entity.join_keys]
    features = [f"{identifier(f.name)} {column_type(f)}" for f in view.features]
    order = ", ".join([identifier(k.name) for k in entity.join_keys] + ["event_timestamp"])
    columns = ",\n    ".join(
        [
            *keys,
            "event_timestamp DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))",
            "created_timestamp DateTime64(6, 'UTC') DEFAULT now64(6)",
            *features,
        ]
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {identifier(view.source)}\n(\n    {columns}\n)\n"
        "ENGINE = ReplacingMergeTree(created_timestamp)\n"
        "PARTITION BY toYYYYMM(event_timestamp)\n"
        f"ORDER BY ({order})"
    )


def _python(value: common_pb2.Value, feature: FeatureDef) -> Any:
    """A Value as the Python object of its offline column (None / [] for null)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return [] if feature.type in _ARRAYS else None
    if kind == "timestamp_value":
        ts = value.timestamp_value
        return np.datetime64(ts.seconds * 1_000_000 + ts.nanos // 1000, "us")
    if kind == "bytes_value":
        return value.bytes_value.hex()
    inner = getattr(value, kind)
    if kind.endswith("_list_value") or kind == "float_vector_value":
        return list(inner.values)
    return inner


def _key_python(value: common_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind or "string_value")


def _value(raw: Any, feature: FeatureDef) -> common_pb2.Value:
    """An offline column value back to a Value (None -> explicit null)."""
    t = feature.type
    if raw is None:
        return common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if t == "INT64":
        return common_pb2.Value(int64_value=int(raw))
    if t == "DOUBLE":
        return common_pb2.Value(double_value=float(raw))
    if t == "STRING":
        return common_pb2.Value(string_value=str(raw))
    if t == "BOOL":
        return common_pb2.Value(bool_value=bool(raw))
    if t == "BYTES":
        return common_pb2.Value(bytes_value=bytes.fromhex(str(raw)))
    if t == "TIMESTAMP":
        v = common_pb2.Value()
        v.timestamp_value.FromDatetime(raw)
        return v
    if t == "INT64_LIST":
        return common_pb2.Value(int64_list_value=common_pb2.Int64List(values=raw))
    if t == "DOUBLE_LIST":
        return common_pb2.Value(double_list_value=common_pb2.DoubleList(values=raw))
    if t == "STRING_LIST":
        return common_pb2.Value(string_list_value=common_pb2.StringList(values=raw))
    if t == "BOOL_LIST":
        return common_pb2.Value(bool_list_value=common_pb2.BoolList(values=raw))
    return common_pb2.Value(float_vector_value=common_pb2.FloatVector(values=raw))


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


class OfflineStore:
    """Feature tables in ClickHouse (chdb embedded, a server in production)."""

    def __init__(self, store: ClickHouseStore | Callable[[], ClickHouseStore]) -> None:
        # A factory defers opening the store (a server connection, the chdb engine) to the
        # first offline call: online-only deployments never open it.
        self._store = store if not callable(store) else None
        self._factory = store if callable(store) else None
        self._ready: set[tuple[str, str]] = set()

    @property
    def store(self) -> ClickHouseStore:
        if self._store is None:
            assert self._factory is not None
            self._store = self._factory()
        return self._store

    # -- tables -----------------------------------------------------------------------------

    def _ensure(self, view: ViewDef, entity: EntityDef) -> None:
        key = (view.source, view.revision)
        if key not in self._ready:
            self.store.execute(source_ddl(view, entity))
            self._ready.add(key)

    async def ensure_tables(self, registry: Registry) -> None:
        for view in registry.views.values():
            await asyncio.to_thread(self._ensure, view, registry.entities[view.entity])

    # -- writes -----------------------------------------------------------------------------

    async def write(self, view: ViewDef, entity: EntityDef, rows: Sequence[PushRow]) -> int:
        return await asyncio.to_thread(self._write, view, entity, rows)

    def _write(self, view: ViewDef, entity: EntityDef, rows: Sequence[PushRow]) -> int:
        self._ensure(view, entity)
        columns: dict[str, list[Any]] = {}
        for i, join in enumerate(entity.join_keys):
            columns[join.name] = [_key_python(r.key.columns[i].value) for r in rows]
        columns["event_timestamp"] = [np.datetime64(r.event_time_us, "us") for r in rows]
        # A feature left out of a row is null offline (the online store keeps its old value).
        null = common_pb2.Value()
        for f in view.features:
            if any(f.name in r.values for r in rows):
                columns[f.name] = [_python(r.values.get(f.name, null), f) for r in rows]
        return self.store.insert(view.source, columns)

    # -- materialization ----------------------------------------------------------------------

    def _latest(self, view: ViewDef, entity: EntityDef, start_us: int, end_us: int) -> list[Any]:
        self._ensure(view, entity)
        keys = ", ".join(identifier(k.name) for k in entity.join_keys)
        feats = ", ".join(identifier(f.name) for f in view.features)
        return self.store.query(
            f"SELECT {keys}, event_timestamp, {feats} FROM {identifier(view.source)} "
            "WHERE event_timestamp >= fromUnixTimestamp64Micro(%(start)s, 'UTC') "
            "AND event_timestamp < fromUnixTimestamp64Micro(%(end)s, 'UTC') "
            f"ORDER BY {keys}, event_timestamp DESC, created_timestamp DESC LIMIT 1 BY {keys}",
            {"start": start_us, "end": end_us},
        )

    async def materialize(
        self, store: Any, request: feature_pb2.MaterializeRequest
    ) -> list[feature_pb2.MaterializeResult]:
        """Latest value per key in the window -> online store (write-if-newer), per view.

        The watermark (``materialized_until``) rises to the window's end once a view is done,
        so a run with no start resumes where the last one finished; a cut-short run is safe
        to repeat (writes are idempotent).
        """
        reg: Registry = store.holder.registry
        names = list(request.feature_views) or [n for n, v in reg.views.items() if v.online]
        views = []
        for i, name in enumerate(names):
            try:
                view = reg.view(name)
            except NotFound as exc:
                raise NotFound(f"feature_views[{i}]: {exc.message}") from None
            if not view.online:
                raise InvalidArgument(f"feature_views[{i}]", f"{name} is offline only")
            views.append(view)
        window = request.window
        end_us = window.end_time.ToMicroseconds() if window.HasField("end_time") else _now_us()
        metas = await store.online.read_meta([v.name for v in views])
        results = []
        for view, meta in zip(views, metas, strict=True):
            t0 = time.perf_counter()
            if window.HasField("start_time"):
                start_us = window.start_time.ToMicroseconds()
            else:
                start_us = meta.get("materialized_until_us", 0)
            if start_us > end_us:
                raise InvalidArgument("window", "start_time is after end_time")
            entity = reg.entities[view.entity]
            rows = await asyncio.to_thread(self._latest, view, entity, start_us, end_us)
            written = await self._write_online(store, view, entity, rows)
            await store.online.set_meta_max(view.name, {"materialized_until_us": end_us})
            result = feature_pb2.MaterializeResult(feature_view=view.name, rows_written=written)
            result.watermark.FromMicroseconds(end_us)
            result.duration.FromNanoseconds(int((time.perf_counter() - t0) * 1e9))
            results.append(result)
            log.info("materialized", view=view.name, rows=written, start_us=start_us, end_us=end_us)
        return results

    async def _write_online(
        self, store: Any, view: ViewDef, entity: EntityDef, rows: list[dict[str, Any]]
    ) -> int:
        written = 0
        for start in range(0, len(rows), 5000):
            chunk = []
            for r in rows[start : start + 5000]:
                key = common_pb2.EntityKey(entity=entity.name)
                for join in entity.join_keys:
                    raw = r[join.name]
                    value = (
                        common_pb2.Value(bytes_value=bytes.fromhex(raw))
                        if join.type == "BYTES"
                        else _value(raw, FeatureDef(join.name, join.type, None, "", {}))
                    )
                    key.columns.add(name=join.name, value=value)
                text = codec.key_text(entity, key, "row")
                values = {
                    f.name: _value(r[f.name], f)
                    for f in view.features
                    if not (r[f.name] is None or r[f.name] == [])
                }
                if values:
                    chunk.append((text, _us(r["event_timestamp"]), values))
            n, _stale = await store.write_online(view, chunk)
            written += n
        return written

    # -- point in time ------------------------------------------------------------------------

    async def historical(
        self, holder: Any, request: feature_pb2.GetHistoricalFeaturesRequest
    ) -> AsyncIterator[feature_pb2.GetHistoricalFeaturesResponse]:
        reg: Registry = holder.registry
        which = request.WhichOneof("features")
        if which == "feature_service":
            refs = list(reg.service(request.feature_service).refs)
        elif which == "feature_refs" and request.feature_refs.refs:
            refs = []
            for i, r in enumerate(request.feature_refs.refs):
                try:
                    reg.view(r.feature_view).feature(r.name)
                except NotFound as exc:
                    raise NotFound(f"feature_refs[{i}]: {exc.message}") from None
                refs.append((r.feature_view, r.name))
        else:
            raise InvalidArgument("features", "set feature_refs or feature_service")
        entity_names = {reg.views[v].entity for v, _ in refs}
        if len(entity_names) != 1:
            raise InvalidArgument("features", "views of several entities in one retrieval")
        entity = reg.entities[entity_names.pop()]
        source = request.WhichOneof("entities")
        rows = await asyncio.to_thread(self._historical, reg, entity, refs, request, source)
        features = [common_pb2.FeatureRef(feature_view=v, name=f) for v, f in refs]
        first = True
        for start in range(0, max(len(rows), 1), STREAM_BATCH):
            msg = feature_pb2.GetHistoricalFeaturesResponse(rows=rows[start : start + STREAM_BATCH])
            if first:
                msg.features.extend(features)
                first = False
            yield msg

    def _entity_table(
        self, entity: EntityDef, request: feature_pb2.GetHistoricalFeaturesRequest, source: Any
    ) -> tuple[str, bool]:
        """(table holding the entity rows, whether it is a temporary one to drop)."""
        if source == "entity_table":
            return identifier(request.entity_table), False
        if source != "entity_rows" or not request.entity_rows.rows:
            raise InvalidArgument("entities", "set entity_rows (at least one) or entity_table")
        rows = request.entity_rows.rows
        if len(rows) > MAX_ENTITY_ROWS:
            raise InvalidArgument("entity_rows", f"at most {MAX_ENTITY_ROWS} rows inline")
        columns: dict[str, list[Any]] = {j.name: [] for j in entity.join_keys}
        columns["event_timestamp"] = []
        for i, row in enumerate(rows):
            codec.key_text(entity, row.entity_key, f"entity_rows.rows[{i}].entity_key")
            if not row.HasField("event_time"):
                raise InvalidArgument(f"entity_rows.rows[{i}].event_time", "required")
            for c, join in zip(row.entity_key.columns, entity.join_keys, strict=True):
                columns[join.name].append(_key_python(c.value))
            columns["event_timestamp"].append(np.datetime64(row.event_time.ToMicroseconds(), "us"))
        table = f"_pit_{uuid.uuid4().hex[:16]}"
        keys = ", ".join(f"{identifier(j.name)} {_KEY_TYPES[j.type]}" for j in entity.join_keys)
        self.store.execute(
            f"CREATE TABLE {table} ({keys}, event_timestamp DateTime64(6, 'UTC')) ENGINE = Memory"
        )
        try:
            self.store.insert(table, columns)
        except BaseException:
            self.store.execute(f"DROP TABLE IF EXISTS {table}")
            raise
        return table, True

    def _historical(
        self,
        reg: Registry,
        entity: EntityDef,
        refs: list[tuple[str, str]],
        request: feature_pb2.GetHistoricalFeaturesRequest,
        source: Any,
    ) -> list[feature_pb2.HistoricalRow]:
        by_view: dict[str, list[int]] = {}
        for i, (v, _f) in enumerate(refs):
            by_view.setdefault(v, []).append(i)
        for v in by_view:
            self._ensure(reg.views[v], entity)
        table, temporary = self._entity_table(entity, request, source)
        try:
            keys = [identifier(j.name) for j in entity.join_keys]
            select = [f"e.{k} AS {k}" for k in keys] + ["e.event_timestamp AS event_timestamp"]
            joins = []
            for n, (v, columns) in enumerate(by_view.items()):
                alias = f"v{n}"
                select.append(f"{alias}.event_timestamp AS ts_{n}")
                select += [f"{alias}.{identifier(refs[c][1])} AS c{c}" for c in columns]
                on = " AND ".join(f"e.{k} = {alias}.{k}" for k in keys)
                joins.append(
                    f"ASOF LEFT JOIN {identifier(reg.views[v].source)} AS {alias} "
                    f"ON {on} AND e.event_timestamp >= {alias}.event_timestamp"
                )
            sql = (
                f"SELECT {', '.join(select)} FROM {table} AS e {' '.join(joins)} "
                "SETTINGS join_use_nulls = 1"
            )
            result = self.store.query(sql)
        finally:
            if temporary:
                self.store.execute(f"DROP TABLE IF EXISTS {table}")
        return [self._row(r, reg, entity, refs, by_view) for r in result]

    @staticmethod
    def _row(
        r: dict[str, Any],
        reg: Registry,
        entity: EntityDef,
        refs: list[tuple[str, str]],
        by_view: dict[str, list[int]],
    ) -> feature_pb2.HistoricalRow:
        out = feature_pb2.HistoricalRow()
        out.entity_key.entity = entity.name
        for join in entity.join_keys:
            raw = r[join.name]
            if join.type == "BYTES":
                value = common_pb2.Value(bytes_value=bytes.fromhex(raw))
            else:
                value = _value(raw, FeatureDef(join.name, join.type, None, "", {}))
            out.entity_key.columns.add(name=join.name, value=value)
        row_ts: datetime = r["event_timestamp"]
        out.event_time.FromDatetime(row_ts)
        row_us = _us(row_ts)
        for _ in refs:
            out.values.add()
        for n, (v, columns) in enumerate(by_view.items()):
            view = reg.views[v]
            ts = r[f"ts_{n}"]
            for c in columns:
                fv = out.values[c]
                if ts is None:
                    fv.status = feature_pb2.FEATURE_STATUS_NOT_FOUND
                    continue
                ts_us = _us(ts)
                fv.event_time.FromMicroseconds(ts_us)
                if view.ttl_s and row_us - ts_us > view.ttl_s * 1_000_000:
                    fv.status = feature_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE
                    continue
                fv.status = feature_pb2.FEATURE_STATUS_PRESENT
                fv.value.CopyFrom(_value(r[f"c{c}"], view.by_name[refs[c][1]]))
        return out


def _now_us() -> int:
    return time.time_ns() // 1000


def utc_from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)
