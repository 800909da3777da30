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
async def stub(
    stubs: tuple[
        embedding_pb2_grpc.EmbeddingServiceStub, embedding_pb2_grpc.EmbeddingAdminServiceStub
    ],
) -> embedding_pb2_grpc.EmbeddingServiceStub:
    return stubs[0]


@pytest.fixture
async def stubs(
    tmp_path: Path,
) -> AsyncIterator[
    tuple[embedding_pb2_grpc.EmbeddingServiceStub, embedding_pb2_grpc.EmbeddingAdminServiceStub]
]:
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__EVENTS__BACKEND"] = "local"
    env["LLMOPS__SINK__EMBEDDED"] = "false"
    env["LLMOPS__EMBEDDING__DEMO_DATA"] = "off"
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["embedding"], ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 60)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['embedding']}") as channel:
            yield (
                embedding_pb2_grpc.EmbeddingServiceStub(channel),
                embedding_pb2_grpc.EmbeddingAdminServiceStub(channel),
            )
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


T = common_pb2.ValueType
EQ = common_pb2.FieldCondition.OPERATOR_EQ
LTE = common_pb2.FieldCondition.OPERATOR_LTE
PLACES = [
    ("p1", "Beach hotel with a pool and sea view", "Lisbon", 120.0),
    ("p2", "Seaside apartment a few steps from the sand", "Lisbon", 80.0),
    ("p3", "Quiet room near the central station", "Lisbon", 60.0),
    ("p4", "Resort on the beach with a spa", "Rome", 300.0),
    ("p5", "Budget hostel in the old town", "Rome", 30.0),
]


def cond(field: str, op: int, value: common_pb2.Value) -> common_pb2.Filter:
    return common_pb2.Filter(
        condition=common_pb2.FieldCondition(field=field, operator=op, value=value)  # type: ignore[arg-type]
    )


