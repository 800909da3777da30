"""``llmops bench embedding``: the Embed path, and vector search against vector databases.

Embed cases, on storefront-like texts (synthetic property descriptions, 15-40 words):
  embed_batch32   texts/s of sequential calls of 32 texts: ``onnxruntime`` = the same
                  encoder (tokenizer + int8 ONNX + mean pooling) called in-process, ``llmops``
                  = Embed through gRPC on an embedding service of its own (a process, the same
                  2 intra-op threads); interleaved rounds; ratio llmops/onnxruntime
  embed_single    one short query per call, sequential: p50/p99 through gRPC vs in-process
  embed_c16       16 concurrent callers of one short text each through gRPC: the
                  micro-batcher's effect (texts/s, mean texts per forward pass)

Search cases (issue #12), on N storefront texts embedded by the model itself, not random
vectors (N = 100,000; ``--quick``: 10,000), 384-d, L2-normalised. The queries are the vectors
of the next 1,000 (quick: 150) texts of the same generator, held out of the collection; the
ground truth is their exact top-10 by inner product (numpy), and, for the filtered case, the
exact top-10 among the items of the query's city. The vectors are embedded once, in-process,
with the project's encoder and cached under ``.llmops/bench/embedding-vectors/`` (keyed by
model, seed and count; a longer cache serves a shorter run, a shorter one is extended):
**the first full run spends several minutes embedding** (~160-500 texts/s on 2 cores: ~10
min for 101,000 texts), the first quick run about a minute; later runs load the ``.npy``.

``--quick`` (measured on this 2-core box, vectors cached, venvs present): ~44 s when the box is
otherwise idle, of which the Embed cases ~8 s, the llmops search cases ~11 s (the two restarts
~4.5 s of it), milvus-lite ~10 s (it answers in ~6 ms a call, and its first searches after
loading are slower still), chromadb ~6 s, chromadb-server ~8 s, usearch ~1 s; with another
CPU-bound process on the box it has taken ~61 s (the Embed cases alone 19 s). Quick shrinks
the counts, not the cases: 8 Embed batches of 32 (full 120) and 200 single texts (full 3,000),
150 held-out queries (full 1,000), a warm-up of 20 searches (full 200), and every timed
search phase stops after 1,000 calls or 0.75 s, whichever comes first (``n`` in the case; the
full run always makes its 5,000 calls), so the slow systems' quick p99 rests on ~100-150
calls. The first quick run adds ~1 min of embedding and ~1 min of venv installs. The full run
takes ~30 min, most of it milvus-lite (~40 ms a search at 100k: ~14 min) and the chromadb
filtered searches (~48 ms: ~5 min each). The systems run one after the other, never side by
side: on 2 cores a second one would take CPU from the one being timed.

  upsert_b1000     Upsert of the N vectors through gRPC in calls of 1,000 into an HNSW
                   collection (cosine, m 32, ef_construction 64, metadata field city), with
                   durability on (the write-ahead log is fsync'd before each acknowledgement;
                   the state dir is under ``.llmops/bench/``, on disk, not a tmpfs): items/s
  search_k10       Search k=10 by vector through gRPC, one call at a time, at the smallest
                   ``ef_search`` of a ladder whose recall@10 over all queries is >= 0.95 (each
                   rung's recall in ``recall_ladder``): p50/p99, rps, recall_at_10
  search_k10_c8    the same searches at the same ``ef_search`` with 8 in flight: 8 coroutines
                   of the bench's asyncio gRPC client (uvloop, one channel), each sending its
                   next Search when the last one is answered; rps = calls / wall time, p50/p99
                   per call as the caller saw it, ``concurrency`` 8. Measured on this box:
                   at 8 in flight the client takes ~0.3 of a core (~230 us of CPU a call) and
                   the service ~1.1 cores (~750 us a call), so the 2 cores are not saturated:
                   the service's request path (not the collection's search: ~60 us at 10k
                   items, ~110 us at 100k, in-process) bounds it at ~1,400-1,500 rps
  search_k10_city  search_k10 with the filter city == the query's city (1 of 8 cities, ~12.5 %
                   of the items; at most ``collection.EXACT_FILTER_MAX`` (512) matches are
                   searched exactly, more, as here, go through HNSW with an id selector:
                   ``filter_path``), recall against the exact filtered top-10. NB: on these
                   texts the unfiltered top-10 already lies in the query's city (all of it at
                   10k and at 100k: the city is in the text), so the filter never removes a
                   true neighbour and this case measures the filter's cost, not its effect on
                   recall
  hnsw_build       in-process ``VectorCollection`` on the same vectors (no gRPC, no log): the
                   time to build the HNSW index of N items by upserts of 1,000 (the case's
                   latency), then ``rebuild()`` after deleting 10 % (``rebuild_s``)
  restart          the service process stopped and started again on the same state dir, timed
                   until a Search answers (health is polled every 0.2 s): from a Snapshot plus
                   a log tail of one 1,000-item upsert (the case's latency), and from the log
                   alone (``log_only_s``, measured before the snapshot exists); the recall after
                   the restart is checked (``recall_after_restart``)

The baselines run on the same vectors, queries and ground truth, each from a venv of its own
(:mod:`benchmarks.vector_baselines`, harness ``vector_baselines_harness.py``), HNSW with M 32 /
ef_construction 64 and tuned on the same ef ladder to recall@10 >= 0.95, the same number of
searches (the concurrent case from 8 threads of the harness at the ef the ladder chose):
``milvus-lite`` (pymilvus ``MilvusClient`` on a local ``.db``: milvus-lite 3 serves it from a
gRPC server on a thread of the harness process), ``chromadb`` (``PersistentClient``, its Rust
core in-process), ``chromadb-server`` (the like-for-like: ``chromadb.HttpClient`` over HTTP to
the ``chroma run`` server that chromadb's pip package ships, a process of its own on loopback
started and stopped by the harness, in the chromadb venv) and ``usearch`` (in-process). Ours
goes through gRPC to another process that shares the same 2 cores with the caller; so does
chromadb-server's HTTP; the others run in the caller's process. A baseline that cannot be
installed or fails (the chromadb server not starting included) is reported as skipped on
stderr and has no case (never made-up numbers). Their inserts keep each system's default
durability (``durability`` in their upsert case: usearch is in memory, milvus-lite does not
fsync its WAL per write, chromadb's per-write fsync is not verified). Ratios:
``search_k10.rps.llmops/<system>``, ``search_k10_c8.rps.llmops/<system>``,
``search_k10_city.rps.llmops/<system>`` (not usearch: it has no metadata filter),
``upsert_b1000.items_per_s.llmops/<system>`` (theirs including the time to make the items
searchable through the index, ``ready_s``) and ``search_k10.recall_at_10.llmops-<system>``
(recall difference at the chosen ef's; the concurrent case runs at the same ef, so the same).

Prints the BENCH.md JSON line last on stdout (target ``embedding``).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks import servers
from benchmarks.report import Case, emit

CITIES = ["Amsterdam", "Lisbon", "Paris", "Barcelona", "Rome", "Vienna", "Prague", "Berlin"]
KINDS = ["apartment", "hotel", "villa", "guesthouse", "hostel", "boutique hotel", "cottage"]
FEATURES = [
    "a rooftop pool", "free wifi", "a canal view", "a sea view", "a garden", "free parking",
    "a fitness centre", "a 24-hour front desk", "family rooms", "a shared kitchen",
    "air conditioning", "a balcony", "a spa and wellness centre", "pets allowed",
    "a restaurant serving local food", "airport shuttle", "bicycle rental",
]  # fmt: skip
NEAR = ["the old town", "the beach", "the central station", "the museum quarter", "the river"]

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]

BENCH_DIR = servers.REPO_ROOT / ".llmops" / "bench"
VECTOR_CACHE = BENCH_DIR / "embedding-vectors"
CORPUS_SEED = 7
EMBED_CHUNK = 4096
"""Texts embedded per step; each step is sorted by length so batches pad little."""
EMBED_BATCH = 64
CHECKPOINT_S = 60.0
"""A long embedding run writes its cache at least this often, so an interrupted one resumes."""

COLLECTION = "bench_search"
K = 10
TARGET_RECALL = 0.95
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""ef_search values tried in order (every system the same), until recall@10 >= 0.95."""
HNSW_M = 32
EF_CONSTRUCTION = 64
UPSERT_BATCH = 1000
CONCURRENCY = 8
"""Searches in flight in the concurrent case (``search_k10_c8``), every system the same."""
CONCURRENT_CASE = f"search_k10_c{CONCURRENCY}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def storefront_texts(n: int, seed: int = 7) -> list[str]:
    """Property descriptions of 15-40 words, varied enough to embed apart.

    Deterministic per seed, and a prefix-stable stream: ``storefront_texts(m)`` is the first
    m texts of ``storefront_texts(n)`` for m <= n (the vector cache relies on it).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        feats = rng.sample(FEATURES, rng.randint(2, 5))
        out.append(
            f"{rng.choice(KINDS).capitalize()} in {rng.choice(CITIES)}, "
            f"{rng.randint(1, 30)} minutes from {rng.choice(NEAR)}, with "
            f"{', '.join(feats[:-1])} and {feats[-1]}. Rated {rng.randint(60, 98) / 10} "
            f"by {rng.randint(5, 3000)} guests; property {i}."
        )
    return out


def city_of(text: str) -> int:
    """Index in CITIES of the city a storefront text names ("<Kind> in <City>, ...")."""
    return CITIES.index(text.split(" in ", 1)[1].split(",", 1)[0])


# ---------------------------------------------------------------------------------------------
# Embed cases


def main(*, quick: bool) -> None:
    from services.embedding.encoder import OnnxEncoder

    encoder = OnnxEncoder(intra_op_threads=2)
    started = time.monotonic()
    cases, ratios = _embed_cases(encoder, quick=quick)
    _log(f"embed cases done in {time.monotonic() - started:.1f} s")
    search_cases, search_ratios = search_benchmark(encoder, quick=quick)
    emit("embedding", cases + search_cases, {**ratios, **search_ratios})


def _service_env(state_dir: Path) -> dict[str, str]:
    return {
        "LLMOPS__STATE_DIR": str(state_dir),
        "LLMOPS__EVENTS__BACKEND": "local",
        # the demo collection would be embedded in the background, competing for the cores
        "LLMOPS__EMBEDDING__DEMO_DATA": "off",
    }


def _embed_cases(encoder: Any, *, quick: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    import uvloop

    texts = storefront_texts(2_000)
    plan = QUICK if quick else FULL
    batches, warmup, singles = plan.embed_batches, plan.embed_warmup, plan.embed_singles
    with tempfile.TemporaryDirectory(prefix="llmops-bench-embedding-") as tmp:
        log = (Path(tmp) / "service.log").open("wb")
        proc, address = servers.start_service("embedding", _service_env(Path(tmp)), log)
        try:
            cases = uvloop.run(_run(address, encoder, texts, batches, singles, warmup))
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    by = {(c["case"], c["system"]): float(c["texts_per_s"]) for c in cases}  # type: ignore[arg-type]
    ratios = {
        "embed_batch32.texts_per_s.llmops/onnxruntime": round(
            by[("embed_batch32", "llmops")] / by[("embed_batch32", "onnxruntime")], 3
        ),
    }
    return cases, ratios


async def _run(
    address: str, encoder: object, texts: list[str], batches: int, singles: int, warmup: int
) -> list[dict[str, object]]:
    import grpc

    from llmops.v1 import embedding_pb2, embedding_pb2_grpc
    from services.embedding.encoder import OnnxEncoder

    assert isinstance(encoder, OnnxEncoder)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
        queries = [t.split(",")[0] for t in texts]  # "Villa in Rome": a short query

        def raw_batch(i: int) -> None:
            encoder.encode(chunks[i % len(chunks)], normalize=True)

        async def grpc_batch(i: int) -> None:
            await stub.Embed(
                embedding_pb2.EmbedRequest(texts=chunks[i % len(chunks)], normalize=True),
                timeout=30,
            )

        def raw_single(i: int) -> None:
            encoder.encode([queries[i % len(queries)]], normalize=True)

        async def grpc_single(i: int) -> None:
            await stub.Embed(
                embedding_pb2.EmbedRequest(texts=[queries[i % len(queries)]], normalize=True),
                timeout=30,
            )

        for i in range(warmup):  # warm-up: connections, onnxruntime's first runs
            raw_batch(i)
            await grpc_batch(i)
        batch_raw, batch_grpc = (
            Case("embed_batch32", "onnxruntime"),
            Case("embed_batch32", "llmops"),
        )
        single_raw, single_grpc = (
            Case("embed_single", "onnxruntime"),
            Case("embed_single", "llmops"),
        )
        rounds = 4
        for _ in range(rounds):  # interleaved: machine noise hits both alike
            await _timed(batch_raw, raw_batch, batches // rounds)
            await _timed_async(batch_grpc, grpc_batch, batches // rounds)
            await _timed(single_raw, raw_single, singles // rounds)
            await _timed_async(single_grpc, grpc_single, singles // rounds)
        concurrent = await _concurrent(stub, queries, 16, singles)
    out = []
    for case, per_call in ((batch_raw, 32), (batch_grpc, 32), (single_raw, 1), (single_grpc, 1)):
        case.extra["texts_per_s"] = round(len(case.latencies_s) * per_call / case.wall_s, 1)
        out.append(case.summary())
    out.append(concurrent.summary())
    return out


async def _timed(case: Case, call: Callable[[int], None], n: int) -> None:
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call(i)
        case.latencies_s.append(time.perf_counter() - t)
    case.wall_s += time.perf_counter() - start


async def _timed_async(case: Case, call: Callable[[int], Awaitable[None]], n: int) -> None:
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        case.latencies_s.append(time.perf_counter() - t)
    case.wall_s += time.perf_counter() - start


async def _concurrent(stub: object, queries: list[str], workers: int, n: int) -> Case:
    from llmops.v1 import embedding_pb2

    case = Case("embed_c16", "llmops", concurrency=workers)
    per_worker = n // workers

    async def worker(w: int) -> None:
        for i in range(per_worker):
            t = time.perf_counter()
            await stub.Embed(  # type: ignore[attr-defined]
                embedding_pb2.EmbedRequest(texts=[queries[(w * per_worker + i) % len(queries)]]),
                timeout=30,
            )
            case.latencies_s.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    case.wall_s = time.perf_counter() - start
    case.extra["texts_per_s"] = round(len(case.latencies_s) / case.wall_s, 1)
    return case


# ---------------------------------------------------------------------------------------------
# Search data: cached vectors, exact ground truth, recall


def model_key(encoder: Any) -> str:
    """Names the model that made the vectors (name, version, weights' SHA-256 prefix)."""
    from services.embedding.encoder import MODEL_PACKAGE

    info = encoder.info
    sha = str(getattr(importlib.import_module(MODEL_PACKAGE), "SHA256", ""))[:12]
    return f"{info.name}-v{info.version}" + (f"-{sha}" if sha else "")


def _embed_sorted(encoder: Any, texts: Sequence[str], dimension: int) -> Floats:
    """Vectors of ``texts`` in their order, embedded in batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), dimension), dtype=np.float32)
    for start in range(0, len(order), EMBED_BATCH):
        rows = order[start : start + EMBED_BATCH]
        out[rows] = encoder.encode([texts[i] for i in rows], normalize=True).vectors
    return out


def _save_atomic(path: Path, array: Floats) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def cached_vectors(
    encoder: Any, count: int, seed: int = CORPUS_SEED, cache_dir: Path = VECTOR_CACHE
) -> Floats:
    """The normalised vectors of ``storefront_texts(count, seed)``, from the cache or embedded.

    The cache holds one ``<model>-seed<seed>-n<count>.npy`` per model and seed, the longest
    prefix embedded so far: a shorter run slices it, a longer one embeds only the missing
    texts, checkpointing every minute so an interrupted run resumes.
    """
    key = model_key(encoder)
    dimension = int(encoder.info.dimension)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"{re.escape(key)}-seed{seed}-n(\d+)\.npy")
    found = [(int(m.group(1)), p) for p in cache_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    have, path = max(found, default=(0, None))
    if path is not None and have >= count:
        _log(f"search: {count:,} cached vectors from {path}")
        return np.ascontiguousarray(np.load(path, mmap_mode="r")[:count], dtype=np.float32)
    parts = [np.load(path).astype(np.float32)] if path is not None else []
    texts = storefront_texts(count, seed)
    _log(
        f"search: embedding texts {have:,}..{count:,} with {key} in-process (one-time; cached "
        f"under {cache_dir}; ~160-500 texts/s on 2 cores)"
    )
    started = last_save = time.monotonic()
    done = have
    for start in range(have, count, EMBED_CHUNK):
        chunk = texts[start : min(start + EMBED_CHUNK, count)]
        parts.append(_embed_sorted(encoder, chunk, dimension))
        done = start + len(chunk)
        elapsed = time.monotonic() - started
        rate = (done - have) / elapsed
        _log(
            f"search: embedded {done:,}/{count:,} ({rate:.0f} texts/s, "
            f"~{(count - done) / rate:.0f} s left)"
        )
        if time.monotonic() - last_save >= CHECKPOINT_S or done == count:
            vectors = np.concatenate(parts).astype(np.float32)
            parts = [vectors]
            new_path = cache_dir / f"{key}-seed{seed}-n{done}.npy"
            _save_atomic(new_path, vectors)
            for old in cache_dir.glob(f"{key}-seed{seed}-n*.npy"):
                if old != new_path:
                    old.unlink(missing_ok=True)
            last_save = time.monotonic()
    return np.ascontiguousarray(parts[0][:count], dtype=np.float32)


def exact_top_k(corpus: Floats, queries: Floats, k: int, chunk: int = 256) -> Ints:
    """Row i: the indices (into ``corpus``) of the k largest inner products with query i,
    best first."""
    k = min(k, len(corpus))
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        scores = queries[s : s + chunk] @ corpus.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def exact_top_k_within(corpus: Floats, queries: Floats, k: int, groups: Ints, wanted: Ints
                       ) -> Ints:  # fmt: skip
    """Like ``exact_top_k`` but query i ranks only the items whose group is ``wanted[i]``."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for g in np.unique(wanted).tolist():
        members = np.flatnonzero(groups == g)
        rows = np.flatnonzero(wanted == g)
        out[rows] = members[exact_top_k(corpus[members], queries[rows], k)]
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: npt.NDArray[np.integer[Any]]) -> float:
    """Mean over queries of |found[i][:k] & truth[i]| / k, k = truth's row length."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} result lists for {len(truth)} queries")
    if not len(truth):
        return 0.0
    k = int(truth.shape[1])
    hits = sum(len(set(list(f)[:k]) & set(t)) for f, t in zip(found, truth.tolist(), strict=True))
    return float(hits / (k * len(truth)))


@dataclass(frozen=True)
class SearchData:
    """The vectors, their cities and the exact answers every system is scored against."""

    corpus: Floats
    queries: Floats
    cities: Ints
    """Per corpus item, its index in CITIES."""
    query_cities: Ints
    truth: Ints
    """Exact top-K (corpus indices) per query."""
    city_truth: Ints
    """Exact top-K among the items of the query's city."""


