"""The offline store on chdb: point-in-time correctness against a brute-force reference
(property-based), TTLs, and materialization into the online store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import feature_pb2
from services.feature.model import PushTarget, RowInput
from services.feature.offline import OfflineStore
from services.feature.online import EmbeddedOnlineStore, OnlineStore
from services.feature.registry import Registry, load_registry
from services.feature.servicer import FeatureServicer
from tests.feature_support import feature_store, python, refs, value

pytestmark = pytest.mark.infra

REGISTRY = """
entities:
  - name: item
    join_keys: [{name: item_id, type: INT64}]
feature_views:
  - name: item_stats
    entity: item
    ttl: 100s
    source: pit_item_stats
    features:
      - {name: a, type: INT64}
      - {name: b, type: DOUBLE}
  - name: item_tags
    entity: item
    source: pit_item_tags
    features:
      - {name: tags, type: STRING_LIST}
"""
SECOND = 1_000_000
BASE_US = 1_790_000_000 * SECOND
PRESENT = feature_pb2.FEATURE_STATUS_PRESENT
NOT_FOUND = feature_pb2.FEATURE_STATUS_NOT_FOUND
OUTSIDE = feature_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE


def item_key(i: int) -> Any:
    from llmops.v1 import common_pb2

    return common_pb2.EntityKey(
        entity="item", columns=[common_pb2.KeyColumn(name="item_id", value=value(i))]
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("registry") / "items.yaml"
    path.write_text(REGISTRY)
    return load_registry([path])


@pytest.fixture(scope="module")
def offline(chdb_session: Any, registry: Registry) -> Iterator[OfflineStore]:
    store = ChdbStore(chdb_session, database="it_feature_offline")
    store.execute("DROP DATABASE IF EXISTS it_feature_offline")
    store = ChdbStore(chdb_session, database="it_feature_offline")
    store.execute("CREATE DATABASE IF NOT EXISTS it_feature_offline")
    off = OfflineStore(store)
    asyncio.run(off.ensure_tables(registry))
    yield off
    store.execute("DROP DATABASE IF EXISTS it_feature_offline")


def truncate(off: OfflineStore) -> None:
    for table in ("pit_item_stats", "pit_item_tags"):
        off.store.execute(f"TRUNCATE TABLE {table}")


async def write(
    off: OfflineStore, registry: Registry, view: str, rows: list[tuple[int, int, dict[str, Any]]]
) -> None:
    """Push ``rows`` (key, event time, values) to the offline store only."""
    store = feature_store(registry, _NoOnline(), off)  # type: ignore[arg-type]
    inputs = [RowInput(item_key(k), ts, {n: value(x) for n, x in v.items()}) for k, ts, v in rows]
    result = await store.push(view, inputs, PushTarget.OFFLINE)
    assert (result.offline_rows, result.online_rows) == (len(rows), 0)


class _NoOnline:
    async def close(self) -> None: ...


async def historical(
    off: OfflineStore, registry: Registry, features: list[str], rows: list[tuple[int, int]]
) -> list[feature_pb2.HistoricalRow]:
    request = feature_pb2.GetHistoricalFeaturesRequest()
    for text in features:
        view, _, name = text.partition(":")
        request.feature_refs.refs.add(feature_view=view, name=name)
    for key, ts in rows:
        row = request.entity_rows.rows.add()
        row.entity_key.CopyFrom(item_key(key))
        row.event_time.FromMicroseconds(ts)
    out: list[feature_pb2.HistoricalRow] = []
    first = True
    servicer = FeatureServicer(feature_store(registry, _NoOnline(), off))  # type: ignore[arg-type]
    async for msg in servicer.GetHistoricalFeatures(request, None):
        assert bool(msg.features) is first  # features only in the first message
        first = False
        out.extend(msg.rows)
    return out


# Times in steps of 10 s over 0-400 s (history) and 0-500 s (entity rows): an entity row
# often lands exactly on a value's time (which must be included: "at or before"), and the
# 100 s TTL splits the rest between fresh and OUTSIDE_MAX_AGE.
history = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40).map(lambda t: t * 10), st.integers(-5, 5)),
    max_size=40,
    unique_by=lambda r: (r[0], r[1]),  # one value per key and time (a replay replaces it)
)
entity_rows = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 50).map(lambda t: t * 10)), min_size=1, max_size=30
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=history, entity_rows=entity_rows)
def test_point_in_time_matches_a_brute_force_reference(
    offline: OfflineStore,
    registry: Registry,
    history: list[tuple[int, int, int]],
    entity_rows: list[tuple[int, int]],
) -> None:
    truncate(offline)
    rows = [(k, BASE_US + t * SECOND, {"a": a, "b": a / 2}) for k, t, a in history]
    asyncio.run(write(offline, registry, "item_stats", rows) if rows else asyncio.sleep(0))
    wanted = [(k, BASE_US + t * SECOND) for k, t in entity_rows]
    got = asyncio.run(historical(offline, registry, ["item_stats:a", "item_stats:b"], wanted))
    assert len(got) == len(wanted)
    got_by_row = sorted(
        (
            (r.entity_key.columns[0].value.int64_value, r.event_time.ToMicroseconds()),
            [(v.status, python(v.value), v.event_time.ToMicroseconds()) for v in r.values],
        )
        for r in got
    )
    expected = []
    for key, ts in wanted:
        past = [(t, a) for (k2, t, a) in _rows(history) if k2 == key and t <= ts]
        if not past:
            values = [(NOT_FOUND, None, 0)] * 2
        else:
            t, a = max(past)
            if ts - t > 100 * SECOND:
                values = [(OUTSIDE, None, t)] * 2
            else:
                values = [(PRESENT, a, t), (PRESENT, a / 2, t)]
        expected.append(((key, ts), values))
    assert got_by_row == sorted(expected)


def _rows(history: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return [(k, BASE_US + t * SECOND, a) for k, t, a in history]


def test_views_join_independently_and_arrays_round_trip(
    offline: OfflineStore, registry: Registry
) -> None:
    truncate(offline)
    asyncio.run(write(offline, registry, "item_stats", [(1, BASE_US, {"a": 7})]))
    asyncio.run(
        write(offline, registry, "item_tags", [(1, BASE_US - 1000 * SECOND, {"tags": ["x", "y"]})])
    )
    (row,) = asyncio.run(
        historical(
            offline, registry, ["item_tags:tags", "item_stats:a", "item_stats:b"], [(1, BASE_US)]
        )
    )
    assert [v.status for v in row.values] == [PRESENT, PRESENT, PRESENT]
    assert [python(v.value) for v in row.values] == [["x", "y"], 7, None]  # b never pushed: null
    assert row.values[0].event_time.ToMicroseconds() == BASE_US - 1000 * SECOND  # no TTL


def test_bad_historical_requests(offline: OfflineStore, registry: Registry) -> None:
    with pytest.raises(NotFound, match=r"feature_refs\[0\]"):
        asyncio.run(historical(offline, registry, ["item_stats:zzz"], [(1, BASE_US)]))
    with pytest.raises(InvalidArgument, match="entities"):
        asyncio.run(historical(offline, registry, ["item_stats:a"], []))


@pytest.fixture
async def online(tmp_path: Path) -> AsyncIterator[OnlineStore]:
    store = EmbeddedOnlineStore(tmp_path / "online.sqlite3")
    yield store
    await store.close()


async def test_materialize_loads_the_latest_value_per_key_incrementally(
    offline: OfflineStore, registry: Registry, online: OnlineStore
) -> None:
    now = [BASE_US + 100 * SECOND]
    servicer = FeatureServicer(
        feature_store(registry, online, offline, namespace="m", clock_us=lambda: now[0])
    )
    truncate(offline)
    await write(
        offline,
        registry,
        "item_stats",
        [(1, BASE_US, {"a": 1}), (1, BASE_US + 10 * SECOND, {"a": 2}), (2, BASE_US, {"a": 5})],
    )
    request = feature_pb2.MaterializeRequest(feature_views=["item_stats"])
    request.window.start_time.FromMicroseconds(BASE_US - SECOND)
    request.window.end_time.FromMicroseconds(BASE_US + 60 * SECOND)
    (result,) = (await servicer.Materialize(request, None)).results
    assert result.rows_written == 2
    assert result.watermark.ToMicroseconds() == BASE_US + 60 * SECOND
    await write(offline, registry, "item_stats", [(1, BASE_US + 90 * SECOND, {"a": 3})])
    incremental = feature_pb2.MaterializeRequest(feature_views=["item_stats"])
    incremental.window.end_time.FromMicroseconds(BASE_US + 120 * SECOND)  # from the watermark
    (result,) = (await servicer.Materialize(incremental, None)).results
    assert result.rows_written == 1
    read = refs("item_stats:a")
    read.entity_keys.extend([item_key(1), item_key(2)])
    rows = (await servicer.GetOnlineFeatures(read, None)).rows
    assert [python(r.values[0].value) for r in rows] == [3, 5]
    with pytest.raises(NotFound, match=r"feature_views\[0\]"):
        await servicer.Materialize(feature_pb2.MaterializeRequest(feature_views=["x"]), None)
    later = feature_pb2.MaterializeRequest(feature_views=["item_stats"])
    later.window.start_time.FromMicroseconds(BASE_US + 200 * SECOND)
    with pytest.raises(InvalidArgument, match="start_time is after end_time"):
        await servicer.Materialize(later, None)  # the window ends now (the clock)
