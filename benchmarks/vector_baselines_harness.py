"""Vector-database side of `llmops bench embedding`, run ONLY by a baseline venv's python.

Started by `benchmarks.vector_baselines` (through `benchmarks.baseline.Baseline.run`) with a
JSON config on stdin:
  {"system": "milvus-lite" | "chromadb" | "usearch", "data_dir": ..., "work_dir": ...,
   "k": 10, "calls": <int>, "ef_ladder": [...], "target_recall": 0.95, "m": 32,
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
  search_k10       k-NN by vector, one call at a time, after a warm-up: the ef ladder is
                   walked until recall@k over all queries reaches ``target_recall`` (each
                   rung's recall in ``recall_ladder``), then ``calls`` timed searches at that
                   ef (cycling over the queries)
  search_k10_city  the same with an equality filter on the city (milvus-lite, chromadb;
                   usearch has no metadata filter)

Systems and settings (cosine on the same normalised vectors everywhere):
  milvus-lite  pymilvus ``MilvusClient("<work_dir>/milvus.db")``: milvus-lite 3 answers from a
               gRPC server on a thread of this process (pure Python over FAISS), so the calls
               cross a loopback gRPC hop but no process boundary. Schema id INT64 primary,
               vector FLOAT_VECTOR, city VARCHAR; index HNSW COSINE M / efConstruction; search
               param ``ef``; ``output_fields=[]``. Its WAL is not fsync'd per write (its
               default sync mode "close").
  chromadb     ``PersistentClient(path=<work_dir>/chroma)`` (the Rust core in-process,
               telemetry off), collection configuration hnsw space cosine, max_neighbors M,
               ef_construction; ``ef_search`` set by ``collection.modify`` per rung, then
               the client is reopened (a loaded index keeps the ef_search it was loaded
               with); ``query(..., include=[])``; string ids.
  usearch      ``usearch.index.Index(ndim, metric="cos", dtype="f32", connectivity=M,
               expansion_add=ef_construction)``, ``expansion_search`` per rung, ``add`` with
               its default threads (all cores), ``search(q, k)`` per query. In memory only.

Progress goes to stderr; the last stdout line is the JSON list of BENCH case dicts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


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


def summary(case: str, system: str, latencies: list[float], wall_s: float, **extra: Any
            ) -> dict[str, Any]:  # fmt: skip
    lat = sorted(latencies)
    return {
        "case": case,
        "system": system,
        "p50_ms": round(percentile(lat, 50) * 1000, 4),
        "p99_ms": round(percentile(lat, 99) * 1000, 4),
        "rps": round(len(lat) / wall_s, 1),
        "n": len(lat),
        "concurrency": 1,
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
        self.client = self.chromadb.PersistentClient(path=self.path, settings=self.settings)
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
        # client (dropping the process-wide cached system) so the new value takes effect.
        importlib.import_module("chromadb.api.client").SharedSystemClient.clear_system_cache()
        self.client = self.chromadb.PersistentClient(path=self.path, settings=self.settings)
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


def measure(config: dict[str, Any]) -> list[dict[str, Any]]:
    data = load(Path(config["data_dir"]))
    corpus: Floats = data["corpus"]
    queries: Floats = data["queries"]
    names: list[str] = config["cities"]
    cities = [names[c] for c in data["cities"].tolist()]
    query_cities = [names[c] for c in data["query_cities"].tolist()]
    k, batch = config["k"], config["batch"]
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
            system.set_ef(64)
            for i in range(min(200, len(queries))):  # warm-up
                system.search(queries[i], k, filters[i] if filters else None)
            ef, recall, rungs = ladder(system, config, queries, truth, filters)
            system.set_ef(ef)
            for i in range(min(100, len(queries))):  # warm-up again: set_ef may reload
                system.search(queries[i], k, filters[i] if filters else None)
            latencies = []
            perf = time.perf_counter
            start = perf()
            for i in range(config["calls"]):
                j = i % len(queries)
                t0 = perf()
                system.search(queries[j], k, filters[j] if filters else None)
                latencies.append(perf() - t0)
            wall = perf() - start
            out.append(summary(name, system.name, latencies, wall, recall_at_10=round(recall, 4),
                               ef_search=ef, recall_ladder=rungs, k=k, items=len(corpus),
                               via=system.via))  # fmt: skip
            log(f"{system.name}: {name} ef {ef} recall@{k} {recall:.4f} ladder {rungs}")
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