def search_data(encoder: Any, n: int, n_queries: int) -> SearchData:
    """N corpus vectors and the next ``n_queries`` texts' vectors as held-out queries."""
    vectors = cached_vectors(encoder, n + n_queries)
    cities = np.array([city_of(t) for t in storefront_texts(n + n_queries)], dtype=np.int64)
    corpus, queries = vectors[:n], vectors[n:]
    started = time.perf_counter()
    truth = exact_top_k(corpus, queries, K)
    city_truth = exact_top_k_within(corpus, queries, K, cities[:n], cities[n:])
    _log(f"search: exact top-{K} of {n_queries:,} queries in {time.perf_counter() - started:.1f} s")
    return SearchData(corpus, queries, cities[:n], cities[n:], truth, city_truth)


@dataclass(frozen=True)
class Plan:
    """Sizes of one search benchmark run."""

    n: int
    queries: int
    calls: int
    """Timed searches per system and case (cycling over the queries)."""
    warmup: int
    """Searches before the ef ladder (and, in the harness, half as many again after it)."""
    max_s: float | None
    """A timed search phase stops after ``calls`` or this many seconds, whichever comes first
    (``n`` in the case says how many ran); None: always ``calls``."""
    embed_batches: int
    """Timed Embed calls of 32 texts per system (embed_batch32)."""
    embed_warmup: int
    """Untimed Embed calls of 32 texts per system before embed_batch32."""
    embed_singles: int
    """Timed Embed calls of one short text per system (embed_single; embed_c16 makes as
    many, less the remainder of dividing them among its 16 callers)."""


