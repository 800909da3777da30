"""Vector-database side of `llmops bench embedding`, run ONLY by a baseline venv's python.

Started by `benchmarks.vector_baselines` (through `benchmarks.baseline.Baseline.run`) with a
JSON config on stdin:
  {"system": "milvus-lite" | "chromadb" | "chromadb-server" | "usearch", "data_dir": ...,
   "work_dir": ..., "k": 10, "calls": <int>, "max_s": <float | null>, "warmup": <int>,
   "concurrency": 8, "ef_ladder": [...], "target_recall": 0.95, "m": 32,
   "ef_construction": 64, "batch": 1000, "cities": [...]}
``data_dir`` holds the bench's arrays as .npy: corpus (n, d) float32 L2-normalised, queries
(q, d), cities (n,) and query_cities (q,) as indices into ``cities``, truth and city_truth
(q, k) corpus indices of the exact top-k (unfiltered / among the query's city). Item ids are
the corpus indices. It must not import llmops: only the stdlib, numpy and the system; the
systems are imported through importlib (typed Any) so that this file type-checks (mypy
strict) in the project venv, where they are absent.

What is measured, per system, the same way as the llmops side:
  upsert_b1000     inserts of ``batch`` vectors (with their city) per call; items/s over the
                   time spent in the calls, plus what it takes to make them searchable through
                   the index (milvus-lite: flush, which builds the segment's HNSW: ``ready_s``;
                   ``items_per_s_incl_ready`` counts it, as ours indexes before it acknowledges)
  search_k10       k-NN by vector, one call at a time, after ``warmup`` searches: the ef ladder
                   is walked until recall@k over all queries reaches ``target_recall`` (each
                   rung's recall in ``recall_ladder``), then ``calls`` timed searches at that
                   ef (cycling over the queries), or fewer when ``max_s`` (``--quick`` only;
                   null in the full run) runs out first: ``n`` says how many
  search_k10_c8    the same searches at the same ef from ``concurrency`` (8) threads of this
                   process at once, each taking the next query (``calls`` in all, or until
                   ``max_s``): rps = searches / wall time, latency per call as its thread saw
                   it; the GIL is the system's own business (usearch, chromadb's Rust core and
                   pymilvus' gRPC release it while they wait or compute)
  search_k10_city  the same as search_k10 with an equality filter on the city (milvus-lite,
                   chromadb, chromadb-server; usearch has no metadata filter)
The warm-ups run at whatever ef the system has at the time (a change of ef may reopen the
store, see chromadb), and again (``warmup`` // 2) at the chosen ef before the timed calls.

Systems and settings (cosine on the same normalised vectors everywhere):
  milvus-lite      pymilvus ``MilvusClient("<work_dir>/milvus.db")``: milvus-lite 3 answers
                   from a gRPC server on a thread of this process (pure Python over FAISS), so
                   the calls cross a loopback gRPC hop but no process boundary. Schema id INT64
                   primary, vector FLOAT_VECTOR, city VARCHAR; index HNSW COSINE M /
                   efConstruction; search param ``ef``; ``output_fields=[]``. Its WAL is not
                   fsync'd per write (its default sync mode "close").
  chromadb         ``PersistentClient(path=<work_dir>/chroma)`` (the Rust core in-process,
                   telemetry off), collection configuration hnsw space cosine, max_neighbors
                   M, ef_construction; ``ef_search`` set by ``collection.modify`` per rung,
                   then the client is reopened (a loaded index keeps the ef_search it was
                   loaded with); ``query(..., include=[])``; string ids.
  chromadb-server  the same collection, calls and settings through ``chromadb.HttpClient`` to
                   the server chromadb's pip package ships (``<venv>/bin/chroma run --path
                   <work_dir>/chroma-server --host 127.0.0.1 --port <free port>``: its Rust
                   frontend, HTTP/1.1 + JSON), a child process of this harness on loopback, the
                   like-for-like of ours (a client process and a server process on the same 2
                   cores). ``RUST_LOG=warn``: its per-request INFO log is off, as our access
                   log is in the bench; its output goes to ``<work_dir>/chroma-server.log``.
                   Started, then its ``/api/v2/heartbeat`` polled until it answers (60 s at
                   most); a running server does not apply ``modify(ef_search)`` to the index it
                   has loaded (measured: recall unchanged until a restart), so each change of
                   ef restarts it on the same data dir (~0.7 s). It is always stopped:
                   SIGTERM, a bounded wait, then SIGKILL, from ``close()`` (the harness'
                   ``finally``) and from a failed start; and the kernel sends it SIGKILL if
                   this harness dies first (``PR_SET_PDEATHSIG``).
  usearch          ``usearch.index.Index(ndim, metric="cos", dtype="f32", connectivity=M,
                   expansion_add=ef_construction)``, ``expansion_search`` per rung, ``add``
                   with its default threads (all cores), ``search(q, k)`` per query. In memory
                   only.

Progress goes to stderr (with each phase's seconds); the last stdout line is the JSON list of
BENCH case dicts.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
LOOPBACK = "127.0.0.1"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same rule as benchmarks.report.percentile)."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def recall_at_k(found: Sequence[Sequence[int]], truth: Ints) -> float:
    """Mean over queries of |found[i][:k] & truth[i]| / k (as benchmarks.embedding)."""
    k = int(truth.shape[1])
    hits = sum(len(set(list(f)[:k]) & set(t)) for f, t in zip(found, truth.tolist(), strict=True))
    return float(hits / (k * len(truth)))


def summary(case: str, system: str, latencies: list[float], wall_s: float,
            concurrency: int = 1, **extra: Any) -> dict[str, Any]:  # fmt: skip
    lat = sorted(latencies)
    return {
        "case": case,
        "system": system,
        "p50_ms": round(percentile(lat, 50) * 1000, 4),
        "p99_ms": round(percentile(lat, 99) * 1000, 4),
        "rps": round(len(lat) / wall_s, 1),
        "n": len(lat),
        "concurrency": concurrency,
        **extra,
    }


class System:
    """One vector store under test; subclasses implement the four operations."""

    name = ""
    filters = True
    via = "in-process"
    durability = ""
    """What an acknowledged insert survives, as far as the system documents it."""

    def insert(self, ids: Ints, vectors: Floats, cities: list[str]) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        """Make everything inserted searchable through the index (default: nothing to do)."""

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def search(self, query: Floats, k: int, city: str | None) -> list[int]:
        """Ids of the k nearest, best first; safe to call from several threads at once."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store (default: nothing)."""


