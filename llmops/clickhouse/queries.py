"""Dashboard and CLI queries, served from the rollups (``raw=True`` asks the raw rows the
same question - for tests and the benchmark, never for dashboards).

Windows are half-open ``[start, end)`` in UTC and are widened to whole buckets of the
rollup that answers them: 1-minute buckets (``predictions_1m``) for windows up to
:data:`MINUTE_ROLLUP_MAX`, 1-hour buckets (``predictions_1h``, ``prediction_stages_1h``)
beyond, so a rollup answer equals the raw answer over the same widened window: counters exactly;
latency quantiles (``quantilesTDigest`` 0.5, 0.95, 0.99, microseconds, on both paths)
within the digest's error (~1%), since merged digests depend on the merge order. Costs come back as
``cost`` in currency units (``cost_nanos / 1e9``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from llmops.clickhouse.base import ClickHouseStore

MINUTE_ROLLUP_MAX = timedelta(hours=6)
MAX_RECENT_ROWS = 1000
"""Most rows one ``llmops logs`` call (and the logs endpoint) returns: a larger limit is
refused, never silently cut."""
QUANTILES = "0.5, 0.95, 0.99"
ROLLUP_SETTINGS = (
    " SETTINGS merge_tree_min_rows_for_concurrent_read = 1024,"
    " merge_tree_min_bytes_for_concurrent_read = 1"
)
"""Appended to every rollup query. Its cost is merging digest states, not reading: a 24 h
window is a few tens of thousands of rollup rows, which the defaults (160k rows / 24 MB
before a second read stream) read - and merge - on one core. With these and the rollups'
1024-row granules the rows split over all cores (deploy/clickhouse/migrations/0002)."""
_LEVELS = ("p50", "p95", "p99")


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) widened to whole ``bucket`` (``minute`` or ``hour``) boundaries."""

    start: datetime
    end: datetime
    bucket: str

    @classmethod
    def of(cls, start: datetime, end: datetime, bucket: str | None = None) -> Window:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware (UTC)")
        chosen = bucket or ("minute" if end - start <= MINUTE_ROLLUP_MAX else "hour")
        step = timedelta(minutes=1) if chosen == "minute" else timedelta(hours=1)
        lo = _floor(start.astimezone(UTC), step)
        hi = _floor(end.astimezone(UTC), step)
        return cls(lo, hi if hi == end.astimezone(UTC) else hi + step, chosen)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, **extra}


