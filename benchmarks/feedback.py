"""``llmops bench feedback``: feedback intake through the service, and statistics and exports
from ClickHouse at scale.

Cases:

``submit_c1`` — sequential ``Submit`` of one thumb each (distinct idempotency keys) to the
  feedback service started as its own process (local event log, fsync on: every answer waits
  until its record is durable). p50/p99 of the calls. Target: p99 < 2 ms.
``submit_batch_1000`` — ``SubmitBatch`` of 1,000 records (thumbs, clicks, bookings, ratings),
  at 1 and 4 in flight, after 3 warm-up batches: ``events_per_s`` = records accepted (durable)
  per second of wall time; p50/p99 of the calls. Target: >= 50,000 events/s. Baseline
  ``log-direct``: the same FeedbackEvents published with ``EventPublisher.publish_durable``
  straight into a LocalLog in this process, 1,000 at a time — the event log's own ceiling, no
  gRPC, no validation.
``stats`` / ``stats_by_variant`` — ``GetFeedbackStats``'s queries as the service runs them
  (the hourly rollup, :mod:`services.feedback.rollup`) on chdb holding ``rows`` feedback
  records (default 10 M; 2 % of them superseded by a newer record of their key) on
  ``rows / 2`` predictions over a day: p50/p99 of repeated runs. Target: p99 < 100 ms.
  ``stats_raw_by_variant``: the same statistics joined from the raw tables (the exact path,
  for comparison). ``rollup_backfill``: the first refresh, every hour of the day;
  ``rollup_refresh_1000``: a refresh after 1,000 new records (what runs every 10 s).
``export_examples_jsonl`` / ``_parquet`` — ``ExportDataset`` (EXAMPLES, every prediction
  joined with its feedback, as of now) through the service's Exporter: ``rows_per_s`` of the
  file's rows. Target: >= 200,000 rows/s.

The data of the ClickHouse cases is generated inside ClickHouse (``numbers()``), so the bench
measures the queries, not Python producing rows; the tables are merged (``OPTIMIZE ...
FINAL``) before the timed queries, as a table that has received its rows over a day would
be, rather than timing the background merges of a bulk load.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.report import Case, emit

FULL_ROWS = 10_000_000
QUICK_ROWS = 500_000
TARGETS = (
    ("submit_c1", "p99_ms", "<", 2.0),
    ("submit_batch_1000", "events_per_s", ">=", 50_000.0),
    ("stats", "p99_ms", "<", 100.0),
    ("stats_by_variant", "p99_ms", "<", 100.0),
    ("export_examples_jsonl", "rows_per_s", ">=", 200_000.0),
    ("export_examples_parquet", "rows_per_s", ">=", 200_000.0),
)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _record(i: int, tag: str) -> Any:
    from llmops.v1 import common_pb2, feedback_pb2

    key, rid = f"{tag}-{i}", str(uuid.UUID(int=(i * 2654435761) % (1 << 122) | (4 << 76)))
    base: dict[str, Any] = {"idempotency_key": key, "request_id": rid}
    kind = i % 10
    if kind < 6:
        return feedback_pb2.Feedback(**base, name="thumbs",
                                     thumbs=feedback_pb2.Thumbs(thumb=1 + i % 2))  # type: ignore[arg-type]  # fmt: skip
    if kind < 9:
        click = feedback_pb2.Click(item_id=f"p{i % 997}", position=i % 10)
        return feedback_pb2.Feedback(**base, name="click", click=click)
    if i % 20 == 9:
        money = common_pb2.Money(currency_code="EUR", units=100 + i % 800)
        booking = feedback_pb2.Booking(booking_id=f"b{i}", value=money)
        return feedback_pb2.Feedback(**base, name="booking", booking=booking)
    rating = feedback_pb2.Rating(value=1 + i % 5, scale_max=5)
    return feedback_pb2.Feedback(**base, name="rating", rating=rating)


# -- the service ------------------------------------------------------------------------------


async def _submit_cases(address: str, quick: bool) -> list[Case]:
    import grpc

    from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc

    ctx = common_pb2.RequestContext(tenant="bench")
    cases: list[Case] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        n = 1_000 if quick else 5_000
        for i in range(200):  # warm-up
            await stub.Submit(feedback_pb2.SubmitRequest(context=ctx, feedback=_record(i, "w")))
        case = Case("submit_c1", "llmops")
        began = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await stub.Submit(feedback_pb2.SubmitRequest(context=ctx, feedback=_record(i, "s")))
            case.latencies_s.append(time.perf_counter() - t)
        case.wall_s = time.perf_counter() - began
        cases.append(case)
        batches = 20 if quick else 100
        for concurrency in (1, 4):
            case = Case("submit_batch_1000", "llmops", concurrency=concurrency)
            requests = [
                feedback_pb2.SubmitBatchRequest(
                    context=ctx,
                    feedback=[_record(b * 1000 + j, f"b{concurrency}") for j in range(1000)],
                )
                for b in range(batches)
            ]
            queue = list(requests)
            for w in range(3):  # warm-up, as for Submit: the first batches open files, pools
                await stub.SubmitBatch(
                    feedback_pb2.SubmitBatchRequest(
                        context=ctx,
                        feedback=[_record(w * 1000 + j, f"w{concurrency}") for j in range(1000)],
                    ),
                    timeout=60,
                )

            async def worker(case: Case = case, queue: list[Any] = queue) -> None:
                while queue:
                    request = queue.pop()
                    t = time.perf_counter()
                    reply = await stub.SubmitBatch(request, timeout=60)
                    case.latencies_s.append(time.perf_counter() - t)
                    bad = [r for r in reply.results if r.HasField("error")]
                    if bad:
                        raise RuntimeError(f"refused: {bad[0].error.message}")

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            case.wall_s = time.perf_counter() - began
            case.extra["events_per_s"] = round(batches * 1000 / case.wall_s)
            cases.append(case)
    return cases


async def _log_direct(tmp: Path, quick: bool) -> Case:
    """The baseline: FeedbackEvents straight into a LocalLog (fsync), 1,000 at a time."""
    from llmops.events.ids import uuid7
    from llmops.events.local_log import LocalLog
    from llmops.events.publisher import EventPublisher
    from llmops.v1 import events_pb2

    batches = 20 if quick else 100
    log = LocalLog(tmp / "direct-log")
    case = Case("submit_batch_1000", "log-direct")
    now = time.time_ns()
    with EventPublisher(log) as publisher:
        envelopes = []
        for b in range(batches):
            batch = []
            for j in range(1000):
                env = events_pb2.EventEnvelope()
                ev = env.feedback
                ev.event_id = uuid7()
                ev.event_time.FromNanoseconds(now)
                ev.received_time.FromNanoseconds(now)
                ev.tenant = "bench"
                record = _record(b * 1000 + j, "d")
                ev.request_id = record.request_id
                ev.feedback.CopyFrom(record)
                batch.append(env)
            envelopes.append(batch)
        began = time.perf_counter()
        for batch in envelopes:
            t = time.perf_counter()
            await publisher.publish_durable(batch, 60)
            case.latencies_s.append(time.perf_counter() - t)
        case.wall_s = time.perf_counter() - began
    log.close()
    case.extra["events_per_s"] = round(batches * 1000 / case.wall_s)
    return case


def _service_part(tmp: Path, quick: bool) -> list[Case]:
    import uvloop

    env = {
        "LLMOPS__STATE_DIR": str(tmp / "state"),
        "LLMOPS__EVENTS__BACKEND": "local",
        "LLMOPS__FEEDBACK__KEYS": "local",
        "LLMOPS__FEEDBACK__LABELS": "sqlite",
        "LLMOPS__FEEDBACK__QUEUE_FILL_INTERVAL_S": "0",
        "LLMOPS__FEEDBACK__DEMO_DATA": "off",
    }
    with (tmp / "service.log").open("wb") as log:
        proc, address = servers.start_service("feedback", env, log)
    try:
        cases = uvloop.run(_submit_cases(address, quick))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    cases.append(uvloop.run(_log_direct(tmp, quick)))
    return cases


# -- ClickHouse at scale ------------------------------------------------------------------------


def generate(store: Any, rows: int, start: datetime) -> None:
    """``rows`` feedback records on ``rows / 2`` predictions of one day, made in ClickHouse:
    60 % thumbs, 30 % clicks, 5 % bookings, 5 % ratings; every 50th record supersedes the
    one before it (same idempotency key, a second later)."""
    predictions = max(1, rows // 2)
    store.execute(
        f"""
