"""Feast side of `llmops bench features`, run ONLY by the Feast venv's python.

Started by `benchmarks.feast_baseline` with a JSON config on stdin:
  {"redis_host", "redis_port", "data_dir", "quick", "concurrency", "calls"}
It must not import llmops: only the stdlib and what `feast[redis]` installs. Feast, pandas and
pyarrow are imported through importlib so that this file still type-checks (mypy strict) in the
project venv, where they are absent or untyped.

Steps: write a Feast repo (file registry, file offline store, Redis online store) in a temp dir,
apply the entity, the 3 feature views and the `bench_all` feature service through the Python
API, load the parquet data with `write_to_online_store`, then measure
  feast-sdk:    FeatureStore.get_online_features(...).to_dict() from `concurrency` threads
                sharing one FeatureStore;
  feast-server: POST /get-online-features on `feast serve` (1 worker), one persistent
                http.client.HTTPConnection per thread, response read and JSON-decoded;
for every case of spec.json's "requests" (each call takes the next entity-id list, cycling).
Progress goes to stderr; the last stdout line is the JSON list of BENCH case dicts.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

PROJECT = "llmops_bench"
FEATURE_SERVICE = "bench_all"
SERVER_START_TIMEOUT_S = 90.0
LOAD_CHUNK_ROWS = 50_000

feast: Any = importlib.import_module("feast")
feast_types: Any = importlib.import_module("feast.types")
pd: Any = importlib.import_module("pandas")
pq: Any = importlib.import_module("pyarrow.parquet")

FEAST_TYPES: dict[str, Any] = {
    "INT64": feast_types.Int64,
    "DOUBLE": feast_types.Float64,
    "STRING": feast_types.String,
    "BOOL": feast_types.Bool,
    "STRING_LIST": feast_types.Array(feast_types.String),
}


def log(msg: str) -> None:
    print(f"feast: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the same formula as benchmarks.report.percentile."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summary(
    case: str, system: str, latencies: list[float], wall_s: float, concurrency: int, **extra: Any
) -> dict[str, Any]:
    lat = sorted(latencies)
    return {
        "case": case,
        "system": system,
        "p50_ms": round(percentile(lat, 50) * 1000, 4),
        "p99_ms": round(percentile(lat, 99) * 1000, 4),
        "rps": round(len(lat) / wall_s, 1) if wall_s else None,
        "n": len(lat),
        "concurrency": concurrency,
        **extra,
    }


# ----------------------------------------------------------------------------- repo + data


def write_repo(repo: Path, redis_host: str, redis_port: int) -> None:
    # JSON is valid YAML: no yaml dependency needed and every value is quoted safely.
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(repo / "registry.db")},
        "offline_store": {"type": "file"},
        "online_store": {"type": "redis", "connection_string": f"{redis_host}:{redis_port}"},
        "entity_key_serialization_version": 3,
    }
    (repo / "feature_store.yaml").write_text(json.dumps(config, indent=2) + "\n")


def build_objects(spec: dict[str, Any], data_dir: Path) -> tuple[list[Any], list[str]]:
    """Entity, feature views and feature service of the spec; plus the 'view:feature' refs."""
    ent = spec["entity"]
    join_key = ent["join_key"]
    entity = feast.Entity(
        name=ent["name"],
        join_keys=[join_key],
        value_type=getattr(feast.ValueType, ent["type"]),
    )
    views = []
    refs = []
    for view in spec["views"]:
        source = feast.FileSource(
            name=f"{view['name']}_source",
            path=str((data_dir / f"{view['name']}.parquet").resolve()),
            timestamp_field="event_timestamp",
        )
        schema = [feast.Field(name=join_key, dtype=FEAST_TYPES[ent["type"]])]
        schema += [
            feast.Field(name=f["name"], dtype=FEAST_TYPES[f["type"]]) for f in view["features"]
        ]
        views.append(
            feast.FeatureView(
                name=view["name"],
                entities=[entity],
                ttl=timedelta(seconds=view["ttl_s"]),
                schema=schema,
                source=source,
                online=True,
            )
        )
        refs += [f"{view['name']}:{f['name']}" for f in view["features"]]
    service = feast.FeatureService(name=FEATURE_SERVICE, features=views)
    return [entity, *views, service], refs


def load_data(store: Any, spec: dict[str, Any], data_dir: Path) -> None:
    for view in spec["views"]:
        started = time.perf_counter()
        df = pd.read_parquet(data_dir / f"{view['name']}.parquet")
        for start in range(0, len(df), LOAD_CHUNK_ROWS):
            store.write_to_online_store(view["name"], df.iloc[start : start + LOAD_CHUNK_ROWS])
        log(f"loaded {view['name']}: {len(df)} rows in {time.perf_counter() - started:.2f} s")


def expected_row(spec: dict[str, Any], data_dir: Path, entity_id: int) -> dict[str, Any]:
    """Feature values of one entity straight from the parquet files (python natives)."""
    join_key = spec["entity"]["join_key"]
    row: dict[str, Any] = {}
    for view in spec["views"]:
        table = pq.read_table(data_dir / f"{view['name']}.parquet")
        ids = table.column(join_key).to_pylist()
        values = table.slice(ids.index(entity_id), 1).to_pylist()[0]
        row.update({f["name"]: values[f["name"]] for f in view["features"]})
    return row


def same_value(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(want, list):
        return isinstance(got, list | tuple) and list(got) == want
    return bool(got == want)


def check_values(system: str, got: dict[str, Any], want: dict[str, Any]) -> None:
    bad = {k: (got.get(k), v) for k, v in want.items() if not same_value(got.get(k), v)}
    if bad:
        raise RuntimeError(f"{system}: values differ from the parquet rows (got, want): {bad}")


# ----------------------------------------------------------------------------- load generator


def run_load(
    call: Callable[[int], None], n_calls: int, concurrency: int
) -> tuple[list[float], float]:
    """n_calls calls of call(i) (i = global call index) from `concurrency` threads.

    Returns the per-call latencies (caller side) and the wall time of the phase. The first
    exception of any thread is re-raised after all threads stop.
    """
    counter = iter(range(n_calls))
    lock = threading.Lock()
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    start_gate = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        lat = per_thread[slot]
        start_gate.wait()
        while not errors:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                call(i)
            except BaseException as exc:
                errors.append(exc)
                return
            lat.append(time.perf_counter() - t0)

    threads = [
        threading.Thread(target=worker, args=(slot,), name=f"load-{slot}", daemon=True)
        for slot in range(concurrency)
    ]
    for t in threads:
        t.start()
    start_gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [x for lat in per_thread for x in lat], wall


def warmup_calls(calls: int) -> int:
    return max(3, calls // 20)


# ----------------------------------------------------------------------------- SDK


def bench_sdk(
    store: Any,
    refs: list[str],
    join_key: str,
    requests: dict[str, list[list[int]]],
    calls: int,
    concurrency: int,
    per_case: dict[str, dict[str, int]],
) -> tuple[dict[str, tuple[list[float], float, int]], str | None]:
    """Measure get_online_features; per case (latencies, wall, concurrency used), fallback.

    Thread safety: FeatureStore has no documented thread-safety guarantee. In practice
    get_online_features from several threads on one store works on this version: the registry
    is a cached proto (refreshed under a lock), and the Redis online store lazily creates one
    redis.Redis client whose connection pool is thread-safe. Any exception in the threaded run
    falls back to concurrency 1 and the reason is reported as `sdk_thread_fallback`.
    """
    results: dict[str, tuple[list[float], float, int]] = {}
    fallback: str | None = None
    for case, id_lists in requests.items():
        used = per_case.get(case, {}).get("concurrency", concurrency)
        n = per_case.get(case, {}).get("calls", calls)
        rows = [[{join_key: i} for i in ids] for ids in id_lists]
        sizes = [len(ids) for ids in id_lists]

        def call(i: int, rows: list[list[dict[str, int]]] = rows, sizes: list[int] = sizes) -> None:
            k = i % len(rows)
            out = store.get_online_features(features=refs, entity_rows=rows[k]).to_dict()
            if len(out[join_key]) != sizes[k]:
                raise RuntimeError(f"got {len(out[join_key])} rows for {sizes[k]} entities")

        while True:
            try:
                run_load(call, warmup_calls(n), used)
                results[case] = (*run_load(call, n, used), used)
                break
            except Exception as exc:
                if used == 1:
                    raise
                fallback = f"{type(exc).__name__}: {exc}"
                log(f"sdk failed at concurrency {used} ({fallback}); falling back to 1")
                used = 1
        lat, wall, _ = results[case]
        log(f"sdk {case}: {len(lat)} calls in {wall:.2f} s at concurrency {used}")
    return results, fallback


# ----------------------------------------------------------------------------- feature server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def feature_server(repo: Path, log_path: Path) -> Iterator[int]:
    """`feast serve` (gunicorn + 1 uvicorn worker) on a free port; stopped on exit."""
    port = free_port()
    feast_cli = Path(sys.executable).with_name("feast")
    cmd = [
        str(feast_cli),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--workers",
        "1",
        # Gunicorn recycles the worker every ~1000 requests by default (feast's defaults):
        # a restart mid-measurement would show up as a latency cliff that says nothing about
        # serving, so recycling is off.
        "--max-requests",
        "0",
        "--max-requests-jitter",
        "0",
    ]
    with open(log_path, "wb") as server_log:
        proc = subprocess.Popen(
            cmd,
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(proc, port, log_path)
        yield port
    finally:
        stop_server(proc)


def server_log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    started = time.monotonic()
    deadline = started + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"feast serve exited with {proc.returncode}:\n{server_log_tail(log_path)}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                log(f"feature server up on :{port} in {time.monotonic() - started:.1f} s")
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(
        f"feast serve not ready after {SERVER_START_TIMEOUT_S:.0f} s:\n{server_log_tail(log_path)}"
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # gunicorn master: graceful stop of its worker
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    # The server runs in its own session (process group == its pid): take the worker too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class HttpClient:
    """One keep-alive connection per thread to the feature server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.local.conn = conn
        return conn

    def post(self, path: str, body: bytes) -> Any:
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                # The server closed an idle keep-alive connection: reconnect once.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data[:300]!r}")
            return json.loads(data)
        raise AssertionError("unreachable")


