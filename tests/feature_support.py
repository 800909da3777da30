"""Builders shared by the feature-service tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry

from llmops.v1 import common_pb2, feature_pb2
from services.feature.domain import FeatureMetrics, FeatureStore, OfflineBackend, now_us
from services.feature.online import OnlineStore
from services.feature.registry import Registry, fixed_registry

T0_US = 1_790_000_000_000_000  # 2026-09-21, a fixed "now" for tests with a fake clock


def value(v: Any) -> common_pb2.Value:
    """A Value from a Python object (int, float, str, bool, bytes, datetime, lists)."""
    if v is None:
        return common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(v, bool):
        return common_pb2.Value(bool_value=v)
    if isinstance(v, int):
        return common_pb2.Value(int64_value=v)
    if isinstance(v, float):
        return common_pb2.Value(double_value=v)
    if isinstance(v, str):
        return common_pb2.Value(string_value=v)
    if isinstance(v, bytes):
        return common_pb2.Value(bytes_value=v)
    if isinstance(v, datetime):
        out = common_pb2.Value()
        out.timestamp_value.FromDatetime(v)
        return out
    if isinstance(v, tuple):  # a tuple of floats is a FLOAT_VECTOR
        return common_pb2.Value(float_vector_value=common_pb2.FloatVector(values=list(v)))
    if isinstance(v, list) and v and isinstance(v[0], str):
        return common_pb2.Value(string_list_value=common_pb2.StringList(values=v))
    if isinstance(v, list) and v and isinstance(v[0], float):
        return common_pb2.Value(double_list_value=common_pb2.DoubleList(values=v))
    if isinstance(v, list):
        return common_pb2.Value(int64_list_value=common_pb2.Int64List(values=v))
    raise TypeError(type(v))


def python(v: common_pb2.Value) -> Any:
    """The inverse of :func:`value` (for assertions)."""
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "timestamp_value":
        return v.timestamp_value.ToDatetime(tzinfo=UTC)
    inner = getattr(v, kind)
    if kind == "float_vector_value":
        return tuple(inner.values)
    if kind.endswith("_list_value"):
        return list(inner.values)
    return inner


def property_key(pid: int) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(
        entity="property",
        columns=[common_pb2.KeyColumn(name="property_id", value=value(pid))],
    )


def user_key(uid: str) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(
        entity="user", columns=[common_pb2.KeyColumn(name="user_id", value=value(uid))]
    )


def push_request(
    view: str,
    rows: list[tuple[common_pb2.EntityKey, int, dict[str, Any]]],
    target: int = feature_pb2.PUSH_TARGET_ONLINE,
) -> feature_pb2.PushFeaturesRequest:
    request = feature_pb2.PushFeaturesRequest(feature_view=view, target=target)
    for key, ts_us, values in rows:
        row = request.rows.add()
        row.entity_key.CopyFrom(key)
        row.event_time.FromMicroseconds(ts_us)
        for name, v in values.items():
            row.values[name].CopyFrom(value(v))
    return request


def refs(*texts: str) -> feature_pb2.GetOnlineFeaturesRequest:
    request = feature_pb2.GetOnlineFeaturesRequest()
    for text in texts:
        view, _, name = text.partition(":")
        request.feature_refs.refs.add(feature_view=view, name=name)
    return request


class NoOffline:
    """An offline store for tests that must not reach one."""

    async def write(self, *args: Any) -> int:
        raise AssertionError("the offline store is not used here")

    def latest(self, *args: Any) -> Any:
        raise AssertionError("the offline store is not used here")

    async def point_in_time(self, *args: Any) -> Any:
        raise AssertionError("the offline store is not used here")


def feature_store(
    registry: Registry,
    online: OnlineStore,
    offline: OfflineBackend | None = None,
    *,
    namespace: str = "t",
    metrics: CollectorRegistry | None = None,
    clock_us: Callable[[], int] = now_us,
) -> FeatureStore:
    """The domain over ``registry`` (never reloaded) and the given stores."""
    return FeatureStore(
        fixed_registry(registry),
        online,
        offline or NoOffline(),
        FeatureMetrics(metrics or CollectorRegistry()),
        namespace=namespace,
        clock_us=clock_us,
    )