async def test_collections_by_text_with_filters_snapshots_and_restore(
    stubs: tuple[
        embedding_pb2_grpc.EmbeddingServiceStub, embedding_pb2_grpc.EmbeddingAdminServiceStub
    ],
) -> None:
    stub, admin = stubs
    collection = embedding_pb2.Collection(
        name="places",
        dimension=384,
        metric=embedding_pb2.DISTANCE_METRIC_COSINE,
        index_kind=embedding_pb2.INDEX_KIND_HNSW,
        embedding_model=common_pb2.ModelRef(name="all-minilm-l6-v2"),
        metadata_schema={"city": T.VALUE_TYPE_STRING, "price": T.VALUE_TYPE_DOUBLE},
    )
    created = await stub.CreateCollection(
        embedding_pb2.CreateCollectionRequest(collection=collection), timeout=10
    )
    assert created.collection.embedding_model.version == 1
    items = [
        embedding_pb2.Item(
            id=i, text=text,
            metadata={"city": common_pb2.Value(string_value=c),
                      "price": common_pb2.Value(double_value=p)},
        )
        for i, text, c, p in PLACES
    ]  # fmt: skip
    up = await stub.Upsert(
        embedding_pb2.UpsertRequest(collection="places", items=items), timeout=30
    )
    assert up.upserted_count == 5 and up.usage.prompt_tokens > 0 and not up.truncated
    long = await stub.Upsert(
        embedding_pb2.UpsertRequest(collection="places", items=[
            embedding_pb2.Item(id="short", text="a room"),
            embedding_pb2.Item(id="long", text="lovely room " * 300)]),
        timeout=30,
    )  # fmt: skip
    assert list(long.truncated) == [1]  # cut at the token limit, and said so
    cut = await stub.Search(
        embedding_pb2.SearchRequest(collection="places", text="sea " * 400, k=1), timeout=30
    )
    assert cut.truncated
    again = await stub.Search(  # the same text: its embedding comes from the query cache
        embedding_pb2.SearchRequest(collection="places", text="sea " * 400, k=1), timeout=30
    )
    assert again.truncated and [h.id for h in again.hits] == [h.id for h in cut.hits]
    assert again.hits[0].score == pytest.approx(cut.hits[0].score)
    await stub.Delete(
        embedding_pb2.DeleteRequest(
            collection="places", ids=embedding_pb2.IdList(ids=["short", "long"])
        ),
        timeout=10,
    )

    beach = await stub.Search(
        embedding_pb2.SearchRequest(collection="places", text="hotel by the sea", k=2), timeout=30
    )
    assert {h.id for h in beach.hits} <= {"p1", "p2", "p4"} and beach.hits[0].score > 0.3
    cheap_lisbon = common_pb2.Filter(
        all_of=common_pb2.FilterList(filters=[
            cond("city", EQ, common_pb2.Value(string_value="Lisbon")),
            cond("price", LTE, common_pb2.Value(double_value=100.0)),
        ])
    )  # fmt: skip
    filtered = await stub.Search(
        embedding_pb2.SearchRequest(
            collection="places", text="beach", k=3, filter=cheap_lisbon, include_metadata=True
        ),
        timeout=30,
    )
    assert [h.id for h in filtered.hits] == ["p2", "p3"]
    assert filtered.hits[0].metadata["city"].string_value == "Lisbon"

    snap = await admin.Snapshot(embedding_pb2.SnapshotRequest(collection="places"), timeout=30)
    assert snap.snapshot.item_count == 5 and len(snap.snapshot.sha256) == 64
    gone = await stub.Delete(
        embedding_pb2.DeleteRequest(
            collection="places", filter=cond("city", EQ, common_pb2.Value(string_value="Rome"))
        ),
        timeout=10,
    )
    assert gone.deleted_count == 2
    got = await admin.GetCollection(embedding_pb2.GetCollectionRequest(name="places"), timeout=10)
    assert got.collection.item_count == 3 and got.stats.deleted_count >= 2  # HNSW tombstones
    assert got.stats.last_snapshot.snapshot_id == snap.snapshot.snapshot_id
    restored = await admin.Restore(
        embedding_pb2.RestoreRequest(snapshot_id=snap.snapshot.snapshot_id, collection="places_v0"),
        timeout=30,
    )
    assert restored.collection.item_count == 5
    listed = await admin.ListCollections(embedding_pb2.ListCollectionsRequest(), timeout=10)
    assert [c.name for c in listed.collections] == ["places", "places_v0"]
    dropped = await admin.DropCollection(
        embedding_pb2.DropCollectionRequest(name="places_v0"), timeout=10
    )
    assert dropped.deleted_count == 5

    # bad input: a precise status, nothing applied
    bad = [
        (stub.Upsert(embedding_pb2.UpsertRequest(collection="places", items=[
            embedding_pb2.Item(id="v", vector=common_pb2.FloatVector(values=[0.1] * 3))])),
         grpc.StatusCode.INVALID_ARGUMENT, "items[0].vector"),
        (stub.Search(embedding_pb2.SearchRequest(collection="nope", text="x", k=1)),
         grpc.StatusCode.NOT_FOUND, "nope"),
        (stub.Search(embedding_pb2.SearchRequest(collection="places", text="x", k=5000)),
         grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (stub.Search(embedding_pb2.SearchRequest(collection="places", text="x", k=1,
                     filter=cond("stars", EQ, common_pb2.Value(int64_value=4)))),
         grpc.StatusCode.INVALID_ARGUMENT, "stars"),
        (stub.Search(embedding_pb2.SearchRequest(collection="places", text="  ", k=1)),
         grpc.StatusCode.INVALID_ARGUMENT, "text"),
        (stub.CreateCollection(embedding_pb2.CreateCollectionRequest(collection=embedding_pb2.Collection(
            name="odd", dimension=8, metric=7))), grpc.StatusCode.INVALID_ARGUMENT, "metric"),
        (stub.CreateCollection(embedding_pb2.CreateCollectionRequest(collection=collection)),
         grpc.StatusCode.ALREADY_EXISTS, "places"),
        (stub.Delete(embedding_pb2.DeleteRequest(collection="places", filter=common_pb2.Filter())),
         grpc.StatusCode.INVALID_ARGUMENT, "filter"),
        (admin.Snapshot(embedding_pb2.SnapshotRequest(collection="places",
                                                      destination_uri="file:///tmp/x")),
         grpc.StatusCode.INVALID_ARGUMENT, "destination_uri"),
        (admin.Restore(embedding_pb2.RestoreRequest(uri="file:///etc/passwd", collection="x")),
         grpc.StatusCode.INVALID_ARGUMENT, "uri"),
    ]  # fmt: skip
    for call, code, needle in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is code, (needle, err.value.details())
        assert needle in (err.value.details() or ""), err.value.details()
    after = await admin.GetCollection(embedding_pb2.GetCollectionRequest(name="places"), timeout=10)
    assert after.collection.item_count == 3
