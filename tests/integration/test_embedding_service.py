"""The embedding service through its real wiring (``services.embedding.service:create``
served in-process by ``llmops.server.serve``) with the real model: all-MiniLM-L6-v2 as int8
ONNX from its registry package, on onnxruntime. Vectors, similarity that means something,
truncation reported, concurrent calls micro-batched, usage, and bad input statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from llmops.config import load_config
from llmops.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from tests.support import mesh_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[embedding_pb2_grpc.EmbeddingServiceStub]:
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path)
    env["LLMOPS__EVENTS__BACKEND"] = "local"
    env["LLMOPS__SINK__EMBEDDED"] = "false"
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["embedding"], ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 60)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['embedding']}") as channel:
            yield embedding_pb2_grpc.EmbeddingServiceStub(channel)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


def vectors(reply: embedding_pb2.EmbedResponse) -> np.ndarray:
    return np.array([list(v.values) for v in reply.embeddings], dtype=np.float32)


async def test_embed_gives_normalised_vectors_that_mean_something(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
) -> None:
    texts = [
        "Beach hotel with a pool and sea view",
        "Seaside resort close to the sand",
        "Quarterly VAT return for a small business",
        "word " * 400,
    ]
    reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts, normalize=True), timeout=30)
    v = vectors(reply)
    assert v.shape == (4, 384) and reply.dimension == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    beach_seaside, beach_tax = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert beach_seaside > 0.5 and beach_tax < 0.2, (beach_seaside, beach_tax)
    assert (reply.model.name, reply.model.version) == ("all-minilm-l6-v2", 1)
    assert list(reply.truncated) == [3]  # 400 words: cut at 256 word pieces
    # word pieces with [CLS]/[SEP], padding excluded: 256 for the cut text, ~10 per short one
    assert 256 + 3 * 5 < reply.usage.prompt_tokens < 256 + 3 * 15, reply.usage.prompt_tokens
    assert reply.usage.total_time_ms > 0

    raw = vectors(await stub.Embed(embedding_pb2.EmbedRequest(texts=texts[:1]), timeout=30))
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw[0]), v[0], atol=1e-4)
    assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3  # not normalised when not asked


async def test_concurrent_calls_are_batched_and_answer_in_order(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
) -> None:
    texts = [f"Apartment {i} in Lisbon with a balcony" for i in range(24)]
    alone = vectors(await stub.Embed(embedding_pb2.EmbedRequest(texts=texts), timeout=30))
    replies = await asyncio.gather(
        *(stub.Embed(embedding_pb2.EmbedRequest(texts=[t]), timeout=30) for t in texts)
    )
    together = np.vstack([vectors(r) for r in replies])
    np.testing.assert_allclose(together, alone, atol=2e-3)  # same vectors, whatever the batch
    assert max(r.usage.queue_time_ms for r in replies) > 0


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (embedding_pb2.EmbedRequest(), grpc.StatusCode.INVALID_ARGUMENT, "texts"),
        (
            embedding_pb2.EmbedRequest(texts=["ok", ""]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts[1]",
        ),
        (
            embedding_pb2.EmbedRequest(texts=["x"] * 257),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 256",
        ),
        (
            embedding_pb2.EmbedRequest(texts=["ok"], model=common_pb2.ModelRef(name="e5-large")),
            grpc.StatusCode.NOT_FOUND,
            "e5-large",
        ),
        (
            embedding_pb2.EmbedRequest(texts=["ok"], dimensions=128),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Matryoshka",
        ),
    ],
)
async def test_bad_input_has_a_precise_status(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
    request_: embedding_pb2.EmbedRequest,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Embed(request_, timeout=30)
    assert err.value.code() is code
    assert needle in (err.value.details() or "")