INSERT INTO predictions (event_time, request_uuid, tenant, market, route, task, model_name,
                         model_version, experiment_id, variant)
SELECT toDateTime64(%(start)s, 3) + toIntervalMillisecond(intDiv(number * 86000000, {predictions})),
       toUUID(concat('00000000-0000-4000-8000-', leftPad(hex(number), 12, '0'))),
       'acme', ['gb', 'de', 'fr'][1 + number % 3], 'summary-small', 'property_summary',
       'smollm2', 1, 'property-summary-prompt', ['prompt_v3', 'prompt_v4'][1 + number % 2]
FROM numbers({predictions})""",
        {"start": start},
    )
    store.execute(
        f"""
INSERT INTO feedback (event_time, received_time, event_id, request_id, tenant, market, kind,
                      name, idempotency_key, task, thumb, rating, rating_scale_max, item_id,
                      value_nanos, value_currency)
SELECT et, et + toIntervalSecond(1 + (number % 50 = 1)), generateUUIDv4(number),
       concat('00000000-0000-4000-8000-', leftPad(hex(p), 12, '0')), 'acme', 'gb',
       multiIf(h < 60, 'THUMBS', h < 90, 'CLICK', h < 95, 'BOOKING', 'RATING'),
       multiIf(h < 60, 'thumbs', h < 90, 'click', h < 95, 'booking', 'rating'),
       concat('k-', toString(if(number % 50 = 1, number - 1, number))), 'property_summary',
       if(h < 60, if(cityHash64(number, 7) % 100 < 55 + 10 * (p % 2), 'UP', 'DOWN'), ''),
       if(h >= 95, toInt32(1 + cityHash64(number, 3) % 5), 0), if(h >= 95, 5, 0),
       if(h >= 60 AND h < 90, toString(p % 2000), ''),
       if(h >= 90 AND h < 95, toInt64(100 + cityHash64(number) % 800) * 1000000000, 0),
       if(h >= 90 AND h < 95, 'EUR', '')