def _floor(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // step) * step


def _filters(tenant: str | None, route: str | None, time_col: str) -> str:
    where = [f"{time_col} >= %(start)s", f"{time_col} < %(end)s"]
    if tenant is not None:
        where.append("tenant = %(tenant)s")
    if route is not None:
        where.append("route = %(route)s")
    return " AND ".join(where)


def _split_quantiles(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    for row in rows:
        for name in names:
            values = row.pop(name)
            for level, value in zip(_LEVELS, values, strict=True):
                row[f"{name}_{level}"] = float(value)
        if "cost_nanos" in row:
            row["cost"] = int(row.pop("cost_nanos")) / 1e9
    return rows


_MODEL_AGGS_ROLLUP = f"""
    sum(requests) AS requests, sum(errors) AS errors, sum(cache_hits) AS cache_hits,
    sum(guardrail_blocks) AS guardrail_blocks, sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens, sum(cost_nanos) AS cost_nanos,
    quantilesTDigestMerge({QUANTILES})(latency_us) AS latency_us,
    quantilesTDigestMerge({QUANTILES})(ttft_us) AS ttft_us"""

_MODEL_AGGS_RAW = f"""
    count() AS requests, countIf(status_code != 0) AS errors, countIf(cache_hit) AS cache_hits,
    countIf(guardrail_verdict = 'BLOCK') AS guardrail_blocks,
    sum(toUInt64(prompt_tokens)) AS prompt_tokens,
    sum(toUInt64(completion_tokens)) AS completion_tokens, sum(cost_nanos) AS cost_nanos,
    quantilesTDigest({QUANTILES})(total_latency_us) AS latency_us,
    quantilesTDigest({QUANTILES})(ttft_us) AS ttft_us"""


def model_stats(
    store: ClickHouseStore,
    start: datetime,
    end: datetime,
    *,
    tenant: str | None = None,
    route: str | None = None,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Per (tenant, route, model_name, model_version, variant) over the window: requests,
    errors, error_rate, cache_hits, guardrail_blocks, prompt/completion tokens, cost, and
    latency_us_p50/p95/p99 and ttft_us_p50/p95/p99 (microseconds). Sorted by requests
    descending, then the key."""
    w = Window.of(start, end)
    keys = "tenant, route, model_name, model_version, variant"
    if raw:
        sql = f"SELECT {keys}, {_MODEL_AGGS_RAW} FROM predictions WHERE "
        sql += _filters(tenant, route, "event_time")
    else:
        table = "predictions_1m" if w.bucket == "minute" else "predictions_1h"
        sql = f"SELECT {keys}, {_MODEL_AGGS_ROLLUP} FROM {table} WHERE "
        sql += _filters(tenant, route, w.bucket)
    sql += f" GROUP BY {keys} ORDER BY requests DESC, {keys}"
    sql += "" if raw else ROLLUP_SETTINGS
    rows = _split_quantiles(
        store.query(sql, w.params(tenant=tenant, route=route)), "latency_us", "ttft_us"
    )
    for row in rows:
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else 0.0
    return rows


def stage_latencies(
    store: ClickHouseStore,
    start: datetime,
    end: datetime,
    *,
    tenant: str | None = None,
    route: str | None = None,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Per (route, model_name, variant, stage) over the window (hour buckets): calls and
    duration_us_p50/p95/p99 (microseconds)."""
    w = Window.of(start, end, "hour")
    keys = "route, model_name, variant, stage"
    if raw:
        sql = (
            f"SELECT {keys}, count() AS calls, quantilesTDigest({QUANTILES})(duration) "
            "AS duration_us FROM predictions ARRAY JOIN stage_names AS stage, "
            "stage_durations_us AS duration WHERE " + _filters(tenant, route, "event_time")
        )
    else:
        sql = (
            f"SELECT {keys}, sum(calls) AS calls, quantilesTDigestMerge({QUANTILES})"
            "(duration_us) AS duration_us FROM prediction_stages_1h WHERE "
            + _filters(tenant, route, "hour")
        )
    sql += f" GROUP BY {keys} ORDER BY {keys}" + ("" if raw else ROLLUP_SETTINGS)
    return _split_quantiles(store.query(sql, w.params(tenant=tenant, route=route)), "duration_us")


def daily_totals(
    store: ClickHouseStore,
    start: datetime,
    end: datetime,
    *,
    tenant: str | None = None,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Per (day, tenant): requests, errors, prompt/completion tokens and cost (hour
    buckets summed into UTC days)."""
    w = Window.of(start, end, "hour")
    if raw:
        sql = (
            "SELECT toDate(event_time) AS day, tenant, count() AS requests, "
            "countIf(status_code != 0) AS errors, sum(toUInt64(prompt_tokens)) AS prompt_tokens,"
            " sum(toUInt64(completion_tokens)) AS completion_tokens, sum(cost_nanos) AS cost_nanos"
            " FROM predictions WHERE " + _filters(tenant, None, "event_time")
        )
    else:
        sql = (
            "SELECT toDate(hour) AS day, tenant, sum(requests) AS requests, sum(errors) AS errors,"
            " sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,"
            " sum(cost_nanos) AS cost_nanos FROM predictions_1h WHERE "
            + _filters(tenant, None, "hour")
        )
    sql += " GROUP BY day, tenant ORDER BY day, tenant" + ("" if raw else ROLLUP_SETTINGS)
    return _split_quantiles(store.query(sql, w.params(tenant=tenant)))


def timeseries(
    store: ClickHouseStore,
    start: datetime,
    end: datetime,
    *,
    route: str,
    tenant: str | None = None,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """One route per bucket (minute up to 6 h, else hour): bucket, requests, errors,
    latency_us_p50/p95/p99."""
    w = Window.of(start, end)
    if raw:
        bucket = "toStartOfMinute" if w.bucket == "minute" else "toStartOfHour"
        sql = (
            f"SELECT {bucket}(event_time) AS bucket, count() AS requests, "
            f"countIf(status_code != 0) AS errors, quantilesTDigest({QUANTILES})"
            "(total_latency_us) AS latency_us FROM predictions WHERE "
            + _filters(tenant, route, "event_time")
        )
    else:
        table = "predictions_1m" if w.bucket == "minute" else "predictions_1h"
        sql = (
            f"SELECT {w.bucket} AS bucket, sum(requests) AS requests, sum(errors) AS errors, "
            f"quantilesTDigestMerge({QUANTILES})(latency_us) AS latency_us FROM {table} WHERE "
            + _filters(tenant, route, w.bucket)
        )
    sql += " GROUP BY bucket ORDER BY bucket" + ("" if raw else ROLLUP_SETTINGS)
    return _split_quantiles(store.query(sql, w.params(tenant=tenant, route=route)), "latency_us")


def guardrail_stats(
    store: ClickHouseStore,
    start: datetime,
    end: datetime,
    *,
    tenant: str | None = None,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Per (policy, direction, verdict) over the window (minute buckets): decisions,
    degraded, findings, latency_us_p50/p95/p99."""
    w = Window.of(start, end, "minute")
    keys = "policy, direction, verdict"
    if raw:
        sql = (
            f"SELECT {keys}, count() AS decisions, countIf(degraded) AS degraded, "
            "sum(toUInt64(length(finding_types))) AS findings, "
            f"quantilesTDigest({QUANTILES})(latency_us) AS latency_us "
            "FROM guardrail_decisions WHERE " + _filters(tenant, None, "event_time")
        )
    else:
        sql = (
            f"SELECT {keys}, sum(decisions) AS decisions, sum(degraded) AS degraded, "
            f"sum(findings) AS findings, quantilesTDigestMerge({QUANTILES})(latency_us) "
            "AS latency_us FROM guardrail_decisions_1m WHERE " + _filters(tenant, None, "minute")
        )
    sql += f" GROUP BY {keys} ORDER BY {keys}" + ("" if raw else ROLLUP_SETTINGS)
    return _split_quantiles(store.query(sql, w.params(tenant=tenant)), "latency_us")


RECENT_COLUMNS = (
    "event_time", "request_id", "tenant", "task", "route", "model_name", "model_version",
    "variant",
    "status_code", "total_latency_ms", "prompt_tokens", "completion_tokens", "cost",
    "cache_hit", "guardrail_verdict",
)  # fmt: skip


def recent_predictions(
    store: ClickHouseStore,
    since: timedelta | datetime,
    limit: int = 50,
    *,
    tenant: str | None = None,
    route: str | None = None,
) -> list[dict[str, Any]]:
    """The newest predictions (newest first) since a moment or within the last ``since``,
    with :data:`RECENT_COLUMNS` (``total_latency_ms`` in ms, ``cost`` in currency units).
    Reads raw rows: bounded by ``limit`` and by the window's day partitions."""
    start = datetime.now(UTC) - since if isinstance(since, timedelta) else since
    sql = (
        "SELECT event_time, request_id, tenant, task, route, model_name, model_version, variant, "
        "status_code, total_latency_us / 1000 AS total_latency_ms, prompt_tokens, "
        "completion_tokens, cost_nanos / 1e9 AS cost, cache_hit, guardrail_verdict "
        "FROM predictions WHERE event_time >= %(start)s"
    )
    if tenant is not None:
        sql += " AND tenant = %(tenant)s"
    if route is not None:
        sql += " AND route = %(route)s"
    sql += " ORDER BY event_time DESC LIMIT %(limit)s"
    return store.query(sql, {"start": start, "tenant": tenant, "route": route, "limit": limit})


RECENT_EVENTS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    # `llmops logs <kind>`: table, (column, SQL expression) newest first
    "exposures": ("exposures", (
        ("event_time", "event_time"), ("request_id", "request_id"), ("tenant", "tenant"),
        ("unit_type", "unit_type"), ("unit_id", "unit_id"), ("experiment_id", "experiment_id"),
        ("version", "experiment_version"), ("layer", "layer"), ("variant", "variant"),
        ("reason", "reason"),
    )),
    "guardrail": ("guardrail_decisions", (
        ("event_time", "event_time"), ("request_id", "request_id"), ("tenant", "tenant"),
        ("direction", "direction"), ("policy", "policy"), ("policy_version", "policy_version"),
        ("verdict", "verdict"), ("finding_types", "finding_types"),
        ("latency_ms", "latency_us / 1000"), ("text_length", "text_length"),
        ("streamed", "streamed"), ("event_id", "event_id"),
    )),
    "audit": ("audit", (
        ("event_time", "event_time"), ("chain", "chain"), ("sequence", "sequence"),
        ("request_id", "request_id"), ("tenant", "tenant"),
        ("actor_id", "actor_id"), ("actor_type", "actor_type"), ("action", "action"),
        ("resource_type", "resource_type"), ("resource_name", "resource_name"),
        ("resource_version", "resource_version"), ("outcome", "outcome"),
    )),
    "feedback": ("feedback", (
        ("event_time", "event_time"), ("request_id", "request_id"), ("tenant", "tenant"),
        ("kind", "kind"), ("name", "name"), ("unit_id", "unit_id"), ("event_id", "event_id"),
        ("idempotency_key", "idempotency_key"), ("thumb", "thumb"), ("label", "label"),
        ("label_note", "label_note"),
    )),
    "drift": ("drift_reports", (
        ("event_time", "event_time"), ("route", "route"), ("model_name", "model_name"),
        ("metric", "metric"), ("psi", "psi"), ("ks", "ks"), ("drifted", "drifted"),
        ("n_ref", "n_ref"), ("n_latest", "n_latest"), ("latest_start", "latest_start"),
    )),
}  # fmt: skip
"""The other event kinds `llmops logs` shows (predictions: :func:`recent_predictions`)."""


def recent_events(
    store: ClickHouseStore, kind: str, since: timedelta | datetime, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest events of ``kind`` (a key of :data:`RECENT_EVENTS`) since a moment or
    within the last ``since``, newest first, bounded by ``limit``."""
    table, columns = RECENT_EVENTS[kind]
    start = datetime.now(UTC) - since if isinstance(since, timedelta) else since
    select = ", ".join(expr if expr == name else f"{expr} AS {name}" for name, expr in columns)
    sql = (
        f"SELECT {select} FROM {table} WHERE event_time >= %(start)s "
        "ORDER BY event_time DESC LIMIT %(limit)s"
    )
    return store.query(sql, {"start": start, "limit": limit})


def recent_columns(kind: str) -> tuple[str, ...]:
    if kind == "predictions":
        return RECENT_COLUMNS
    return tuple(name for name, _ in RECENT_EVENTS[kind][1])


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = RECENT_COLUMNS) -> str:
    """A plain-text table (header, rule, one line per row) for terminals; times as ISO UTC
    to the millisecond, floats with 3 decimals."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def log_high_water_marks(
    store: ClickHouseStore, table: str, topic: str, lookback: timedelta = timedelta(days=7)
) -> dict[int, int]:
    """``{log_partition: max(log_offset)}`` of the rows of ``topic`` in ``table`` with an
    event time in the last ``lookback``: the sink skips records at or below these offsets
    when a batch is replayed. ``lookback`` must exceed the topic's retention plus the
    producers' worst delay (records older than that cannot be replayed); it bounds the
    scan to those day partitions. Run it once per partition assignment, then track the
    marks in memory."""
    from llmops.clickhouse.sql import identifier

    rows = store.query(
        f"SELECT log_partition, max(log_offset) AS hwm FROM {identifier(table)} "
        "WHERE log_topic = %(topic)s AND event_time >= %(since)s GROUP BY log_partition",
        {"topic": topic, "since": datetime.now(UTC) - lookback},
    )
    return {int(r["log_partition"]): int(r["hwm"]) for r in rows}


HWM_SLACK = timedelta(days=1)
"""How much older than its log timestamp an event's event_time may be (producer buffering
during an outage, clock skew) and still be found by :func:`high_water_mark`."""


def high_water_mark(
    store: ClickHouseStore, tp: tuple[str, int], since_ms: int, *, table: str | None = None
) -> int | None:
    """Highest ``log_offset`` stored for ``tp`` = (topic, partition), or None when no row of
    it is stored. Only rows with ``event_time >= since_ms - HWM_SLACK`` are searched
    (``since_ms``: log timestamp, ms since the epoch, of the first record the sink is about
    to read; records at or after it cannot carry much older event times), which prunes the
    scan to a couple of day partitions. ``table`` defaults to the topic's raw table
    (:data:`llmops.clickhouse.rows.TOPIC_TABLES`). Matches the sink's ``HighWaterMark``."""
    from llmops.clickhouse.rows import TOPIC_TABLES
    from llmops.clickhouse.sql import identifier

    topic, partition = tp
    name = identifier(table or TOPIC_TABLES[topic])
    since = datetime.fromtimestamp(since_ms / 1000, UTC) - HWM_SLACK
    row = store.query(
        f"SELECT count() AS n, max(log_offset) AS hwm FROM {name} WHERE log_topic = %(topic)s"
        " AND log_partition = %(partition)s AND event_time >= %(since)s",
        {"topic": topic, "partition": partition, "since": since},
    )[0]
    return int(row["hwm"]) if int(row["n"]) else None


def stored_event_at(
    store: ClickHouseStore, tp: tuple[str, int], offset: int, since_ms: int,
    *, table: str | None = None,
) -> int | None:  # fmt: skip
    """The event time (ms since the epoch) of the row stored for log position (``tp``,
    ``offset``), or None when no row holds it (rows with ``event_time >= since_ms -
    HWM_SLACK``, as :func:`high_water_mark`). The sink compares it with the record it reads
    there: another time means the rows came from an earlier log (a recreated topic, a wiped
    local log). Event time, not event id: every raw table keeps it (predictions keep no id)."""
    from llmops.clickhouse.rows import TOPIC_TABLES
    from llmops.clickhouse.sql import identifier

    topic, partition = tp
    name = identifier(table or TOPIC_TABLES[topic])
    since = datetime.fromtimestamp(since_ms / 1000, UTC) - HWM_SLACK
    rows = store.query(
        f"SELECT toUnixTimestamp64Milli(event_time) AS ms FROM {name}"
        " WHERE log_topic = %(topic)s AND log_partition = %(partition)s"
        " AND log_offset = %(offset)s AND event_time >= %(since)s LIMIT 1",
        {"topic": topic, "partition": partition, "offset": offset, "since": since},
    )
    return int(rows[0]["ms"]) if rows else None
