"""The statistics rollup (migration 0007): hours of feedback, refreshed as feedback changes them.

``GetFeedbackStats`` over tens of millions of rows cannot join the raw tables within 100 ms,
and a materialized view cannot keep "the newest record per idempotency key" (a toggled thumb
changes an hour that is already rolled up) nor attribute feedback to a prediction logged
later. So the feedback service refreshes the rollup itself (:meth:`StatsRollup.refresh`,
every ``stats_refresh_interval_s``):

1. records received since the last refresh (up to ``settle_s`` ago) mark *dirty* the hours of
   every record sharing their idempotency keys — the new record's hour, and the hour of the
   record it superseded; hours refreshed less than two hours ago that held feedback without
   its prediction are dirty too (the prediction may have been logged since);
2. each dirty hour is recomputed exactly from the raw tables (the same newest-record-per-key,
   joined-to-its-prediction statistics as the raw query) and written as a new version;
3. the hour's new version is recorded, older versions of it are deleted, and the watermark
   moves on.

Readers take, per hour, the rows of its newest recorded version only, so a refresh in
progress is never half-seen. Distinct requests are HyperLogLog states (``uniqCombined(14)``,
~1% error) merged across hours; everything else is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from llmops.clickhouse.base import ClickHouseStore
from services.feedback.sql import SIGNAL_SUMS, newest_per_key, request_uuid
from services.feedback.stats import PREDICTION_LOOKBACK_DAYS, UNMATCHED_AFTER_S

log = structlog.get_logger("llmops.feedback")

UNMATCHED_REFRESH_S = 7_200
"""Hours with feedback whose prediction was missing are recomputed for this long."""
MAX_HOURS_PER_PASS = 48
"""Dirty hours recomputed per statement (a first refresh walks the history in such steps)."""
_HOURS_KEYS = """(tenant, idempotency_key) IN (
        SELECT tenant, idempotency_key FROM feedback
        WHERE toStartOfHour(event_time) IN %(hours)s
    )"""
"""The keys with a record in the hours being recomputed (their newest record may lie
outside them)."""


def _hours(values: Sequence[Any]) -> list[datetime]:
    out = []
    for v in values:
        when = v if isinstance(v, datetime) else datetime.fromtimestamp(float(v), UTC)
        out.append(when if when.tzinfo else when.replace(tzinfo=UTC))
    return sorted(set(out))


def recompute_sql(
    hours: Sequence[datetime], version: int, refreshed_s: float
) -> tuple[str, dict[str, Any]]:
    """The INSERT that writes ``hours`` as ``version``."""
    params: dict[str, Any] = {
        "hours": tuple(hours), "version": version, "lookback": PREDICTION_LOOKBACK_DAYS,
        "first": min(hours), "unmatched_before": refreshed_s - UNMATCHED_AFTER_S,
    }  # fmt: skip
    f_uuid = request_uuid("f.request_id")
    sql = f"""
INSERT INTO feedback_stats_1h
SELECT toStartOfHour(f.et) AS hour, %(version)s AS version, f.tenant AS tenant,
       if(f.task != '', f.task, ifNull(p.p_task, '')) AS task,
       ifNull(p.p_route, '') AS route, ifNull(p.p_model, '') AS model,
       ifNull(p.p_variant, '') AS variant,
       if(f.market != '', f.market, ifNull(p.p_market, '')) AS market,
       f.signal AS signal, f.kind AS kind,
       count() AS n,
       uniqCombinedIfState(14)(f.request_id, f.request_id != '') AS requests,
       {SIGNAL_SUMS},
       tupleElement(sumMap(if(f.label != '', [f.label], []),
                           if(f.label != '', [toUInt64(1)], [])) AS lm, 1) AS label_names,
       tupleElement(lm, 2) AS label_counts,
       tupleElement(sumMap(if(f.currency != '', [f.currency], []),
                           if(f.currency != '', [f.value_nanos], [])) AS vm, 1)
         AS value_currencies,
       tupleElement(vm, 2) AS value_nanos,
       sum(f.copies) - count() AS superseded,
       countIf(f.request_id != '' AND p.rid IS NULL
               AND f.received < %(unmatched_before)s) AS unmatched
