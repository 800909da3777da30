"""The online feature store's contract, run against real Redis and the embedded store.

Both stores must behave the same: typed round trips, statuses (PRESENT, NOT_FOUND,
OUTSIDE_MAX_AGE), write-if-newer, precise errors, one round trip per read. Reads and pushes
go through the servicer: the response is written in wire format (services/feature/wire.py)
and parsed back here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import feature_pb2
from services.feature.domain import FeatureStore
from services.feature.online import EmbeddedOnlineStore, OnlineStore, RedisOnlineStore
from services.feature.registry import load_registry
from services.feature.servicer import FeatureServicer
from tests.feature_support import (
    T0_US,
    feature_store,
    property_key,
    push_request,
    python,
    refs,
    user_key,
)

REGISTRY = Path(__file__).resolve().parents[2] / "deploy" / "features"
PRESENT = feature_pb2.FEATURE_STATUS_PRESENT
NOT_FOUND = feature_pb2.FEATURE_STATUS_NOT_FOUND
OUTSIDE = feature_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE


class Clock:
    def __init__(self) -> None:
        self.now_us = T0_US

    def __call__(self) -> int:
        return self.now_us


@pytest.fixture(params=["embedded", "redis"])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    yield request.param


def _open(kind: str, tmp: Path, redis_url: str | None, namespace: str) -> OnlineStore:
    if kind == "redis":
        assert redis_url
        return RedisOnlineStore(redis_url, namespace)
    return EmbeddedOnlineStore(tmp / "online.sqlite3")


@pytest.fixture
async def env(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, Any]]:
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    namespace = f"test:{uuid.uuid4().hex[:8]}"  # isolates runs sharing one Redis
    online = _open(store_kind, tmp_path, redis_url, namespace)
    clock = Clock()
    metrics = CollectorRegistry()
    store = feature_store(
        load_registry([REGISTRY]), online, namespace=namespace, metrics=metrics, clock_us=clock
    )
    yield {
        "store": store,
        "servicer": FeatureServicer(store),
        "clock": clock,
        "metrics": metrics,
        "kind": store_kind,
        "redis_url": redis_url,
        "namespace": namespace,
        "tmp": tmp_path,
    }
    await online.close()


async def push(env: dict[str, Any], request: feature_pb2.PushFeaturesRequest) -> tuple[int, int]:
    reply = await env["servicer"].PushFeatures(request, None)
    assert reply.offline_rows == 0  # the requests here push online only
    return reply.online_rows, reply.stale_rows


async def read(
    env: dict[str, Any], request: feature_pb2.GetOnlineFeaturesRequest
) -> feature_pb2.GetOnlineFeaturesResponse:
    response: feature_pb2.GetOnlineFeaturesResponse = await env["servicer"].GetOnlineFeatures(
        request, None
    )
    return response


USER = {
    "preferred_city": "Lisbon",
    "preferred_stars": 4,
    "avg_booking_value": 312.5,
    "bookings_365d": 3,
    "is_loyalty_member": True,
    "last_search_at": datetime(2026, 9, 20, 18, 30, 0, 123456, tzinfo=UTC),
    "taste_embedding": tuple(float(i) / 8 for i in range(16)),
}


async def test_typed_round_trip_every_type(env: dict[str, Any]) -> None:
    assert await push(env, push_request("user_profile", [(user_key("u-1"), T0_US, USER)])) == (
        1,
        0,
    )
    content = {
        "city": "Porto",
        "country": "PT",
        "property_type": "hotel",
        "amenities": ["wifi", "pool"],
        "has_free_cancellation": False,
        "description_length": 812,
    }
    await push(env, push_request("property_content", [(property_key(7), T0_US - 5, content)]))
    request = refs(*(f"user_profile:{k}" for k in USER))
    request.entity_keys.append(user_key("u-1"))
    row = (await read(env, request)).rows[0]
    assert [python(v.value) for v in row.values] == list(USER.values())
    assert {v.status for v in row.values} == {PRESENT}
    assert row.values[0].event_time.ToMicroseconds() == T0_US
    assert row.entity_key == user_key("u-1")
    request = refs(*(f"property_content:{k}" for k in content))
    request.entity_keys.append(property_key(7))
    resp = await read(env, request)
    assert [python(v.value) for v in resp.rows[0].values] == list(content.values())
    assert (resp.features[0].feature_view, resp.features[0].name) == ("property_content", "city")


async def test_missing_entities_and_features_are_not_found(env: dict[str, Any]) -> None:
    await push(env, push_request("property_stats", [(property_key(1), T0_US, {"stars": 4})]))
    request = refs(
        "property_stats:stars", "property_stats:review_score", "property_pricing:currency"
    )
    request.entity_keys.extend([property_key(1), property_key(2)])
    resp = await read(env, request)
    first, second = resp.rows
    assert [v.status for v in first.values] == [PRESENT, NOT_FOUND, NOT_FOUND]
    assert python(first.values[0].value) == 4
    assert [v.status for v in second.values] == [NOT_FOUND] * 3
    assert not second.values[0].HasField("event_time")
    sample = env["metrics"].get_sample_value(
        "llmops_feature_values_total", {"feature_view": "property_stats", "status": "NOT_FOUND"}
    )
    assert sample == 3


async def test_values_older_than_the_ttl_are_outside_max_age(env: dict[str, Any]) -> None:
    clock: Clock = env["clock"]
    price = {"price_tonight": 120.0, "currency": "EUR"}
    await push(env, push_request("property_pricing", [(property_key(3), T0_US, price)]))
    request = refs("property_pricing:price_tonight", "property_content:city")
    request.entity_keys.append(property_key(3))
    clock.now_us = T0_US + 3600 * 1_000_000  # exactly the 1 h TTL: still fresh
    assert (await read(env, request)).rows[0].values[0].status == PRESENT
    clock.now_us += 1
    value = (await read(env, request)).rows[0].values[0]
    assert value.status == OUTSIDE
    assert not value.HasField("value")
    assert value.event_time.ToMicroseconds() == T0_US


async def test_older_pushes_do_not_overwrite_newer_values(env: dict[str, Any]) -> None:
    key = property_key(9)
    await push(env, push_request("property_stats", [(key, T0_US, {"stars": 5})]))
    written, stale = await push(
        env,
        push_request(
            "property_stats", [(key, T0_US - 1, {"stars": 1}), (key, T0_US, {"views_7d": 10})]
        ),
    )
    assert (written, stale) == (1, 1)  # same time again is an idempotent replay: written
    request = refs("property_stats:stars", "property_stats:views_7d")
    request.entity_keys.append(key)
    assert [python(v.value) for v in (await read(env, request)).rows[0].values] == [5, 10]


async def test_feature_service_resolves_twenty_features_from_three_views(
    env: dict[str, Any],
) -> None:
    store: FeatureStore = env["store"]
    request = feature_pb2.GetOnlineFeaturesRequest(feature_service="property_ranking_v1")
    request.entity_keys.extend(property_key(i) for i in range(50))
    resp = await read(env, request)
    assert len(resp.features) == 20
    assert len(resp.rows) == 50 and all(len(r.values) == 20 for r in resp.rows)
    registry = store.registry.current
    plan = store.plans.for_service(registry, "property_ranking_v1")
    assert store.plans.for_service(registry, "property_ranking_v1") is plan  # cached


async def test_bad_requests_get_precise_errors(env: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match=r"feature_refs\[1\]: feature property_stats:nope"):
        await read(env, refs("property_stats:stars", "property_stats:nope"))
    with pytest.raises(NotFound, match="feature view 'nope'"):
        await read(env, refs("nope:x"))
    with pytest.raises(NotFound, match="feature service 'nope'"):
        await read(env, feature_pb2.GetOnlineFeaturesRequest(feature_service="nope"))
    request = refs("property_stats:stars")
    request.entity_keys.append(user_key("u-1"))
    with pytest.raises(InvalidArgument, match=r"entity_keys\[0\].entity"):
        await read(env, request)
    request = refs("property_stats:stars")
    key = property_key(1)
    key.columns[0].value.string_value = "1"
    request.entity_keys.append(key)
    with pytest.raises(InvalidArgument, match=r"entity_keys\[0\].columns\[0\].value: .* INT64"):
        await read(env, request)
    with pytest.raises(InvalidArgument, match="several entities"):
        await read(env, refs("property_stats:stars", "user_profile:preferred_city"))


async def test_pushes_are_validated_before_anything_is_written(env: dict[str, Any]) -> None:
    rows = [
        (property_key(20), T0_US, {"stars": 3}),
        (property_key(21), T0_US, {"stars": "three"}),
    ]
    with pytest.raises(InvalidArgument, match=r'rows\[1\].values\["stars"\]: stars is INT64'):
        await push(env, push_request("property_stats", rows))
    with pytest.raises(InvalidArgument, match=r'rows\[0\].values\["colour"\]'):
        await push(env, push_request("property_stats", [(property_key(1), T0_US, {"colour": 1})]))
    vec = {"taste_embedding": (1.0, 2.0)}
    with pytest.raises(InvalidArgument, match="FLOAT_VECTOR of 16, got 2"):
        await push(env, push_request("user_profile", [(user_key("u"), T0_US, vec)]))
    with pytest.raises(NotFound, match="feature_view"):
        await push(env, push_request("nope", rows[:1]))
    request = refs("property_stats:stars")
    request.entity_keys.append(property_key(20))
    assert (await read(env, request)).rows[0].values[0].status == NOT_FOUND


async def test_freshness_reports_the_newest_value(env: dict[str, Any]) -> None:
    store: FeatureStore = env["store"]
    clock: Clock = env["clock"]
    rows = [(property_key(i), T0_US - i * 1_000_000, {"price_tonight": 99.0}) for i in range(3)]
    await push(env, push_request("property_pricing", rows))
    clock.now_us = T0_US + 10 * 1_000_000
    (fresh,) = await store.freshness(["property_pricing"])
    assert fresh.newest_event_us == T0_US
    assert fresh.lag_us == 10 * 1_000_000
    assert not fresh.stale
    assert fresh.last_push_us == T0_US  # the clock when pushed
    clock.now_us = T0_US + 2 * 3600 * 1_000_000
    assert (await store.freshness(["property_pricing"]))[0].stale


async def test_records_survive_a_restart(env: dict[str, Any]) -> None:
    store: FeatureStore = env["store"]
    await push(env, push_request("property_stats", [(property_key(5), T0_US, {"stars": 2})]))
    await store.online.close()
    store.online = _open(env["kind"], env["tmp"], env["redis_url"], env["namespace"])
    request = refs("property_stats:stars")
    request.entity_keys.append(property_key(5))
    assert python((await read(env, request)).rows[0].values[0].value) == 2
    (fresh,) = await store.freshness(["property_stats"])
    assert fresh.newest_event_us == T0_US