class Usearch(System):
    name = "usearch"
    filters = False
    durability = "none: in memory (save() is the caller's)"

    def __init__(self, config: dict[str, Any], dimension: int) -> None:
        index_module: Any = importlib.import_module("usearch.index")
        self.index = index_module.Index(
            ndim=dimension,
            metric="cos",
            dtype="f32",
            connectivity=config["m"],
            expansion_add=config["ef_construction"],
        )

    def insert(self, ids: Ints, vectors: Floats, cities: list[str]) -> None:
        self.index.add(ids, vectors)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, query: Floats, k: int, city: str | None) -> list[int]:
        keys: list[int] = self.index.search(query, k).keys.tolist()
        return keys


class Chroma(System):
    name = "chromadb"
    collection_name = "bench_search"
    durability = "its default (PersistentClient: SQLite log; fsync per write not verified)"

    def __init__(self, config: dict[str, Any], dimension: int) -> None:
        self.chromadb: Any = importlib.import_module("chromadb")
        self.settings = importlib.import_module("chromadb.config").Settings(
            anonymized_telemetry=False
        )
        self.path = str(Path(config["work_dir"]) / "chroma")
        self.client = self.connect()
        self.ef = 64
        hnsw = {
            "space": "cosine",
            "max_neighbors": config["m"],
            "ef_construction": config["ef_construction"],
            "ef_search": self.ef,
        }
        self.collection = self.client.create_collection(
            self.collection_name, configuration={"hnsw": hnsw}, embedding_function=None
        )

    def connect(self) -> Any:
        return self.chromadb.PersistentClient(path=self.path, settings=self.settings)

    def reopen(self) -> None:
        """Drop the client (and the process-wide cached system) and open it again."""
        importlib.import_module("chromadb.api.client").SharedSystemClient.clear_system_cache()
        self.client = self.connect()

    def insert(self, ids: Ints, vectors: Floats, cities: list[str]) -> None:
        self.collection.add(
            ids=[str(i) for i in ids.tolist()],
            embeddings=vectors,
            metadatas=[{"city": c} for c in cities],
        )

    def set_ef(self, ef: int) -> None:
        if ef == self.ef:
            return
        self.collection.modify(configuration={"hnsw": {"ef_search": ef}})
        # A loaded index keeps the ef_search it was loaded with (chromadb 1.5.9): reopen the
        # client (the server: restart it) so the new value takes effect.
        self.reopen()
        self.collection = self.client.get_collection(self.collection_name, embedding_function=None)
        self.ef = ef

    def search(self, query: Floats, k: int, city: str | None) -> list[int]:
        reply = self.collection.query(
            query_embeddings=query[None, :],
            n_results=k,
            include=[],
            where={"city": city} if city is not None else None,
        )
        return [int(i) for i in reply["ids"][0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the harness dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class ChromaServer(Chroma):
    """chromadb through HTTP to its own server (``chroma run``), a child process."""

    name = "chromadb-server"
    via = "chromadb.HttpClient -> HTTP to a `chroma run` server process on loopback"
    durability = "its default (`chroma run`: SQLite log; fsync per write not verified)"
    START_S = 60.0
    STOP_S = 10.0

    def __init__(self, config: dict[str, Any], dimension: int) -> None:
        self.cli = Path(sys.executable).with_name("chroma")
        if not self.cli.exists():
            raise RuntimeError(f"no chroma CLI at {self.cli}: chromadb's server cannot run")
        work = Path(config["work_dir"])
        self.data_dir = work / "chroma-server"
        self.log_path = work / "chroma-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        try:
            super().__init__(config, dimension)  # connect() starts the server
        except BaseException:
            self.stop_server()
            raise

    def start_server(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "RUST_LOG": "warn"}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.cli), "run", "--path", str(self.data_dir), "--host", LOOPBACK,
                 "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        t0 = time.perf_counter()
        try:
            self.wait_for_heartbeat(self.proc)
        except BaseException:
            self.stop_server()
            raise
        log(f"{self.name}: server up on {LOOPBACK}:{self.port} in "
            f"{time.perf_counter() - t0:.2f} s")  # fmt: skip

    def wait_for_heartbeat(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll ``/api/v2/heartbeat`` until it answers 200; RuntimeError if the server exits
        or ``START_S`` passes first."""
        url = f"http://{LOOPBACK}:{self.port}/api/v2/heartbeat"
        deadline = time.perf_counter() + self.START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"chroma run exited at start (code {proc.returncode}): "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"chroma run gave no heartbeat within {self.START_S:g} s")
            time.sleep(0.05)

    def stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.STOP_S)
        except subprocess.TimeoutExpired:
            log(f"{self.name}: server ignored SIGTERM for {self.STOP_S:.0f} s: SIGKILL")
            proc.kill()
            proc.wait(self.STOP_S)

    def connect(self) -> Any:
        self.start_server()
        # fresh settings: HttpClient writes the port into the ones it is given
        settings = importlib.import_module("chromadb.config").Settings(anonymized_telemetry=False)
        return self.chromadb.HttpClient(host=LOOPBACK, port=self.port, settings=settings)

    def reopen(self) -> None:
        self.stop_server()
        super().reopen()

    def close(self) -> None:
        self.stop_server()


class MilvusLite(System):
    name = "milvus-lite"
    via = "pymilvus -> gRPC on a thread of the same process"
    collection = "bench_search"
    durability = "its default: WAL without fsync per write (sync mode 'close')"

    def __init__(self, config: dict[str, Any], dimension: int) -> None:
        pymilvus: Any = importlib.import_module("pymilvus")
        self.client = pymilvus.MilvusClient(str(Path(config["work_dir"]) / "milvus.db"))
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("city", pymilvus.DataType.VARCHAR, max_length=64)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": config["m"], "efConstruction": config["ef_construction"]},
        )
        self.client.create_collection(self.collection, schema=schema, index_params=index)
        self.ef = 64

    def insert(self, ids: Ints, vectors: Floats, cities: list[str]) -> None:
        rows = [
            {"id": i, "vector": v, "city": c}
            for i, v, c in zip(ids.tolist(), vectors.tolist(), cities, strict=True)
        ]
        self.client.insert(self.collection, rows)

    def ready(self) -> None:
        # sealed segments get their HNSW at flush; the memtable is searched by brute force
        self.client.flush(self.collection)
        self.client.load_collection(self.collection)

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search(self, query: Floats, k: int, city: str | None) -> list[int]:
        reply = self.client.search(
            self.collection,
            data=[query.tolist()],
            limit=k,
            filter=f'city == "{city}"' if city is not None else "",
            output_fields=[],
            search_params={"metric_type": "COSINE", "params": {"ef": self.ef}},
        )
        return [int(hit["id"]) for hit in reply[0]]

    def close(self) -> None:
        self.client.close()


SYSTEMS: dict[str, Callable[[dict[str, Any], int], System]] = {
    "usearch": Usearch,
    "chromadb": Chroma,
    "chromadb-server": ChromaServer,
    "milvus-lite": MilvusLite,
}


def load(data_dir: Path) -> dict[str, Any]:
    return {
        name: np.load(data_dir / f"{name}.npy")
        for name in ("corpus", "queries", "cities", "query_cities", "truth", "city_truth")
    }


def ladder(system: System, config: dict[str, Any], queries: Floats, truth: Ints,
           cities: list[str] | None) -> tuple[int, float, dict[str, float]]:  # fmt: skip
    """The first ef whose recall reaches the target (else the last), its recall, all rungs."""
    rungs: dict[str, float] = {}
    recall = 0.0
    ef = config["ef_ladder"][-1]
    for ef in config["ef_ladder"]:
        system.set_ef(ef)
        found = [
            system.search(q, config["k"], cities[i] if cities else None)
            for i, q in enumerate(queries)
        ]
        recall = recall_at_k(found, truth)
        rungs[str(ef)] = round(recall, 4)
        if recall >= config["target_recall"]:
            break
    return ef, recall, rungs


def sequential(call: Callable[[int], object], calls: int, max_s: float | None
               ) -> tuple[list[float], float]:  # fmt: skip
    """``call(i)`` for i = 0.. one at a time, ``calls`` times or until ``max_s`` has passed:
    (latencies, wall seconds)."""
    latencies: list[float] = []
    perf = time.perf_counter
    start = perf()
    deadline = start + max_s if max_s else float("inf")
    for i in range(calls):
        t0 = perf()
        call(i)
        t1 = perf()
        latencies.append(t1 - t0)
        if t1 >= deadline:
            break
    return latencies, perf() - start


def concurrent(call: Callable[[int], object], calls: int, max_s: float | None, threads: int
               ) -> tuple[list[float], float]:  # fmt: skip
    """``call(i)`` from ``threads`` threads at once, each taking the next i, ``calls`` in all
    or until ``max_s`` has passed: (latencies, wall seconds from the start to the last)."""
    counter = itertools.count()  # next() is atomic under the GIL
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    perf = time.perf_counter
    go = threading.Barrier(threads + 1)
    deadline = [float("inf")]
    errors: list[BaseException] = []

    def worker(mine: list[float]) -> None:
        go.wait()
        try:
            while (i := next(counter)) < calls:
                t0 = perf()
                call(i)
                t1 = perf()
                mine.append(t1 - t0)
                if t1 >= deadline[0]:
                    break
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(mine,), daemon=True) for mine in per_thread]
    for t in pool:
        t.start()
    start = perf()
    deadline[0] = start + max_s if max_s else float("inf")
    go.wait()
    for t in pool:
        t.join()
    wall = perf() - start
    if errors:
        raise errors[0]
    return [x for mine in per_thread for x in mine], wall


def measure(config: dict[str, Any]) -> list[dict[str, Any]]:
    data = load(Path(config["data_dir"]))
    corpus: Floats = data["corpus"]
    queries: Floats = data["queries"]
    names: list[str] = config["cities"]
    cities = [names[c] for c in data["cities"].tolist()]
    query_cities = [names[c] for c in data["query_cities"].tolist()]
    k, batch = config["k"], config["batch"]
    calls, max_s = int(config["calls"]), config.get("max_s")
    warmup, threads = int(config["warmup"]), int(config["concurrency"])
    started = time.perf_counter()
    system = SYSTEMS[config["system"]](config, corpus.shape[1])
    log(f"{system.name}: opened in {time.perf_counter() - started:.2f} s")
    out = []
    try:
        latencies = []
        ids = np.arange(len(corpus), dtype=np.int64)
        for s in range(0, len(corpus), batch):
            e = min(s + batch, len(corpus))
            t0 = time.perf_counter()
            system.insert(ids[s:e], corpus[s:e], cities[s:e])
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        system.ready()
        ready_s = time.perf_counter() - t0
        inserted_s = sum(latencies)
        out.append(summary("upsert_b1000", system.name, latencies, inserted_s,
                           items_per_s=round(len(corpus) / inserted_s, 1), batch=batch,
                           ready_s=round(ready_s, 3),
                           items_per_s_incl_ready=round(len(corpus) / (inserted_s + ready_s), 1),
                           durability=system.durability))  # fmt: skip
        log(f"{system.name}: inserted {len(corpus):,} in {inserted_s:.2f} s (+{ready_s:.2f} s)")
        cases: list[tuple[str, Ints, list[str] | None]] = [("search_k10", data["truth"], None)]
        if system.filters:
            cases.append(("search_k10_city", data["city_truth"], query_cities))
        for name, truth, filters in cases:
            phase = time.perf_counter()

            def search(i: int, filters: list[str] | None = filters) -> list[int]:
                j = i % len(queries)
                return system.search(queries[j], k, filters[j] if filters else None)

            for i in range(min(warmup, len(queries))):  # at the current ef: see the docstring
                search(i)
            ef, recall, rungs = ladder(system, config, queries, truth, filters)
            system.set_ef(ef)
            for i in range(min(warmup // 2, len(queries))):  # again: set_ef may reopen
                search(i)
            tuned = time.perf_counter()
            latencies, wall = sequential(search, calls, max_s)
            common = dict(recall_at_10=round(recall, 4), ef_search=ef, k=k, items=len(corpus),
                          via=system.via)  # fmt: skip
            out.append(summary(name, system.name, latencies, wall, recall_ladder=rungs,
                               **common))  # fmt: skip
            log(f"{system.name}: {name} ef {ef} recall@{k} {recall:.4f} ladder {rungs}; "
                f"warm-up + ladder {tuned - phase:.2f} s, {len(latencies)} calls "
                f"{wall:.2f} s")  # fmt: skip
            if filters is None:
                concurrent(search, threads * 4, None, threads)  # warm-up: the threads' first
                latencies, wall = concurrent(search, calls, max_s, threads)
                out.append(summary(f"search_k10_c{threads}", system.name, latencies, wall,
                                   concurrency=threads, **common))  # fmt: skip
                log(f"{system.name}: search_k10_c{threads} {len(latencies)} calls {wall:.2f} s")
    finally:
        system.close()
    return out


def main() -> None:
    config = json.load(sys.stdin)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb: nothing leaves the box
    cases = measure(config)
    print(json.dumps(cases), flush=True)


if __name__ == "__main__":
    main()