def server_row(resp: dict[str, Any], index: int) -> dict[str, Any]:
    """Feature name -> value of entity `index` in a /get-online-features JSON response."""
    names = resp["metadata"]["feature_names"]
    return {
        name: result["values"][index] for name, result in zip(names, resp["results"], strict=True)
    }


def bench_server(
    client: HttpClient,
    refs: list[str],
    join_key: str,
    requests: dict[str, list[list[int]]],
    calls: int,
    concurrency: int,
    per_case: dict[str, dict[str, int]],
) -> dict[str, tuple[list[float], float, int]]:
    results: dict[str, tuple[list[float], float, int]] = {}
    for case, id_lists in requests.items():
        conc = per_case.get(case, {}).get("concurrency", concurrency)
        n = per_case.get(case, {}).get("calls", calls)
        bodies = [
            json.dumps({"features": refs, "entities": {join_key: ids}}).encode() for ids in id_lists
        ]
        sizes = [len(ids) for ids in id_lists]

        def call(i: int, bodies: list[bytes] = bodies, sizes: list[int] = sizes) -> None:
            k = i % len(bodies)
            out = client.post("/get-online-features", bodies[k])
            if len(out["results"][0]["values"]) != sizes[k]:
                raise RuntimeError(f"got {len(out['results'][0]['values'])} rows for {sizes[k]}")

        run_load(call, warmup_calls(n), conc)
        results[case] = (*run_load(call, n, conc), conc)
        lat, wall, _ = results[case]
        log(f"server {case}: {len(lat)} calls in {wall:.2f} s at concurrency {conc}")
    return results


