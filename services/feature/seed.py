"""Demo data for a fresh `llmops up`: the storefront's properties and users, online and
offline, so `llmops demo` and a newcomer's first GetOnlineFeatures return something.

Seeding runs once per state directory (it is skipped when the online store already holds
``property_stats``), in the background after the service is SERVING. Offline it writes a
week of daily ``property_stats`` snapshots, so point-in-time queries have history to pick
from; online it writes the latest value of every view.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from llmops.demo import data
from llmops.v1 import common_pb2
from services.feature.domain import FeatureStore
from services.feature.model import PushTarget, RowInput

log = structlog.get_logger("llmops.feature.seed")

PROPERTIES = 2000
USERS = 500
DAY_US = 86_400 * 1_000_000


def _rows(
    dataset: data.Dataset, view: str, key_of: Any, ts_us: int, convert: dict[str, Any]
) -> list[RowInput]:
    columns = dataset[view]
    out = []
    for i, k in enumerate(dataset.keys):
        values = {}
        for name, col in columns.items():
            values[name] = convert[name](col[i]) if name in convert else data.to_value(col[i])
        out.append(RowInput(key_of(k), ts_us, values))
    return out


def _timestamp(seconds: float) -> common_pb2.Value:
    v = common_pb2.Value()
    v.timestamp_value.FromMicroseconds(int(seconds * 1_000_000))
    return v


async def seed_if_empty(store: FeatureStore) -> bool:
    """Write the demo data unless the online store already has ``property_stats``."""
    if "property_stats" in store.registry.current.views:
        (fresh,) = await store.freshness(["property_stats"])
        if fresh.newest_event_us is not None or fresh.materialized_until_us is not None:
            return False
    t0 = time.perf_counter()
    now_us = time.time_ns() // 1000
    props = data.properties(PROPERTIES, seed=7)
    people = data.users(USERS, seed=11, now_s=now_us / 1e6)

    def property_key(pid: int) -> common_pb2.EntityKey:
        key = common_pb2.EntityKey(entity="property")
        key.columns.add(name="property_id", value=common_pb2.Value(int64_value=pid))
        return key

    def user_key(uid: str) -> common_pb2.EntityKey:
        key = common_pb2.EntityKey(entity="user")
        key.columns.add(name="user_id", value=common_pb2.Value(string_value=uid))
        return key

    batches: list[tuple[str, list[RowInput]]] = []
    for days_ago in range(6, -1, -1):  # a week of daily stats, drifting a little per day
        drift = data.properties(PROPERTIES, seed=7 + days_ago) if days_ago else props
        stats = _rows(drift, "property_stats", property_key, now_us - days_ago * DAY_US, {})
        batches.append(("property_stats", stats))
    for name in ("property_content", "property_pricing"):
        batches.append((name, _rows(props, name, property_key, now_us - 60_000_000, {})))
    profile = _rows(
        people, "user_profile", user_key, now_us - 3_600_000_000, {"last_search_at": _timestamp}
    )
    batches.append(("user_profile", profile))
    for view_name, rows in batches:
        if view_name not in store.registry.current.views:  # the registry was edited
            continue
        await store.push(view_name, rows, PushTarget.ONLINE_AND_OFFLINE)
    log.info(
        "demo_data_seeded",
        properties=PROPERTIES,
        users=USERS,
        seconds=round(time.perf_counter() - t0, 2),
    )
    return True