FROM
{newest_per_key(_HOURS_KEYS)} AS f
LEFT JOIN
(
    SELECT request_id AS rid, any(task) AS p_task, any(market) AS p_market,
           any(route) AS p_route,
           any(concat(model_name, ' v', toString(model_version))) AS p_model,
           any(variant) AS p_variant
    FROM predictions
    WHERE event_time >= %(first)s - INTERVAL %(lookback)s DAY
      AND request_id IN (
          SELECT {request_uuid("request_id")} FROM feedback
          WHERE toStartOfHour(event_time) IN %(hours)s AND request_id != ''
      )
    GROUP BY rid
) AS p ON p.rid = {f_uuid}
WHERE toStartOfHour(f.et) IN %(hours)s
GROUP BY hour, tenant, task, route, model, variant, market, signal, kind
SETTINGS join_use_nulls = 1
"""
    return sql, params


class StatsRollup:
    """Refreshes ``feedback_stats_1h`` (see the module docstring)."""

    def __init__(
        self,
        clickhouse: Callable[[], ClickHouseStore],
        *,
        settle_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clickhouse = clickhouse
        self.settle_s = settle_s
        self._clock = clock
        self._last_version = 0

    def refresh(self) -> list[datetime]:
        """One refresh (blocking: run it off the event loop); the hours it rewrote."""
        store = self._clickhouse()
        now = self._clock()
        until = now - self.settle_s
        since = float(
            store.query("SELECT toFloat64(max(received_until)) AS w FROM feedback_rollup_progress")[
                0
            ]["w"]
            or 0.0
        )
        if until <= since:
            return []
        params = {"since": since, "until": until, "recent": now - UNMATCHED_REFRESH_S}
        dirty = store.query(
            """
SELECT DISTINCT toFloat64(toStartOfHour(event_time)) AS hour FROM feedback
WHERE (tenant, idempotency_key) IN (
    SELECT tenant, idempotency_key FROM feedback
    WHERE toFloat64(received_time) > %(since)s AND toFloat64(received_time) <= %(until)s
)
UNION DISTINCT
SELECT DISTINCT toFloat64(hour) AS hour FROM feedback_stats_1h
WHERE unmatched > 0 AND toFloat64(hour) >= %(recent)s - 3600
""",
            params,
        )
        hours = _hours([r["hour"] for r in dirty])
        for i in range(0, len(hours), MAX_HOURS_PER_PASS):
            self._rewrite(store, hours[i : i + MAX_HOURS_PER_PASS], now)
        store.execute(
            "INSERT INTO feedback_rollup_progress (received_until, refreshed_at) "
            "VALUES (%(until)s, %(now)s)",
            {"until": datetime.fromtimestamp(until, UTC), "now": datetime.fromtimestamp(now, UTC)},
        )
        if hours:
            log.info("feedback_stats_refreshed", hours=len(hours))
        return hours

    def _rewrite(self, store: ClickHouseStore, hours: list[datetime], now: float) -> None:
        version = max(int(now * 1000), self._last_version + 1)
        self._last_version = version
        sql, params = recompute_sql(hours, version, now)
        store.execute(sql, params)
        stamp = datetime.fromtimestamp(now, UTC)
        store.insert(
            "feedback_stats_hours",
            {
                "hour": [h.replace(tzinfo=None) for h in hours],
                "version": [version] * len(hours),
                "refreshed_at": [stamp.replace(tzinfo=None)] * len(hours),
            },
        )
        # older versions of these hours are no longer read: drop them
        keep = {"hours": tuple(hours), "version": version}
        store.execute(
            "DELETE FROM feedback_stats_1h WHERE hour IN %(hours)s AND version < %(version)s",
            keep,
        )
        store.execute(
            "DELETE FROM feedback_stats_hours WHERE hour IN %(hours)s AND version < %(version)s",
            keep,
        )