FROM (
    SELECT number, number % {predictions} AS p, cityHash64(number) % 100 AS h,
           toDateTime64(%(start)s, 3) + toIntervalMillisecond(
               intDiv((number % {predictions}) * 86000000, {predictions}) + 60000) AS et
    FROM numbers({rows})
)""",
        {"start": start},
    )


def _clickhouse_part(tmp: Path, rows: int, quick: bool) -> list[Case]:
    from chdb import session as chdb_sessions

    from llmops.clickhouse.chdb_store import ChdbStore
    from llmops.clickhouse.migrations import apply_migrations
    from services.feedback.export import Exporter, ExportQuery, ExportResult
    from services.feedback.rollup import StatsRollup
    from services.feedback.stats import (
        ClickHouseStatsStore,
        RollupStatsStore,
        StatsQuery,
        summarise,
    )

    session = chdb_sessions.Session(str(tmp / "chdb"))  # type: ignore[no-untyped-call]
    try:
        store = ChdbStore(session, database="bench_feedback")
        apply_migrations(store)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(days=1, hours=1)
        began = time.perf_counter()
        generate(store, rows, start)
        _log(f"clickhouse: {rows:,} feedback rows on {rows // 2:,} predictions in "
             f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        # the background merges of a fresh bulk load, done now, as in a table that has been
        # receiving rows for a day (they would otherwise run under the timed queries)
        for table in ("feedback", "predictions", "prediction_counts_1h"):
            store.execute(f"OPTIMIZE TABLE {table} FINAL")
        cases = []
        rollup = StatsRollup(lambda: store, settle_s=0)
        t = time.perf_counter()
        hours = rollup.refresh()
        elapsed = time.perf_counter() - t
        store.execute("OPTIMIZE TABLE feedback_stats_1h FINAL")
        cases.append(Case("rollup_backfill", "llmops", [elapsed], elapsed,
                          extra={"rows": rows, "hours": len(hours)}))  # fmt: skip
        _log(f"rollup backfill: {len(hours)} hours in {elapsed:.1f} s")
        runs = 10 if quick else 100  # enough runs that p99 is not just the slowest one
        stores = (
            ("stats", RollupStatsStore(lambda: store), (), runs),
            ("stats_by_variant", RollupStatsStore(lambda: store), ("variant",), runs),
            ("stats_raw_by_variant", ClickHouseStatsStore(lambda: store), ("variant",), 1),
        )
        window = (start.replace(minute=0, second=0), now)
        for name, stats, group_by, n in stores:
            query = StatsQuery(*window, task="property_summary", group_by=group_by)
            # warm-up: ClickHouse JIT-compiles a query's expressions the 4th time it sees them
            # (min_count_to_compile_expression = 3), once per process, ~100 ms on that run
            for _ in range(5 if n > 1 else 1):
                summarise(stats._raw(query), group_by)
            case = Case(name, "llmops", extra={"rows": rows})
            began = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                summarise(stats._raw(query), group_by)
                case.latencies_s.append(time.perf_counter() - t)
            case.wall_s = time.perf_counter() - began
            cases.append(case)
            _log(f"{name}: p50 {sorted(case.latencies_s)[len(case.latencies_s) // 2] * 1e3:.0f} ms")
        # an incremental refresh: 1,000 records received since, one of them a flipped thumb
        store.execute(
            """
