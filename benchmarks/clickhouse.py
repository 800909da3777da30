"""``llmops bench clickhouse``: ingest rate, bytes/row on disk, rollup vs raw query latency.

Cases (output per ../shared/BENCH.md; extra figures in the case objects):

- ``load_predictions_1m_batches`` (chdb): N synthetic rows (default 100 M; ``--quick`` 1.5 M)
  generated in 1 M-row chunks, in time order, ending now, at the density of 100 M rows per
  30 days (so N < 100 M covers N/100 M of 30 days), inserted through
  :class:`ChdbStore` into the full schema (raw table + 3 materialized views).
  ``rows_per_s`` counts insert time only (generation overlaps in a thread); p50/p99 are per
  1 M-row insert.
- ``ingest_predictions_100k_batches`` (chdb): sink-sized 100k-row inserts with dedup tokens
  into a fresh database with the full schema, the batches drawn at the bench's sparse
  density (2 M rows over one hour: a batch spans 3 minutes of ~1,300 live
  model/version/variant groups, ~25 rows per group and minute).
- ``ingest_predictions_100k_batches_prod_density`` (chdb): the same, with event times at
  the rate one shard of the sizing in deploy/clickhouse/SIZING.md takes (220 B/day over 10
  shards at the 2x peak: ~510k rows/s, so a 100k batch spans ~0.2 s of traffic). This is
  what a sink sees in production: the rollup views touch at most the ~1,300 groups of one
  minute per batch instead of ~4,000 spread over three.
- ``ingest_predictions_100k_batches_no_rollups`` (chdb): the sparse batches into the raw
  table alone (the full schema with the prediction rollup views dropped), to show what the
  materialized views cost.
- ``convert_predictions``: protobuf envelopes -> ``predictions`` columns
  (:func:`llmops.clickhouse.rows.columns_for`), the sink's per-record CPU cost.
- ``ingest_predictions_100k_batches_server18`` (server): the same batches through
  :class:`ServerStore` (clickhouse-driver, numpy columns) into Debian's ClickHouse 18.16, on
  an 18.16-compatible variant of ``predictions`` (DateTime instead of DateTime64, Bool as
  UInt8, no codecs/TTL, no MVs); the server is started with deploy/local/clickhouse.sh
  when none answers, and stopped again.
- ``storage_predictions``: after ``OPTIMIZE TABLE ... FINAL``, ``bytes_per_row`` from
  ``system.parts`` (active parts, bytes_on_disk), and the five largest columns.
- ``storage_predictions_prod_density``: the same over the rows of the production-density
  ingest case (one shard's peak rate, as a production partition holds them: neighbouring
  rows of one model are milliseconds apart, not the ~minute of the sparse month).
- ``q_*``: each dashboard query of :mod:`llmops.clickhouse.queries` from the rollups
  (system ``llmops``) and the same question over raw rows (system ``raw-scan``), repeated;
  ``answers_equal`` says whether both gave the same rows.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import Case, emit
from llmops.clickhouse import queries, synthetic
from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1_000_000
SINK_BATCH = 100_000
SHARD_PEAK_ROWS_PER_S = 510_000
"""Peak rows/s per shard in SIZING.md (5.1 M rows/s over 10 shards)."""
DSN = "clickhouse://default@127.0.0.1:19000/llmops_bench"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prefetch(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Generate the next chunk in a thread while the caller inserts the current one."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(next, chunks, None)
        while (chunk := future.result()) is not None:
            future = pool.submit(next, chunks, None)
            yield chunk


def _load(store: ChdbStore, rows: int, start_ms: int, end_ms: int) -> Case:
    case = Case("load_predictions_1m_batches", "llmops")
    chunks = synthetic.prediction_chunks(rows, CHUNK, seed=42, start_ms=start_ms, end_ms=end_ms)
    t_wall = time.perf_counter()
    done = 0
    for cols in _prefetch(chunks):
        t0 = time.perf_counter()
        done += store.insert("predictions", cols)
        case.latencies_s.append(time.perf_counter() - t0)
        if len(case.latencies_s) % 10 == 0:
            _log(f"loaded {done:,} rows ({time.perf_counter() - t_wall:.0f} s)")
    case.wall_s = sum(case.latencies_s)
    case.extra = {
        "backend": "chdb",
        "rows": done,
        "batch_rows": CHUNK,
        "rows_per_s": round(done / case.wall_s),
        "wall_s_with_generation": round(time.perf_counter() - t_wall, 1),
        "materialized_views": 3,
    }
    return case


def _sink_batches(rows: int, seed: int, end_ms: int) -> list[dict[str, Any]]:
    start_ms = end_ms - 3_600_000
    return list(
        synthetic.prediction_chunks(rows, SINK_BATCH, seed=seed, start_ms=start_ms, end_ms=end_ms)
    )


def _ingest(store: ClickHouseStore, name: str, batches: list[dict[str, Any]]) -> Case:
    case = Case(name, "llmops")
    for i, cols in enumerate(batches):
        t0 = time.perf_counter()
        store.insert("predictions", cols, dedup_token=f"bench-{i}")
        case.latencies_s.append(time.perf_counter() - t0)
    case.wall_s = sum(case.latencies_s)
    rows = sum(len(b["event_time"]) for b in batches)
    case.extra = {"backend": store.name, "rows": rows, "batch_rows": SINK_BATCH,
                  "rows_per_s": round(rows / case.wall_s)}  # fmt: skip
    return case


def _envelope(i: int, t_ms: int) -> Any:
    from llmops.v1 import common_pb2, events_pb2

    ev = events_pb2.PredictionEvent(
        event_id=f"0190f2a4-8c1e-7b3a-9f00-{i:012d}",
        request_id=f"0190f2a4-8c1e-7b3a-9f01-{i:012d}",
        tenant="storefront-0",
        market="NL",
        route=f"route-{i % 60:02d}",
        task="summary",
        model_name=f"model-{i % 400:03d}",
        model_version=1 + i % 3,
        variant="control",
        total_latency_us=20_000 + i % 5000,
        status_code=14 if i % 67 == 0 else 0,
        usage=common_pb2.Usage(
            prompt_tokens=600,
            completion_tokens=150,
            time_to_first_token_ms=80.5,
            total_time_ms=300.0,
            cost=common_pb2.Money(currency_code="USD", nanos=120_000),
        ),
        stages=[
            common_pb2.StageLatency(stage=s, duration_us=1000 + i % 700)
            for s in ("experiment", "features", "prompt", "model", "log")
        ],
        guardrails=[
            common_pb2.GuardrailSummary(policy="input-default", verdict=common_pb2.VERDICT_ALLOW)
        ],
        feature_vector_hash="9f" * 16,
        user_id=f"u-{i % 9973:016x}",
        session_id=f"s-{i:016x}",
    )
    ev.event_time.FromMilliseconds(t_ms + i)
    return events_pb2.EventEnvelope(key=ev.request_id, prediction=ev)


def _convert_case(n: int) -> Case:
    """Protobuf envelopes -> predictions columns (the sink's conversion step)."""
    from llmops.clickhouse import rows as row_conversion

    now_ms = int(time.time() * 1000)
    items = [("llmops.predictions.v1", i % 96, i, _envelope(i, now_ms)) for i in range(n)]
    case = Case("convert_predictions", "llmops")
    for start in range(0, n, 10_000):
        t0 = time.perf_counter()
        row_conversion.columns_for(items[start : start + 10_000])
        case.latencies_s.append(time.perf_counter() - t0)
    case.wall_s = sum(case.latencies_s)
    case.extra = {"rows": n, "batch_rows": 10_000, "rows_per_s": round(n / case.wall_s)}
    return case


def _prod_density_batches(rows: int, end_ms: int) -> list[dict[str, Any]]:
    span_ms = max(1, rows * 1000 // SHARD_PEAK_ROWS_PER_S)
    return list(
        synthetic.prediction_chunks(
            rows, SINK_BATCH, seed=9, start_ms=end_ms - span_ms, end_ms=end_ms
        )
    )


def _ingest_without_rollups(sess: Any, batches: list[dict[str, Any]]) -> Case:
    """The same batches into the raw table alone (the rollup views dropped): their share."""
    store = ChdbStore(sess, database="bench_raw")
    apply_migrations(store)
    for view in ("predictions_1m_mv", "predictions_1h_mv", "prediction_stages_1h_mv"):
        store.execute(f"DROP VIEW {view}")
    case = _ingest(store, "ingest_predictions_100k_batches_no_rollups", batches)
    store.execute("DROP DATABASE bench_raw")
    return case


def _storage(store: ChdbStore, name: str = "storage_predictions") -> Case:
    t0 = time.perf_counter()
    store.execute("OPTIMIZE TABLE predictions FINAL")
    optimize_s = time.perf_counter() - t0
    part = store.query(
        "SELECT sum(bytes_on_disk) AS bytes, sum(data_uncompressed_bytes) AS raw, "
        "sum(rows) AS rows, count() AS parts "
        "FROM system.parts WHERE database = %(db)s AND table = 'predictions' AND active",
        {"db": store.database},
    )[0]
    top = store.query(
        "SELECT name, data_compressed_bytes AS bytes FROM system.columns "
        "WHERE database = %(db)s AND table = 'predictions' ORDER BY bytes DESC LIMIT 8",
        {"db": store.database},
    )
    rollups = store.query(
        "SELECT table, sum(bytes_on_disk) AS bytes, sum(rows) AS rows FROM system.parts "
        "WHERE database = %(db)s AND active AND table != 'predictions' GROUP BY table "
        "ORDER BY table",
        {"db": store.database},
    )
    rows = int(part["rows"])
    case = Case(name, "llmops", latencies_s=[optimize_s], wall_s=optimize_s)
    case.extra = {
        "rows": rows,
        "bytes_on_disk": int(part["bytes"]),
        "bytes_per_row": round(int(part["bytes"]) / rows, 2),
        "uncompressed_bytes_per_row": round(int(part["raw"]) / rows, 2),
        "parts": int(part["parts"]),
        "optimize_final_s": round(optimize_s, 1),
        "top_columns_bytes_per_row": {r["name"]: round(int(r["bytes"]) / rows, 2) for r in top},
        "rollup_rows": {r["table"]: int(r["rows"]) for r in rollups},
        "rollup_bytes": {r["table"]: int(r["bytes"]) for r in rollups},
    }
    return case


def _dashboard(end: datetime) -> dict[str, Callable[[ClickHouseStore, bool], Any]]:
    hour, day, month = timedelta(hours=1), timedelta(days=1), timedelta(days=30)
    return {
        "q_models_last_1h": lambda s, raw: queries.model_stats(s, end - hour, end, raw=raw),
        "q_models_last_24h": lambda s, raw: queries.model_stats(s, end - day, end, raw=raw),
        "q_route_minutes_6h": lambda s, raw: queries.timeseries(
            s, end - 6 * hour, end, route="route-00", raw=raw
        ),
        "q_stages_last_24h": lambda s, raw: queries.stage_latencies(
            s, end - day, end, tenant="storefront-0", raw=raw
        ),
        "q_daily_totals_30d": lambda s, raw: queries.daily_totals(s, end - month, end, raw=raw),
    }


def _queries(store: ClickHouseStore, end: datetime, repeats: int, raw_repeats: int) -> list[Case]:
    cases: list[Case] = []
    for name, fn in _dashboard(end).items():
        answers = {}
        for system, raw, n in (("llmops", False, repeats), ("raw-scan", True, raw_repeats)):
            case = Case(name, system)
            answers[system] = fn(store, raw)  # warm-up, and the answer
            for _ in range(n):
                t0 = time.perf_counter()
                fn(store, raw)
                case.latencies_s.append(time.perf_counter() - t0)
            case.wall_s = sum(case.latencies_s)
            cases.append(case)
        equal, worst = compare_answers(answers["llmops"], answers["raw-scan"])
        for case in cases[-2:]:
            case.extra = {
                "counters_equal": equal,
                "max_quantile_rel_diff": round(worst, 4),
                "result_rows": len(answers["llmops"]),
            }
        _log(f"{name}: counters equal: {equal}, worst quantile diff {worst:.2%}")
    return cases


def compare_answers(rollup: list[dict[str, Any]], raw: list[dict[str, Any]]) -> tuple[bool, float]:
    """(every non-quantile value equal, largest relative difference of a quantile)."""
    if len(rollup) != len(raw):
        return False, float("inf")
    equal, worst = True, 0.0
    for a, b in zip(rollup, raw, strict=True):
        for key, value in a.items():
            if "_p" in key and isinstance(value, float):
                worst = max(worst, abs(value - b[key]) / max(abs(b[key]), 1.0))
            elif isinstance(value, float):
                equal = equal and abs(value - b[key]) <= 1e-9 * max(abs(value), 1.0)
            else:
                equal = equal and value == b[key]
    return equal, worst


# -- server (18.16) ------------------------------------------------------------------------


def _server_types(store: ChdbStore) -> list[tuple[str, str]]:
    """``predictions`` columns with types 18.16 understands: the columns a sink writes, the
    request id as the plain UUID it inserts (18.16 has no EPHEMERAL, no UInt128 to split it)."""
    cols = store.query(
        "SELECT name, type FROM system.columns WHERE database = %(db)s "
        "AND table = 'predictions' AND default_kind IN ('', 'EPHEMERAL') ORDER BY position",
        {"db": store.database},
    )
    mapped = []
    for c in cols:
        t = str(c["type"]).replace("DateTime64(3, 'UTC')", "DateTime").replace("Bool", "UInt8")
        mapped.append((str(c["name"]), t))
    return mapped


def _server_case(chdb_store: ChdbStore, batches: list[dict[str, Any]]) -> Case | None:
    from llmops.clickhouse.server_store import ServerStore

    started = _ensure_server()
    if started is None:
        return None
    store = ServerStore(DSN)
    try:
        cols = ", ".join(f"{n} {t}" for n, t in _server_types(chdb_store))
        store.execute("DROP TABLE IF EXISTS predictions")
        store.execute(
            f"CREATE TABLE predictions ({cols}) ENGINE = MergeTree "
            "PARTITION BY toDate(event_time) ORDER BY (tenant, route, model_name, event_time)"
        )
        converted = [_for_server(b) for b in batches]
        case = _ingest(store, "ingest_predictions_100k_batches_server18", converted)
        version = ".".join(map(str, store.server_version()))
        case.extra.update({"server_version": version, "table": "18.16-compatible variant"})
        store.execute("DROP DATABASE IF EXISTS llmops_bench")
        return case
    finally:
        store.close()
        if started:
            subprocess.run(["bash", str(REPO / "deploy/local/clickhouse.sh"), "stop"], check=False)


def _for_server(cols: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in cols.items():
        if name == "event_time":
            out[name] = np.asarray(values).astype("datetime64[s]")
        elif isinstance(values, np.ndarray):
            out[name] = values.astype(np.uint8) if values.dtype == bool else values
        else:  # Arrow arrays -> numpy (lists for Array columns), outside the timed insert
            out[name] = values.to_numpy(zero_copy_only=False)
            if out[name].dtype == object and len(out[name]) and not isinstance(out[name][0], str):
                out[name] = np.array([list(x) for x in out[name]] + [None], dtype=object)[:-1]
    return out


def _ensure_server() -> bool | None:
    """True if this bench started the server, False if one was running, None if absent."""
    script = str(REPO / "deploy/local/clickhouse.sh")
    if subprocess.run(["bash", script, "status"], capture_output=True, check=False).returncode == 0:
        return False
    proc = subprocess.run(["bash", script, "start"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        _log(f"server case skipped: clickhouse.sh start failed:\n{proc.stdout}{proc.stderr}")
        return None
    return True


# -- main ----------------------------------------------------------------------------------


def main(*, quick: bool, rows: int | None = None) -> None:
    rows = rows or (1_500_000 if quick else 100_000_000)
    chdb_session: Any = importlib.import_module("chdb.session")  # untyped; loads the engine
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-ch-"))
    sess = chdb_session.Session(str(tmp / "chdb"))
    try:
        cases = _run(sess, quick, rows)
    finally:
        sess.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    summaries = [c.summary() for c in cases]
    by = {(c["case"], c["system"]): c for c in summaries}
    ratios = {
        f"{name}.p50_ms.raw-scan/llmops": round(
            by[(name, "raw-scan")]["p50_ms"] / max(by[(name, "llmops")]["p50_ms"], 1e-6), 1
        )
        for name, system in by
        if system == "llmops" and (name, "raw-scan") in by
    }
    emit("clickhouse", summaries, ratios)


def _run(sess: Any, quick: bool, rows: int) -> list[Case]:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end_ms = int(end.timestamp() * 1000)
    store = ChdbStore(sess, database="bench")
    apply_migrations(store)
    # The density of the full run (100 M rows over 30 days) whatever the row count, so
    # rollups see as many rows per (minute, model) group as at 100 M; at most 30 days.
    span_ms = min(30 * 86_400_000, int(30 * 86_400_000 * rows / 100_000_000))
    _log(f"loading {rows:,} predictions over {span_ms / 86_400_000:.1f} days ...")
    cases = [_load(store, rows, end_ms - span_ms, end_ms)]
    cases.append(_convert_case(20_000 if quick else 200_000))
    batches = _sink_batches(200_000 if quick else 2_000_000, 7, end_ms)
    sink_store = ChdbStore(sess, database="bench_sink")
    apply_migrations(sink_store)
    cases.append(_ingest(sink_store, "ingest_predictions_100k_batches", batches))
    sink_store.execute("DROP DATABASE bench_sink")
    prod = _prod_density_batches(len(batches) * SINK_BATCH, end_ms)
    sink_store = ChdbStore(sess, database="bench_sink")
    apply_migrations(sink_store)
    cases.append(_ingest(sink_store, "ingest_predictions_100k_batches_prod_density", prod))
    cases[-1].extra["event_time_span_s"] = round(len(prod) * SINK_BATCH / SHARD_PEAK_ROWS_PER_S, 1)
    cases.append(_storage(sink_store, "storage_predictions_prod_density"))
    sink_store.execute("DROP DATABASE bench_sink")
    del prod
    cases.append(_ingest_without_rollups(sess, batches))
    server = _server_case(store, batches[: 2 if quick else 10])
    if server is not None:
        cases.append(server)
    _log("OPTIMIZE TABLE predictions FINAL ...")
    cases.append(_storage(store))
    cases += _queries(store, end, repeats=20 if quick else 50, raw_repeats=3 if quick else 5)
    return cases
