"""``llmops bench embedding``: the Embed path, the service against the raw model runtime.

Cases, on storefront-like texts (synthetic property descriptions, 15-40 words):
  embed_batch32   texts/s of sequential calls of 32 texts: ``onnxruntime`` = the same
                  encoder (tokenizer + int8 ONNX + mean pooling) called in-process, ``llmops``
                  = Embed through gRPC on an embedding service of its own (a process, the same
                  2 intra-op threads); interleaved rounds; ratio llmops/onnxruntime
  embed_single    one short query per call, sequential: p50/p99 through gRPC vs in-process
  embed_c16       16 concurrent callers of one short text each through gRPC: the
                  micro-batcher's effect (texts/s, mean texts per forward pass)
Prints the BENCH.md JSON line last on stdout (target ``embedding``).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

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


def storefront_texts(n: int, seed: int = 7) -> list[str]:
    """Property descriptions of 15-40 words, varied enough to embed apart."""
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


def main(*, quick: bool) -> None:
    from services.embedding.encoder import OnnxEncoder

    texts = storefront_texts(2_000)
    batches = 20 if quick else 120
    singles = 300 if quick else 3_000
    encoder = OnnxEncoder(intra_op_threads=2)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="llmops-bench-embedding-") as tmp:
        log = (Path(tmp) / "service.log").open("wb")
        proc, address = servers.start_service(
            "embedding", {"LLMOPS__STATE_DIR": tmp, "LLMOPS__EVENTS__BACKEND": "local"}, log
        )
        try:
            cases = uvloop.run(_run(address, encoder, texts, batches, singles))
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
    emit("embedding", cases, ratios)


async def _run(
    address: str, encoder: object, texts: list[str], batches: int, singles: int
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

        for i in range(5):  # warm-up: connections, onnxruntime's first runs
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
