"""GetFeedbackStats on chdb: feedback rows made by the sink's own mapping from FeedbackEvents,
joined to logged predictions; newest record per idempotency key (a toggled thumb, an event
delivered twice), rates over logged predictions, intervals, unmatched feedback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.rows import columns_for
from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from services.feedback.labelling import Labelling
from services.feedback.servicer import FeedbackAdminServicer
from services.feedback.stats import ClickHouseStatsStore, StatsQuery, check_group_by, wilson

pytestmark = pytest.mark.infra

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
NO_LABELS = cast(Labelling, None)  # the statistics RPC does not touch the label queues
A = [str(uuid.UUID(int=i + 1)) for i in range(10)]  # request ids of variant a
B = [str(uuid.UUID(int=i + 101)) for i in range(10)]  # of variant b


@pytest.fixture(scope="module")
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    s = ChdbStore(chdb_session, database="it_feedback_stats")
    s.execute("DROP DATABASE IF EXISTS it_feedback_stats")
    s = ChdbStore(chdb_session, database="it_feedback_stats")
    apply_migrations(s)
    ids = A + B
    s.insert("predictions", {
        "event_time": np.array([T0.replace(tzinfo=None)] * 20, dtype="datetime64[ms]"),
        "request_uuid": ids, "tenant": ["acme"] * 20, "market": ["gb"] * 20,
        "task": ["property_summary"] * 20, "route": ["summary-small"] * 20,
        "model_name": ["smollm2"] * 20, "model_version": [1] * 10 + [2] * 10,
        "variant": ["a"] * 10 + ["b"] * 10,
    })  # fmt: skip
    events: list[events_pb2.EventEnvelope] = []
    offset = 0

    def add(key: str, request_id: str, minutes: int, **kind: Any) -> events_pb2.EventEnvelope:
        nonlocal offset
        env = events_pb2.EventEnvelope()
        ev = env.feedback
        ev.event_id = str(uuid.uuid4())
        ev.event_time.FromDatetime(T0 + timedelta(minutes=minutes))
        ev.received_time.FromDatetime(T0 + timedelta(minutes=minutes, seconds=1))
        ev.tenant, ev.request_id = "acme", request_id
        name, message = next(iter(kind.items()))
        ev.kind = feedback_pb2.FeedbackKind.Value(f"FEEDBACK_KIND_{name.upper()}")
        ev.feedback.CopyFrom(feedback_pb2.Feedback(
            idempotency_key=key, request_id=request_id, name=name, **{name: message}
        ))  # fmt: skip
        events.append(env)
        offset += 1
        return env

    up, down = feedback_pb2.Thumbs(thumb=1), feedback_pb2.Thumbs(thumb=2)
    for i in range(4):  # variant a: 4 up, 2 down ...
        add(f"t-a{i}", A[i], 1, thumbs=up)
    add("t-a4", A[4], 1, thumbs=down)
    add("t-a5", A[5], 1, thumbs=up)
    add("t-a5", A[5], 5, thumbs=down)  # ... one of them flipped from up: counts as down
    twice = add("t-a6", A[6], 2, thumbs=up)
    events.append(twice)  # delivered twice: counts once (a 5th up)
    add("c-b0", B[0], 3, click=feedback_pb2.Click(item_id="p1", position=0))
    add("c-b1", B[1], 3, click=feedback_pb2.Click(item_id="p2", position=1))
    add("c-b1b", B[1], 4, click=feedback_pb2.Click(item_id="p3", position=2))  # same request
    add("bk-b2", B[2], 9, booking=feedback_pb2.Booking(
        booking_id="bk-1", value=common_pb2.Money(currency_code="EUR", units=120, nanos=500_000_000)
    ))  # fmt: skip
    add("r-b3", B[3], 9, rating=feedback_pb2.Rating(value=4, scale_max=5))
    add("t-x", str(uuid.UUID(int=999)), 9, thumbs=up)  # its prediction was never logged
    items = [("llmops.feedback.v1", 0, i, e) for i, e in enumerate(events)]
    for table, cols in columns_for(items).items():
        s.insert(table, cols)
    yield s
    s.execute("DROP DATABASE IF EXISTS it_feedback_stats")


def window() -> tuple[datetime, datetime]:
    return T0, T0 + timedelta(hours=1)


async def test_per_variant_statistics_count_the_newest_record_of_each_key(store: ChdbStore) -> None:
    start, end = window()
    raw = await ClickHouseStatsStore(lambda: store).raw(
        StatsQuery(start, end, task="property_summary", group_by=("variant",),
                   now=T0 + timedelta(days=1))
    )  # fmt: skip
    assert raw.predictions == {("a",): 10, ("b",): 10}
    by = {(r.dimensions, r.signal): r for r in raw.rows}
    thumbs_a = by[(("a",), "thumbs")]
    assert (thumbs_a.count, thumbs_a.ups, thumbs_a.thumbs) == (7, 5, 7)
    clicks_b = by[(("b",), "click")]
    assert clicks_b.count == 3 and clicks_b.requests == 2  # a rate counts predictions
    booking = by[(("b",), "booking")]
    assert booking.values_nanos == {"EUR": 120_500_000_000}
    rating = by[(("b",), "rating")]
    assert rating.rated == 1 and rating.rating_sum == pytest.approx(0.8)
    # the thumb of a request never logged, filtered out by the task (its task is unknown)
    assert all(r.dimensions != ("",) for r in raw.rows)
    assert raw.superseded == 2  # the flipped thumb's first answer, the second delivery


async def test_the_rpc_reports_rates_intervals_and_unmatched(store: ChdbStore) -> None:
    start, end = window()
    request = feedback_pb2.GetFeedbackStatsRequest(group_by=["variant", "model"])
    request.window.start_time.FromDatetime(start)
    request.window.end_time.FromDatetime(end)
    reply = await FeedbackAdminServicer(
        ClickHouseStatsStore(lambda: store), NO_LABELS
    ).GetFeedbackStats(request, None)
    groups = {(g.dimensions["variant"], g.dimensions["model"]): g for g in reply.groups}
    a = groups[("a", "smollm2 v1")]
    b = groups[("b", "smollm2 v2")]
    assert a.prediction_count == 10 and b.prediction_count == 10
    (thumbs,) = [s for s in a.signals if s.signal == "thumbs"]
    share, low, high = wilson(5, 7)
    assert thumbs.mean == pytest.approx(share) and thumbs.ci_low == pytest.approx(low)
    assert thumbs.ci_high == pytest.approx(high) and low < share < high
    (clicks,) = [s for s in b.signals if s.signal == "click"]
    assert clicks.mean == pytest.approx(0.2) and clicks.distinct_requests == 2
    (booking,) = [s for s in b.signals if s.signal == "booking"]
    assert [(m.currency_code, m.units, m.nanos) for m in booking.values] == [
        ("EUR", 120, 500_000_000)
    ]
    orphan = groups[("", "")]  # the thumb whose prediction was never logged
    assert [s.count for s in orphan.signals] == [1]
    assert reply.unmatched_count == 1  # older than an hour: counted as unmatched
    kinds = {feedback_pb2.FeedbackKind.Name(k.kind): k for k in reply.kinds}
    assert kinds["FEEDBACK_KIND_THUMBS"].count == 8
    assert kinds["FEEDBACK_KIND_BOOKING"].total_value.units == 120
    assert reply.received_count == 15 and reply.duplicate_count == 2  # rows: 13 counted + 2
    assert reply.pending_sink_count == -1


async def test_bad_requests_name_the_field(store: ChdbStore) -> None:
    with pytest.raises(InvalidArgument, match="one of"):
        check_group_by(["colour"])
    with pytest.raises(InvalidArgument) as info:
        check_group_by(["variant", "variant"])
    assert info.value.field == "group_by[1]"
    request = feedback_pb2.GetFeedbackStatsRequest()
    request.window.start_time.FromDatetime(T0)
    request.window.end_time.FromDatetime(T0)
    with pytest.raises(InvalidArgument) as info:
        await FeedbackAdminServicer(
            ClickHouseStatsStore(lambda: store), NO_LABELS
        ).GetFeedbackStats(request, None)
    assert info.value.field == "window"


def _view(raw: Any) -> dict[tuple[tuple[str, ...], str], tuple[Any, ...]]:
    return {
        (r.dimensions, r.signal): (
            r.count, r.requests, r.ups, r.thumbs, r.rated, round(r.rating_sum, 9),
            dict(r.labels), dict(r.values_nanos),
        )
        for r in raw.rows
    }  # fmt: skip


async def test_the_rollup_agrees_with_the_raw_tables_as_feedback_changes_the_past(
    store: ChdbStore,
) -> None:
    from services.feedback.rollup import StatsRollup
    from services.feedback.stats import RollupStatsStore

    hour = T0.replace(minute=0)
    now = [(T0 + timedelta(minutes=90)).timestamp()]
    rollup = StatsRollup(lambda: store, settle_s=0, clock=lambda: now[0])
    assert rollup.refresh() == [hour]  # the one hour with feedback
    query = StatsQuery(hour, hour + timedelta(hours=3), group_by=("variant",), now=T0)
    raw_store, rolled = ClickHouseStatsStore(lambda: store), RollupStatsStore(lambda: store)

    async def agree() -> Any:
        exact, fast = await raw_store.raw(query), await rolled.raw(query)
        assert _view(fast) == _view(exact)
        assert fast.predictions == exact.predictions
        assert (fast.received, fast.superseded) == (exact.received, exact.superseded)
        return fast

    assert (await agree()).predictions == {("a",): 10, ("b",): 10}
    # nothing new was received: only the hour whose orphan thumb may still get its prediction
    assert rollup.refresh() == [hour]
    # a thumb flipped an hour later supersedes a record of the first hour: both are rewritten
    env = events_pb2.EventEnvelope()
    ev = env.feedback
    ev.event_id, ev.tenant, ev.request_id = str(uuid.uuid4()), "acme", A[0]
    ev.event_time.FromDatetime(T0 + timedelta(minutes=70))
    ev.received_time.FromDatetime(T0 + timedelta(minutes=91))
    ev.kind = feedback_pb2.FEEDBACK_KIND_THUMBS
    ev.feedback.CopyFrom(feedback_pb2.Feedback(
        idempotency_key="t-a0", request_id=A[0], name="thumbs",
        thumbs=feedback_pb2.Thumbs(thumb=2),  # type: ignore[arg-type]
    ))  # fmt: skip
    for table, cols in columns_for([("llmops.feedback.v1", 0, 99, env)]).items():
        store.insert(table, cols)
    now[0] = (T0 + timedelta(minutes=92)).timestamp()
    assert rollup.refresh() == [hour, hour + timedelta(hours=1)]
    fast = await agree()
    thumbs_a = {r.signal: r for r in fast.rows if r.dimensions == ("a",)}["thumbs"]
    assert (thumbs_a.ups, thumbs_a.thumbs) == (4, 7)  # one up fewer: it is down now
    # the prediction of the orphan thumb is logged late: its hour is recomputed and attributed
    store.insert("predictions", {
        "event_time": np.array([T0.replace(tzinfo=None)], dtype="datetime64[ms]"),
        "request_uuid": [str(uuid.UUID(int=999))], "tenant": ["acme"], "task": ["property_summary"],
        "route": ["summary-small"], "model_name": ["smollm2"], "model_version": [2],
        "variant": ["b"],
    })  # fmt: skip
    now[0] = (T0 + timedelta(minutes=95)).timestamp()
    assert hour in rollup.refresh()
    fast = await agree()
    assert ("",) not in {r.dimensions for r in fast.rows}