# ----------------------------------------------------------------------------- main


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    data_dir = Path(cfg["data_dir"])
    spec = json.loads((data_dir / "spec.json").read_text())
    calls = int(cfg["calls"])
    concurrency = max(1, int(cfg["concurrency"]))
    join_key = spec["entity"]["join_key"]
    requests: dict[str, list[list[int]]] = spec["requests"]
    # Optional per-case overrides, e.g. {"online_1x20_seq": {"concurrency": 1, "calls": 500}}.
    per_case: dict[str, dict[str, int]] = spec.get("cases", {})
    version = str(feast.__version__)
    log(f"feast {version}, redis {cfg['redis_host']}:{cfg['redis_port']}, calls {calls}")

    with tempfile.TemporaryDirectory(prefix="llmops-feast-") as tmp:
        repo = Path(tmp)
        write_repo(repo, cfg["redis_host"], int(cfg["redis_port"]))
        objects, refs = build_objects(spec, data_dir)
        started = time.perf_counter()
        store = feast.FeatureStore(repo_path=str(repo))
        store.apply(objects)
        log(f"applied {len(refs)} features in {time.perf_counter() - started:.2f} s")
        load_data(store, spec, data_dir)

        known_id = next(ids[0] for id_lists in requests.values() for ids in id_lists if ids)
        want = expected_row(spec, data_dir, known_id)
        sdk_out = store.get_online_features(
            features=refs, entity_rows=[{join_key: known_id}]
        ).to_dict()
        check_values("feast-sdk", {k: v[0] for k, v in sdk_out.items()}, want)

        sdk, fallback = bench_sdk(store, refs, join_key, requests, calls, concurrency, per_case)

        with feature_server(repo, repo / "feast-serve.log") as port:
            client = HttpClient(port)
            body = json.dumps({"features": refs, "entities": {join_key: [known_id]}}).encode()
            check_values(
                "feast-server", server_row(client.post("/get-online-features", body), 0), want
            )
            server = bench_server(client, refs, join_key, requests, calls, concurrency, per_case)

    extra: dict[str, Any] = {"feast_version": version, "values_checked": True}
    cases = []
    for case in requests:
        lat, wall, used = sdk[case]
        sdk_extra = dict(extra)
        if used != per_case.get(case, {}).get("concurrency", concurrency):
            sdk_extra["sdk_thread_fallback"] = fallback
        cases.append(summary(case, "feast-sdk", lat, wall, used, **sdk_extra))
        cases.append(summary(case, "feast-server", *server[case], **extra))
    return cases


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    out = sys.stdout
    # Anything Feast (or its dependencies) prints must not land after our JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        cases = run(cfg)
    print(json.dumps(cases), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
