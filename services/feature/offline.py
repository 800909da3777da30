"""The offline store: one ClickHouse table per feature view (its ``source``).

Table shape (created by the service when missing; a pipeline may also fill it directly)::

    <join keys typed>, event_timestamp DateTime64(6, 'UTC'), created_timestamp ...,
    <features: Nullable scalars; arrays and vectors as Array(...), empty for null>
    ENGINE = ReplacingMergeTree(created_timestamp)
    PARTITION BY toYYYYMM(event_timestamp) ORDER BY (<join keys>, event_timestamp)

This is a backend of the domain (:class:`services.feature.domain.OfflineBackend`): it
stores and queries; the domain validates requests, decides statuses and writes what
:meth:`OfflineStore.latest` yields to the online store (materialization).

ReplacingMergeTree keyed by (key, event time): a row pushed again for the same key and time
(a replayed stream) replaces the earlier one on merge, the latest push winning.

Point-in-time retrieval is one ClickHouse query: the entity rows ASOF LEFT JOIN each view
on the join keys and ``entity.event_timestamp >= view.event_timestamp`` (the newest value
at or before the row's time: nothing from the future leaks in); the domain then reports a
value older than the view's TTL at the row's time as OUTSIDE_MAX_AGE. Inline entity rows go
to a temporary Memory table first. chdb and the server backend run the same SQL (ASOF JOIN
needs ClickHouse >= 19.x, so not Debian's 18.16).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.sql import identifier
from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2
from services.feature import codec
from services.feature.model import AsOf, EntitySource, PointInTimeRow, PushRow
from services.feature.registry import EntityDef, FeatureDef, Registry, ViewDef

MATERIALIZE_CHUNK = 5000
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

    async def latest(
        self, view: ViewDef, entity: EntityDef, start_us: int, end_us: int
    ) -> AsyncIterator[list[PushRow]]:
        """The latest row per key with an event time in [start_us, end_us), in chunks of
        :data:`MATERIALIZE_CHUNK` rows (a feature that is null offline is left out)."""
        rows = await asyncio.to_thread(self._latest, view, entity, start_us, end_us)
        for start in range(0, len(rows), MATERIALIZE_CHUNK):
            chunk = []
            for r in rows[start : start + MATERIALIZE_CHUNK]:
                key = _entity_key(r, entity)
                values = {
                    f.name: _value(r[f.name], f)
                    for f in view.features
                    if not (r[f.name] is None or r[f.name] == [])
                }
                if values:
                    text = codec.key_text(entity, key, "row")
                    chunk.append(PushRow(text, _us(r["event_timestamp"]), values, key))
            yield chunk

    # -- point in time ------------------------------------------------------------------------

    async def point_in_time(
        self,
        entity: EntityDef,
        views: Sequence[tuple[ViewDef, Sequence[FeatureDef]]],
        entities: EntitySource,
    ) -> list[PointInTimeRow]:
        """Per entity row, each view's newest row at or before the entity row's time (ASOF
        JOIN); ``entities`` are validated rows, or a table holding them."""
        return await asyncio.to_thread(self._point_in_time, entity, views, entities)

    def _entity_table(self, entity: EntityDef, entities: EntitySource) -> tuple[str, bool]:
        """(table holding the entity rows, whether it is a temporary one to drop)."""
        if isinstance(entities, str):
            try:
                return identifier(entities), False
            except ValueError as exc:
                raise InvalidArgument("entity_table", str(exc)) from None
        columns: dict[str, list[Any]] = {j.name: [] for j in entity.join_keys}
        columns["event_timestamp"] = []
        for row in entities:
            for c, join in zip(row.key.columns, entity.join_keys, strict=True):
                columns[join.name].append(_key_python(c.value))
            columns["event_timestamp"].append(np.datetime64(row.event_time_us, "us"))
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

    def _point_in_time(
        self,
        entity: EntityDef,
        views: Sequence[tuple[ViewDef, Sequence[FeatureDef]]],
        entities: EntitySource,
    ) -> list[PointInTimeRow]:
        for view, _ in views:
            self._ensure(view, entity)
        table, temporary = self._entity_table(entity, entities)
        try:
            keys = [identifier(j.name) for j in entity.join_keys]
            select = [f"e.{k} AS {k}" for k in keys] + ["e.event_timestamp AS event_timestamp"]
            joins = []
            for n, (view, features) in enumerate(views):
                alias = f"v{n}"
                select.append(f"{alias}.event_timestamp AS ts_{n}")
                select += [
                    f"{alias}.{identifier(f.name)} AS c{n}_{i}" for i, f in enumerate(features)
                ]
                on = " AND ".join(f"e.{k} = {alias}.{k}" for k in keys)
                joins.append(
                    f"ASOF LEFT JOIN {identifier(view.source)} AS {alias} "
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
        out = []
        for r in result:
            found = []
            for n, (_view, features) in enumerate(views):
                ts = r[f"ts_{n}"]
                if ts is None:
                    found.append(_NO_ROW)
                else:
                    values = [_value(r[f"c{n}_{i}"], f) for i, f in enumerate(features)]
                    found.append(AsOf(_us(ts), values))
            out.append(PointInTimeRow(_entity_key(r, entity), _us(r["event_timestamp"]), found))
        return out


_NO_ROW = AsOf(None, ())


def _entity_key(row: dict[str, Any], entity: EntityDef) -> common_pb2.EntityKey:
    """The entity key of an offline row (its join-key columns)."""
    key = common_pb2.EntityKey(entity=entity.name)
    for join in entity.join_keys:
        raw = row[join.name]
        if join.type == "BYTES":
            value = common_pb2.Value(bytes_value=bytes.fromhex(raw))
        else:
            value = _value(raw, FeatureDef(join.name, join.type, None, "", {}))
        key.columns.add(name=join.name, value=value)
    return key