INSERT INTO feedback (event_time, received_time, event_id, request_id, tenant, kind, name,
                      idempotency_key, task, thumb)
SELECT now64(3) - toIntervalSecond(30), now64(3), generateUUIDv4(number),
       concat('00000000-0000-4000-8000-', leftPad(hex(number), 12, '0')), 'acme', 'THUMBS',
       'thumbs', concat('new-', toString(number)), 'property_summary', 'UP'
FROM numbers(1000)"""
        )
        t = time.perf_counter()
        hours = rollup.refresh()
        elapsed = time.perf_counter() - t
        cases.append(Case("rollup_refresh_1000", "llmops", [elapsed], elapsed,
                          extra={"rows": rows, "hours": len(hours)}))  # fmt: skip
        _log(f"rollup refresh after 1,000 new records: {len(hours)} hours in {elapsed:.2f} s")
        for fmt in ("JSONL", "PARQUET"):
            export = ExportQuery(task="property_summary", start=start, end=now, as_of=now,
                                 include_payloads=False)  # fmt: skip
            results: list[ExportResult] = []
            digest = hashlib.sha256()
            t = time.perf_counter()
            for chunk in Exporter(lambda: store).stream(export, fmt, results.append):
                digest.update(chunk)
            elapsed = time.perf_counter() - t
            (result,) = results
            case = Case(f"export_examples_{fmt.lower()}", "llmops", [elapsed], elapsed, extra={
                "rows": result.rows, "bytes": result.bytes,
                "rows_per_s": round(result.rows / elapsed), "feedback_rows": rows,
            })  # fmt: skip
            cases.append(case)
            _log(f"export {fmt}: {result.rows:,} rows in {elapsed:.1f} s")
        return cases
    finally:
        session.cleanup()  # type: ignore[no-untyped-call]


def target_lines(summaries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for case, key, op, bound in TARGETS:
        for s in summaries:
            if s["case"] != case or s["system"] != "llmops" or key not in s:
                continue
            value = float(s[key])
            ok = value < bound if op == "<" else value >= bound
            lines.append(
                f"{'met   ' if ok else 'MISSED'} {case} c{s['concurrency']}: {key} {value:,.2f} "
                f"(target {op} {bound:,.0f})"
            )
    return lines


def main(*, quick: bool, rows: int | None = None) -> None:
    rows = rows or (QUICK_ROWS if quick else FULL_ROWS)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmops-bench-feedback-") as name:
        tmp = Path(name)
        cases = _service_part(tmp, quick)
        cases += _clickhouse_part(tmp, rows, quick)
    summaries = [c.summary() for c in cases]
    ratios: dict[str, float] = {}
    by = {(s["case"], s["system"], s["concurrency"]): s for s in summaries}
    direct = by.get(("submit_batch_1000", "log-direct", 1))
    for c in (1, 4):
        mine = by.get(("submit_batch_1000", "llmops", c))
        if mine and direct:
            ratios[f"submit_batch_1000_c{c}.events_per_s.llmops/log-direct"] = round(
                mine["events_per_s"] / direct["events_per_s"], 3
            )
    _log(f"llmops bench feedback: {time.monotonic() - began:.1f} s in all")
    for line in target_lines(summaries):
        _log(line)
    emit("feedback", summaries, ratios)