FULL = Plan(n=100_000, queries=1_000, calls=5_000, warmup=200, max_s=None, embed_batches=120,
            embed_warmup=5, embed_singles=3_000)  # fmt: skip
QUICK = Plan(n=10_000, queries=150, calls=1_000, warmup=20, max_s=0.75, embed_batches=8,
             embed_warmup=2, embed_singles=200)  # fmt: skip


def single_case(case: str, system: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """A BENCH case dict of one timed operation (n 1: p50 = p99 = the time)."""
    ms = round(seconds * 1000, 4)
    return {"case": case, "system": system, "p50_ms": ms, "p99_ms": ms,
            "rps": round(1 / seconds, 4) if seconds > 0 else 0.0, "n": 1, "concurrency": 1,
            **extra}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# llmops: the embedding service through gRPC


def _collection_request() -> Any:
    from llmops.v1 import common_pb2, embedding_pb2

    collection = embedding_pb2.Collection(
        name=COLLECTION,
        dimension=384,
        metric=embedding_pb2.DISTANCE_METRIC_COSINE,
        index_kind=embedding_pb2.INDEX_KIND_HNSW,
        metadata_schema={"city": common_pb2.VALUE_TYPE_STRING},
    )
    for key, value in (("m", HNSW_M), ("ef_construction", EF_CONSTRUCTION), ("ef_search", 64)):
        collection.index_params[key].int64_value = value
    return embedding_pb2.CreateCollectionRequest(collection=collection)


def _upsert_request(data: SearchData, start: int, stop: int) -> Any:
    from llmops.v1 import common_pb2, embedding_pb2

    request = embedding_pb2.UpsertRequest(collection=COLLECTION)
    for i, row in zip(range(start, stop), data.corpus[start:stop].tolist(), strict=True):
        item = request.items.add(id=str(i))
        item.vector.values.extend(row)
        item.metadata["city"].CopyFrom(common_pb2.Value(string_value=CITIES[data.cities[i]]))
    return request


def _search_requests(data: SearchData, ef: int, *, by_city: bool) -> list[Any]:
    from llmops.v1 import common_pb2, embedding_pb2

    out = []
    for i, row in enumerate(data.queries.tolist()):
        request = embedding_pb2.SearchRequest(collection=COLLECTION, k=K)
        request.vector.values.extend(row)
        request.search_params["ef_search"].int64_value = ef
        if by_city:
            request.filter.condition.CopyFrom(
                common_pb2.FieldCondition(
                    field="city",
                    operator=common_pb2.FieldCondition.OPERATOR_EQ,
                    value=common_pb2.Value(string_value=CITIES[data.query_cities[i]]),
                )
            )
        out.append(request)
    return out


async def _ladder(
    search: Callable[[int, int], Awaitable[list[int]]], truth: Ints
) -> tuple[int, float, dict[str, float]]:
    """The first ef of EF_LADDER whose recall@K over all queries reaches TARGET_RECALL (else
    the last), its recall, and every rung's recall. ``search(ef, i)`` answers query i."""
    rungs: dict[str, float] = {}
    recall = 0.0
    for ef in EF_LADDER:
        found = [await search(ef, i) for i in range(len(truth))]
        recall = recall_at_k(found, truth)
        rungs[str(ef)] = round(recall, 4)
        if recall >= TARGET_RECALL:
            return ef, recall, rungs
    return EF_LADDER[-1], recall, rungs


async def _llmops_search(address: str, data: SearchData, plan: Plan) -> list[dict[str, Any]]:
    """Create, load and search the collection through gRPC; the BENCH case dicts."""
    import grpc

    from llmops.v1 import embedding_pb2_grpc

    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        await stub.CreateCollection(_collection_request(), timeout=30)
        upsert = Case("upsert_b1000", "llmops")
        for start in range(0, len(data.corpus), UPSERT_BATCH):
            request = _upsert_request(data, start, min(start + UPSERT_BATCH, len(data.corpus)))
            t0 = time.perf_counter()
            reply = await stub.Upsert(request, timeout=120)
            upsert.latencies_s.append(time.perf_counter() - t0)
            assert reply.upserted_count == len(request.items), reply
        # wall = time spent in the calls (building the requests is the client's work)
        upsert.wall_s = sum(upsert.latencies_s)
        upsert.extra.update(
            items_per_s=round(len(data.corpus) / upsert.wall_s, 1),
            batch=UPSERT_BATCH,
            durability="WAL fsync before each ack (embedding.fsync: true)",
        )
        out.append(upsert.summary())
        _log(f"llmops: upserted {len(data.corpus):,} items, {upsert.extra['items_per_s']} items/s")
        for by_city in (False, True):
            out += await _search_cases(stub, data, plan, by_city=by_city)
    return out


async def _search_cases(stub: Any, data: SearchData, plan: Plan, *, by_city: bool
                        ) -> list[dict[str, Any]]:  # fmt: skip
    """Warm-up, the ef ladder, then ``plan.calls`` sequential searches at the chosen ef (at
    most ``plan.max_s``); unfiltered, then as many again from CONCURRENCY callers at once."""
    from services.embedding.collection import EXACT_FILTER_MAX

    name = "search_k10_city" if by_city else "search_k10"
    phase = time.perf_counter()
    truth = data.city_truth if by_city else data.truth
    requests: dict[int, list[Any]] = {}

    async def search(ef: int, i: int) -> list[int]:
        if ef not in requests:
            requests[ef] = _search_requests(data, ef, by_city=by_city)
        reply = await stub.Search(requests[ef][i], timeout=10)
        return [int(h.id) for h in reply.hits]

    for i in range(min(plan.warmup, len(truth))):  # warm-up
        await search(64, i)
    ef, recall, rungs = await _ladder(search, truth)
    tuned = time.perf_counter()
    case = Case(name, "llmops")
    chosen = requests[ef]
    perf = time.perf_counter
    start = perf()
    deadline = start + plan.max_s if plan.max_s else float("inf")
    for i in range(plan.calls):
        t0 = perf()
        await stub.Search(chosen[i % len(chosen)], timeout=10)
        t1 = perf()
        case.latencies_s.append(t1 - t0)
        if t1 >= deadline:
            break
    case.wall_s = perf() - start
    common = dict(recall_at_10=round(recall, 4), ef_search=ef, k=K, items=len(data.corpus),
                  via="gRPC")  # fmt: skip
    case.extra.update(recall_ladder=rungs, **common)
    if by_city:
        matches = float(np.bincount(data.cities, minlength=len(CITIES)).mean())
        case.extra["matching_items_mean"] = round(matches, 1)
        case.extra["filter_path"] = (
            "exact over the matches" if matches <= EXACT_FILTER_MAX else "HNSW+id selector"
        )
    _log(f"llmops: {name} ef_search {ef} recall@{K} {recall:.4f} ladder {rungs}; warm-up + "
         f"ladder {tuned - phase:.2f} s, {len(case.latencies_s)} calls "
         f"{case.wall_s:.2f} s")  # fmt: skip
    out = [case.summary()]
    if not by_city:
        await _concurrent_search(stub, chosen, CONCURRENCY * 4, None)  # warm-up
        concurrent = await _concurrent_search(stub, chosen, plan.calls, plan.max_s)
        concurrent.extra.update(common)
        _log(f"llmops: {concurrent.case} {len(concurrent.latencies_s)} calls "
             f"{concurrent.wall_s:.2f} s")  # fmt: skip
        out.append(concurrent.summary())
    return out


async def _concurrent_search(stub: Any, requests: list[Any], calls: int, max_s: float | None
                             ) -> Case:  # fmt: skip
    """``calls`` searches (or until ``max_s``) from CONCURRENCY coroutines on one channel,
    each sending the next request when its last one is answered: CONCURRENCY in flight."""
    case = Case(CONCURRENT_CASE, "llmops", concurrency=CONCURRENCY)
    counter = itertools.count()
    perf = time.perf_counter
    start = perf()
    deadline = start + max_s if max_s else float("inf")

    async def caller() -> None:
        while (i := next(counter)) < calls:
            t0 = perf()
            await stub.Search(requests[i % len(requests)], timeout=10)
            t1 = perf()
            case.latencies_s.append(t1 - t0)
            if t1 >= deadline:
                break

    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    case.wall_s = perf() - start
    return case


async def _snapshot_and_tail(address: str, data: SearchData) -> tuple[float, int]:
    """Snapshot the collection, then upsert a tail the restart must replay from the log:
    (snapshot seconds, snapshot bytes)."""
    import grpc

    from llmops.v1 import embedding_pb2, embedding_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        admin = embedding_pb2_grpc.EmbeddingAdminServiceStub(channel)
        t0 = time.perf_counter()
        reply = await admin.Snapshot(embedding_pb2.SnapshotRequest(collection=COLLECTION),
                                     timeout=600)  # fmt: skip
        seconds = time.perf_counter() - t0
        # the same ids and vectors again: one log record past the snapshot, same answers
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        await stub.Upsert(_upsert_request(data, 0, min(UPSERT_BATCH, len(data.corpus))),
                          timeout=120)  # fmt: skip
    return seconds, int(reply.snapshot.size_bytes)


async def _recall_now(address: str, data: SearchData, ef: int) -> float:
    import grpc

    from llmops.v1 import embedding_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        found = []
        for request in _search_requests(data, ef, by_city=False):
            reply = await stub.Search(request, timeout=10)
            found.append([int(h.id) for h in reply.hits])
    return recall_at_k(found, data.truth)


def _start_until_search(env: dict[str, str], log: Any, probe: Any) -> tuple[Any, str, float]:
    """Start the service and Search until one answers: (process, address, seconds)."""
    import grpc

    from llmops.v1 import embedding_pb2_grpc

    t0 = time.perf_counter()
    proc, address = servers.start_service("embedding", env, log)
    with grpc.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        while True:
            try:
                stub.Search(probe, timeout=30)
                break
            except grpc.RpcError:
                if time.perf_counter() - t0 > 600:
                    proc.kill()
                    raise
                time.sleep(0.01)
    return proc, address, time.perf_counter() - t0


def _stop(proc: Any) -> None:
    """Stop a service process this bench started: SIGTERM (a clean close), then SIGKILL."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def llmops_cases(data: SearchData, plan: Plan) -> list[dict[str, Any]]:
    """upsert, search, filtered search and the two restarts, on a service process."""
    import uvloop

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    # under .llmops/bench, on disk: a tmpfs /tmp would make fsync free
    with tempfile.TemporaryDirectory(prefix="search-llmops-", dir=BENCH_DIR) as tmp:
        env = {**_service_env(Path(tmp) / "state"), "LLMOPS__EMBEDDING__FSYNC": "true"}
        with (Path(tmp) / "service.log").open("wb") as log:
            t0 = time.perf_counter()
            proc, address = servers.start_service("embedding", env, log)
            empty_start_s = time.perf_counter() - t0
            procs = [proc]  # the restarts replace it; whichever runs last is stopped
            try:
                cases = uvloop.run(_llmops_search(address, data, plan))
                ef = next(c["ef_search"] for c in cases if c["case"] == "search_k10")
                restart = _restarts(env, log, data, ef, procs)
            finally:
                _stop(procs[-1])
    if restart is not None:
        restart["empty_start_s"] = round(empty_start_s, 3)
        cases.append(restart)
    return cases


def _restarts(
    env: dict[str, str], log: Any, data: SearchData, ef: int, procs: list[Any]
) -> dict[str, Any] | None:
    """The restart case: from the log alone, then from a snapshot plus a log tail.

    A restart that fails (the service does not come back) is reported on stderr and gives no
    case, so that the other cases still come out. ``procs[-1]`` is the running process.
    """
    import grpc
    import uvloop

    probe = _search_requests(data, 64, by_city=False)[0]
    try:
        _log("llmops: restart from the log alone ...")
        _stop(procs[-1])
        proc, address, log_only_s = _start_until_search(env, log, probe)
        procs.append(proc)
        snapshot_s, snapshot_bytes = uvloop.run(_snapshot_and_tail(address, data))
        _log("llmops: restart from the snapshot + log ...")
        _stop(proc)
        proc, address, restart_s = _start_until_search(env, log, probe)
        procs.append(proc)
        recall = uvloop.run(_recall_now(address, data, ef))
    except (RuntimeError, grpc.RpcError) as exc:
        _log(f"llmops: restart FAILED, no restart case: {exc}")
        return None
    _log(
        f"llmops: restart {restart_s:.2f} s from snapshot + log, {log_only_s:.2f} s from the "
        f"log alone; snapshot {snapshot_s:.2f} s, recall after restart {recall:.4f}"
    )
    return single_case(
        "restart",
        "llmops",
        restart_s,
        items=len(data.corpus),
        **{"from": "snapshot + log tail of 1 upsert of 1,000 items"},
        log_only_s=round(log_only_s, 3),
        snapshot_s=round(snapshot_s, 3),
        snapshot_bytes=snapshot_bytes,
        recall_after_restart=round(recall, 4),
    )


def rebuild_case(data: SearchData) -> dict[str, Any]:
    """HNSW build of N items and rebuild after deleting 10 %, in-process (no gRPC, no log)."""
    from llmops.v1 import common_pb2
    from services.embedding.collection import CollectionSpec, VectorCollection

    spec = CollectionSpec(
        name="bench_rebuild",
        dimension=data.corpus.shape[1],
        metric="cosine",
        index_kind="hnsw",
        index_params={"m": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": 64},
        metadata_schema={"city": int(common_pb2.VALUE_TYPE_STRING)},
    )
    collection = VectorCollection(spec)
    n = len(data.corpus)
    ids = [str(i) for i in range(n)]
    metas = [{"city": CITIES[c]} for c in data.cities.tolist()]
    t0 = time.perf_counter()
    for s in range(0, n, UPSERT_BATCH):
        e = min(s + UPSERT_BATCH, n)
        collection.upsert(ids[s:e], data.corpus[s:e], metas[s:e])
    build_s = time.perf_counter() - t0
    gone = random.Random(11).sample(ids, n // 10)
    collection.delete_ids(gone)
    t0 = time.perf_counter()
    collection.rebuild()
    rebuild_s = time.perf_counter() - t0
    _log(f"llmops: HNSW build of {n:,} items {build_s:.2f} s, rebuild of {n - len(gone):,} "
         f"after deleting 10 % {rebuild_s:.2f} s")  # fmt: skip
    return single_case("hnsw_build", "llmops", build_s, items=n,
                       build_items_per_s=round(n / build_s, 1), rebuild_s=round(rebuild_s, 3),
                       rebuild_items=n - len(gone), via="in-process VectorCollection")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Baselines and the whole search benchmark


def baseline_cases(data: SearchData, plan: Plan, work: Path) -> list[dict[str, Any]]:
    """Each baseline's cases (a failing one is logged as skipped and has none)."""
    from benchmarks.vector_baselines import SYSTEMS

    for name, array in (("corpus", data.corpus), ("queries", data.queries),
                        ("cities", data.cities), ("query_cities", data.query_cities),
                        ("truth", data.truth), ("city_truth", data.city_truth)):  # fmt: skip
        np.save(work / f"{name}.npy", array)
    config = {
        "data_dir": str(work),
        "k": K,
        "calls": plan.calls,
        "max_s": plan.max_s,
        "warmup": plan.warmup,
        "concurrency": CONCURRENCY,
        "ef_ladder": list(EF_LADDER),
        "target_recall": TARGET_RECALL,
        "m": HNSW_M,
        "ef_construction": EF_CONSTRUCTION,
        "batch": UPSERT_BATCH,
        "cities": CITIES,
    }
    out: list[dict[str, Any]] = []
    for system, baseline in SYSTEMS:
        _log(f"{system} (venv {baseline.venv.name}) ...")
        started = time.monotonic()
        system_dir = work / system
        system_dir.mkdir()
        try:
            out += baseline.run({**config, "system": system, "work_dir": str(system_dir)}, _log)
        except RuntimeError as exc:
            _log(f"{system}: SKIPPED: {exc}")
        _log(f"{system}: {time.monotonic() - started:.1f} s")
    return out


def search_ratios(cases: list[dict[str, Any]]) -> dict[str, float]:
    """llmops against each baseline: search rps, upsert items/s, recall difference."""
    by = {(c["case"], c["system"]): c for c in cases}
    ratios: dict[str, float] = {}
    others = sorted({c["system"] for c in cases} - {"llmops"})
    concurrent = CONCURRENT_CASE
    for system in others:
        ours, theirs = by.get(("search_k10", "llmops")), by.get(("search_k10", system))
        if ours and theirs and theirs.get("rps"):
            ratios[f"search_k10.rps.llmops/{system}"] = round(ours["rps"] / theirs["rps"], 3)
            ratios[f"search_k10.recall_at_10.llmops-{system}"] = round(
                ours["recall_at_10"] - theirs["recall_at_10"], 4
            )
        ours, theirs = by.get((concurrent, "llmops")), by.get((concurrent, system))
        if ours and theirs and theirs.get("rps"):
            ratios[f"{concurrent}.rps.llmops/{system}"] = round(ours["rps"] / theirs["rps"], 3)
        ours, theirs = by.get(("search_k10_city", "llmops")), by.get(("search_k10_city", system))
        if ours and theirs and theirs.get("rps"):
            ratios[f"search_k10_city.rps.llmops/{system}"] = round(ours["rps"] / theirs["rps"], 3)
        ours, theirs = by.get(("upsert_b1000", "llmops")), by.get(("upsert_b1000", system))
        # theirs until searchable through the index (milvus-lite indexes at flush), as ours is
        # at each acknowledgement
        their_rate = theirs.get("items_per_s_incl_ready") if theirs else None
        if ours and their_rate:
            ratios[f"upsert_b1000.items_per_s.llmops/{system}"] = round(
                ours["items_per_s"] / their_rate, 3
            )
    return ratios


def search_benchmark(encoder: Any, *, quick: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The search cases of llmops and the baselines, and their ratios."""
    plan = QUICK if quick else FULL
    cap = f" or {plan.max_s:g} s" if plan.max_s else ""
    _log(f"search: {plan.n:,} items, {plan.queries:,} held-out queries, {plan.calls:,} calls"
         f"{cap} per case, {CONCURRENCY} in flight in {CONCURRENT_CASE}")  # fmt: skip
    started = time.monotonic()
    data = search_data(encoder, plan.n, plan.queries)
    _log(f"search: data ready after {time.monotonic() - started:.0f} s")
    cases = llmops_cases(data, plan)
    _log(f"search: llmops service cases done after {time.monotonic() - started:.1f} s")
    cases.append(rebuild_case(data))
    _log(f"search: llmops done after {time.monotonic() - started:.1f} s")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="search-baselines-", dir=BENCH_DIR) as work:
        cases += baseline_cases(data, plan, Path(work))
    _log(f"search: baselines done after {time.monotonic() - started:.1f} s")
    return cases, search_ratios(cases)
