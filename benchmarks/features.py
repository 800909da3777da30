"""``llmops bench features``: GetOnlineFeatures over gRPC with real Redis, against Feast.

Cases (output per ../shared/BENCH.md):

- ``online_1x20``: one property, the 20 features of ``property_ranking_v1`` (3 views), at
  the fixed concurrency (default 8): throughput;
- ``online_1x20_seq``: the same, one call at a time: latency without queueing;
- ``online_50x20``: 50 properties, the same 20 features, at the fixed concurrency;

each for three systems, on the same Redis and the same data (``llmops.demo.data``):

- ``llmops``: our feature service as its own process (``python -m services.feature``,
  production mode, Redis online store, access log off), called with grpc.aio from this
  process at a fixed concurrency;
- ``feast-sdk``: Feast's Python ``FeatureStore.get_online_features`` in-process (threads);
- ``feast-server``: Feast's HTTP feature server (``feast serve``), called with keep-alive
  HTTP connections from threads.

Feast runs from its own venv (``.llmops/bench/feast-venv``, created on first use; see
:mod:`benchmarks.feast_baseline`). Entity ids are drawn uniformly (seeded), the same
sequence for every system. Ratios: ``<case>.rps.llmops/<feast system>`` and the p99s.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.demo import data
from llmops.v1 import common_pb2, feature_pb2, feature_pb2_grpc

SERVICE = "property_ranking_v1"
VIEWS = ("property_stats", "property_content", "property_pricing")
TYPES = {bool: "BOOL", int: "INT64", float: "DOUBLE", str: "STRING", list: "STRING_LIST"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _key(pid: int) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(
        entity="property",
        columns=[common_pb2.KeyColumn(name="property_id", value=common_pb2.Value(int64_value=pid))],
    )


def _start_server(redis_url: str, namespace: str, state: Path, log: Any) -> tuple[Any, str]:
    return servers.start_service(
        "feature",
        {
            "LLMOPS__MODE": "production",
            "LLMOPS__STATE_DIR": str(state),
            "LLMOPS__BACKENDS__REDIS__URL": redis_url,
            "LLMOPS__BACKENDS__CLICKHOUSE__BACKEND": "chdb",  # offline store unused here
            "LLMOPS__FEATURES__NAMESPACE": namespace,
            "LLMOPS__FEATURES__RELOAD_INTERVAL_S": "0",
        },
        log,
    )


async def _load(address: str, props: data.Dataset, now_us: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        for view in VIEWS:
            columns = props[view]
            for start in range(0, len(props.keys), 5000):
                request = feature_pb2.PushFeaturesRequest(
                    feature_view=view, target=feature_pb2.PUSH_TARGET_ONLINE
                )
                for i in range(start, min(start + 5000, len(props.keys))):
                    row = request.rows.add()
                    row.entity_key.CopyFrom(_key(props.keys[i]))
                    row.event_time.FromMicroseconds(now_us)
                    for name, col in columns.items():
                        row.values[name].CopyFrom(data.to_value(col[i]))
                reply = await stub.PushFeatures(request, timeout=60)
                assert reply.online_rows == len(request.rows), reply


def _write_feast_data(props: data.Dataset, now_us: int, requests: dict[str, list[list[int]]],
                      cases: dict[str, dict[str, int]], out: Path) -> None:  # fmt: skip
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    spec: dict[str, Any] = {
        "entity": {"name": "property", "join_key": "property_id", "type": "INT64"},
        "views": [],
        "requests": requests,
        "cases": cases,
    }
    ttls = {"property_stats": 2 * 86400, "property_content": 30 * 86400, "property_pricing": 3600}
    n = len(props.keys)
    for view in VIEWS:
        columns = props[view]
        spec["views"].append(
            {
                "name": view,
                "ttl_s": ttls[view],
                "features": [
                    {"name": name, "type": TYPES[type(col[0])]} for name, col in columns.items()
                ],
            }
        )
        table = pa.table(
            {
                "property_id": pa.array(props.keys, pa.int64()),
                "event_timestamp": pa.array([now_us] * n, pa.timestamp("us", tz="UTC")),
                **{name: pa.array(col) for name, col in columns.items()},
            }
        )
        pq.write_table(table, out / f"{view}.parquet")
    (out / "spec.json").write_text(json.dumps(spec))


def _requests(n_props: int, n: int, per_call: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(1, n_props) for _ in range(per_call)] for _ in range(n)]


async def _drive(stub: Any, requests: list[Any], concurrency: int, case: Case) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        perf = time.perf_counter
        while queue:
            request = queue.pop()
            t0 = perf()
            reply = await stub.GetOnlineFeatures(request, timeout=5)
            case.latencies_s.append(perf() - t0)
            assert len(reply.rows) == len(request.entity_keys)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    case.wall_s += time.perf_counter() - start


async def _measure(
    address: str,
    shapes: dict[str, list[list[int]]],
    per_case: dict[str, dict[str, int]],
    concurrency: int,
    warmup: int,
) -> list[Case]:
    cases = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        for name, id_lists in shapes.items():
            requests = []
            for ids in id_lists:
                req = feature_pb2.GetOnlineFeaturesRequest(feature_service=SERVICE)
                req.entity_keys.extend(_key(i) for i in ids)
                requests.append(req)
            probe = await stub.GetOnlineFeatures(requests[0], timeout=5)
            present = sum(
                v.status == feature_pb2.FEATURE_STATUS_PRESENT for v in probe.rows[0].values
            )
            conc = per_case.get(name, {}).get("concurrency", concurrency)
            await _drive(stub, requests[:warmup], conc, Case(name, "warmup"))
            case = Case(name, "llmops", concurrency=conc)
            await _drive(stub, requests, conc, case)
            case.extra = {"features": 20, "entities": len(id_lists[0]), "present_in_first": present}
            cases.append(case)
    return cases


def main(*, quick: bool, concurrency: int = 8, calls: int | None = None) -> None:
    from benchmarks.feast_baseline import run_feast_baseline

    n_props = 10_000 if quick else 100_000
    calls = calls or (1_500 if quick else 20_000)
    now_us = time.time_ns() // 1000
    seq_calls = max(calls // 4, 300)
    shapes = {
        "online_1x20": _requests(n_props, calls, 1, seed=1),
        "online_1x20_seq": _requests(n_props, seq_calls, 1, seed=3),
        "online_50x20": _requests(n_props, max(calls // 5, 300), 50, seed=2),
    }
    per_case = {
        name: {"calls": len(ids), "concurrency": 1 if name.endswith("_seq") else concurrency}
        for name, ids in shapes.items()
    }
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-features-"))
    namespace = f"bench:{uuid.uuid4().hex[:8]}"
    summaries: list[dict[str, Any]] = []
    try:
        with servers.redis() as (host, port), (tmp / "server.log").open("w") as log:
            redis_url = f"redis://{host}:{port}/0"
            _log(f"generating {n_props:,} properties ...")
            props = data.properties(n_props, seed=7)
            proc, address = _start_server(redis_url, namespace, tmp / "state", log)
            try:
                _log("loading them through PushFeatures ...")
                asyncio.run(_load(address, props, now_us))
                _log(f"measuring llmops ({calls:,} calls per case, concurrency {concurrency}) ...")
                ours = asyncio.run(
                    _measure(address, shapes, per_case, concurrency, max(calls // 20, 50))
                )
            finally:
                proc.terminate()
                proc.wait(30)
            summaries += [c.summary() for c in ours]
            feast_dir = tmp / "feast-data"
            feast_dir.mkdir()
            _write_feast_data(props, now_us, shapes, per_case, feast_dir)
            _log("measuring Feast (its own venv) ...")
            summaries += run_feast_baseline(
                redis_host=host,
                redis_port=port,
                data_dir=feast_dir,
                quick=quick,
                concurrency=concurrency,
                calls=calls,
                log=_log,
            )
            _cleanup(redis_url, namespace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit("features", summaries, _ratios(summaries))


def _ratios(summaries: list[dict[str, Any]]) -> dict[str, float]:
    by = {(c["case"], c["system"]): c for c in summaries}
    ratios: dict[str, float] = {}
    for case, system in list(by):
        if system != "llmops":
            continue
        ours = by[(case, system)]
        for other in ("feast-sdk", "feast-server"):
            theirs = by.get((case, other))
            if theirs and theirs.get("rps"):
                ratios[f"{case}.rps.llmops/{other}"] = round(ours["rps"] / theirs["rps"], 2)
                ratios[f"{case}.p99_ms.{other}/llmops"] = round(
                    theirs["p99_ms"] / ours["p99_ms"], 2
                )
    return ratios


def _cleanup(redis_url: str, namespace: str) -> None:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{namespace}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()
