"""The Embed path without the model: the micro-batcher (concurrent calls share a forward
pass, bounded wait and queue, per-request normalisation, failures reach every caller of the
batch) and the request checks (texts, model, dimensions, the token-limit policy)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from llmops.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from llmops.events.port import ServiceEvents
from services.embedding.batcher import MicroBatcher
from services.embedding.collection import CollectionSpec
from services.embedding.embeddings import EmbedCall, Embeddings
from services.embedding.encoder import Encoded, ModelInfo, l2_normalize, mean_pool
from services.embedding.store import CollectionStore
from services.embedding.vectors import VectorMetrics, Vectors

DIM = 8


class FakeEncoder:
    """Deterministic vectors (text length and first letters), words as tokens; records the
    batch sizes it saw; can be made to block or fail."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("fake-embedder", 3, DIM, 4, "test")

    def encode(self, texts: Sequence[str], *, normalize: bool) -> Encoded:
        assert not normalize  # the batcher normalises per request
        self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        self.batches.append(len(texts))
        vectors = np.array(
            [[len(t), *[ord(c) for c in (t + "       ")[: DIM - 1]]] for t in texts],
            dtype=np.float32,
        )
        words = [len(t.split()) for t in texts]
        return Encoded(vectors, [min(w, 4) for w in words], [w > 4 for w in words])


@pytest.fixture
async def fake() -> FakeEncoder:
    return FakeEncoder()


async def test_concurrent_calls_share_forward_passes(fake: FakeEncoder) -> None:
    batcher = MicroBatcher(fake, max_batch=16, max_wait_s=0.05)
    fake.gate.clear()  # the first call's pass blocks: the others gather meanwhile
    first = asyncio.create_task(batcher.embed(["a"], normalize=False))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(batcher.embed([f"text {i}"], normalize=i % 2 == 0))
            for i in range(20)]  # fmt: skip
    await asyncio.sleep(0.01)
    fake.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.close()
    assert sum(fake.batches) == 21 and len(fake.batches) <= 3, fake.batches
    assert max(fake.batches) <= 16 + 1  # a batch closes at max_batch (one request may tip it)
    for i, got in enumerate(results[1:]):
        raw = fake.encode([f"text {i}"], normalize=False).vectors
        want = l2_normalize(raw) if i % 2 == 0 else raw
        np.testing.assert_allclose(got.vectors, want, rtol=1e-6)
        assert got.tokens == [2] and got.truncated == [False]
        assert got.batch_texts >= 1 and got.total_ms >= got.queue_ms >= 0


async def test_a_lone_call_waits_at_most_max_wait(fake: FakeEncoder) -> None:
    batcher = MicroBatcher(fake, max_batch=64, max_wait_s=0.001)
    got = await asyncio.wait_for(batcher.embed(["one two three four five"], normalize=True), 1)
    await batcher.close()
    assert got.truncated == [True] and got.tokens == [4]
    assert abs(float(np.linalg.norm(got.vectors[0])) - 1.0) < 1e-5


async def test_the_queue_is_bounded(fake: FakeEncoder) -> None:
    batcher = MicroBatcher(fake, max_batch=4, max_wait_s=0.0, max_pending=10)
    fake.gate.clear()
    held = asyncio.create_task(batcher.embed(["x"] * 8, normalize=False))
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted, match="embedding queue full"):
        await batcher.embed(["y"] * 3, normalize=False)
    fake.gate.set()
    assert len((await held).vectors) == 8
    assert len((await batcher.embed(["y"] * 3, normalize=False)).vectors) == 3  # room again
    await batcher.close()


async def test_a_failed_pass_fails_its_callers_and_the_batcher_goes_on(fake: FakeEncoder) -> None:
    batcher = MicroBatcher(fake, max_batch=8, max_wait_s=0.01)
    fake.fail = FailedPrecondition("model file missing")
    calls = [batcher.embed(["a"], normalize=False), batcher.embed(["b"], normalize=False)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, FailedPrecondition) for o in outcomes)
    fake.fail = None
    assert len((await batcher.embed(["c"], normalize=False)).vectors) == 1
    await batcher.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        await batcher.embed(["d"], normalize=False)


async def test_request_checks_name_the_field(fake: FakeEncoder) -> None:
    embeddings = Embeddings(MicroBatcher(fake), max_texts=3)
    cases: list[tuple[EmbedCall, type[Exception], str]] = [
        (EmbedCall(texts=[]), InvalidArgument, "texts"),
        (EmbedCall(texts=["a", "b", "c", "d"]), InvalidArgument, "texts"),
        (EmbedCall(texts=["ok", "  "]), InvalidArgument, "texts[1]"),
        (EmbedCall(texts=["ok"], model_name="other"), NotFound, "model.name"),
        (EmbedCall(texts=["ok"], model_version=2), NotFound, "model.version"),
        (EmbedCall(texts=["ok"], model_alias="champion"), NotFound, "model.alias"),
        (EmbedCall(texts=["ok"], dimensions=4), InvalidArgument, "dimensions"),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as err:
            await embeddings.embed(call)
        assert err.value.message.startswith(field), (call, err.value.message)
    fine = await embeddings.embed(
        EmbedCall(texts=["ok"], model_name="fake-embedder", model_version=3, dimensions=DIM)
    )
    assert (fine.model_name, fine.model_version, fine.dimension) == ("fake-embedder", 3, DIM)
    await embeddings.batcher.close()


async def test_the_token_limit_policy(fake: FakeEncoder) -> None:
    long = "one two three four five six"
    cut = Embeddings(MicroBatcher(fake), over_token_limit="truncate")
    got = await cut.embed(EmbedCall(texts=["short", long, long]))
    assert got.truncated == [1, 2] and got.prompt_tokens == 1 + 4 + 4
    strict = Embeddings(MicroBatcher(fake), over_token_limit="reject")
    with pytest.raises(InvalidArgument) as err:
        await strict.embed(EmbedCall(texts=["short", long]))
    assert err.value.field == "texts[1]" and "limit of 4 tokens" in err.value.message
    await cut.batcher.close()
    await strict.batcher.close()


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2.0, 3.0]])


async def test_a_repeated_text_query_reuses_its_embedding(
    fake: FakeEncoder, tmp_path: Path
) -> None:
    """Search by text keeps the query's vector (LRU): the second search of the same text makes
    no forward pass; with the cache off every search does."""
    for entries, passes in ((4096, 1), (0, 2)):
        store = CollectionStore(tmp_path / f"s{entries}", fsync=False)
        store.open()
        registry = CollectorRegistry()
        vectors = Vectors(
            store, Embeddings(MicroBatcher(fake)), ServiceEvents("embedding", lambda: Events()),  # type: ignore[arg-type, return-value]
            VectorMetrics(registry), query_cache_entries=entries,
        )  # fmt: skip
        spec = CollectionSpec(
            name="places", dimension=DIM, metric="cosine", index_kind="flat", index_params={},
            metadata_schema={}, embedding_model="fake-embedder",
        )  # fmt: skip
        await vectors.create(spec, if_not_exists=False)
        fake.batches.clear()
        for _ in range(2):
            await vectors.search(
                "places", vector=None, text="sea view", k=1, filter=None, params={},
                include_metadata=False, include_vectors=False, min_score=None,
            )  # fmt: skip
        assert len(fake.batches) == passes
        hits = registry.get_sample_value("llmops_embedding_query_cache_total", {"outcome": "hit"})
        assert (hits or 0) == 2 - passes
        store.close()


class Events:
    def publish(self, envelope: object) -> None:
        return None

    def has_room(self, count: int) -> bool:
        return True
