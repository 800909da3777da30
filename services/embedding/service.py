"""Wiring of the embedding service: the encoder, the batcher, the servicers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from llmops.errors import FailedPrecondition, NotFound
from llmops.scheduler import Background, Periodic, Task
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import embedding_pb2, embedding_pb2_grpc
from services.embedding.batcher import MicroBatcher
from services.embedding.collection import VectorCollection
from services.embedding.demo import seed_if_absent
from services.embedding.embeddings import Embeddings
from services.embedding.encoder import (
    AsyncEncoder,
    Encoded,
    Encoder,
    ModelInfo,
    OnnxEncoder,
    TritonEncoder,
    warm_up,
)
from services.embedding.index import set_faiss_threads
from services.embedding.milvus import connect, embedded_uri
from services.embedding.plugin import EmbeddingSettings
from services.embedding.servicer import EmbeddingAdminServicer, EmbeddingServicer
from services.embedding.store import CollectionStore
from services.embedding.vectors import VectorMetrics, Vectors

log = structlog.get_logger("llmops.embedding")


class MissingEncoder:
    """Stands in for a model that could not be loaded (its package is not installed): the
    service still starts, and every embed call fails with why and how to fix it."""

    def __init__(self, name: str, version: int, problem: FailedPrecondition) -> None:
        self._info = ModelInfo(name, version, 0, 0, "unavailable")
        self.problem = problem

    @property
    def info(self) -> ModelInfo:
        return self._info

    def encode(self, texts: Sequence[str], *, normalize: bool) -> Encoded:
        raise FailedPrecondition(self.problem.message)


def open_encoder(settings: EmbeddingSettings) -> Encoder | AsyncEncoder:
    """The configured encoder; one that cannot be opened (a model package or the Triton
    client missing) becomes a :class:`MissingEncoder`, so the service still starts."""
    try:
        if settings.encoder == "triton":
            log.info("embedding_encoder", runtime="triton", url=settings.triton_url,
                     model=settings.triton_model)  # fmt: skip
            return TritonEncoder(
                settings.triton_url,
                model=settings.triton_model,
                name=settings.model_name,
                version=settings.model_version,
                timeout_s=settings.triton_timeout_s,
            )
        encoder = OnnxEncoder(
            name=settings.model_name,
            version=settings.model_version,
            intra_op_threads=settings.intra_op_threads,
            intra_op_spinning=settings.intra_op_spinning,
        )
    except FailedPrecondition as problem:
        log.warning("embedding_model_unavailable", problem=problem.message)
        return MissingEncoder(settings.model_name, settings.model_version, problem)
    log.info("embedding_model_warm", first_pass_s=round(warm_up(encoder), 3))
    return encoder


async def rebuild_worn(store: CollectionStore, ratio: float) -> list[str]:
    """Rebuild, one at a time and in the background, every HNSW collection whose index is
    at least ``ratio`` tombstones; returns their names."""
    rebuilt = []
    for name in store.names():
        try:
            collection = store.get(name)
        except NotFound:  # dropped meanwhile
            continue
        if not isinstance(collection, VectorCollection) or collection.spec.index_kind != "hnsw":
            continue  # Milvus compacts its own segments
        stats = collection.stats()
        if stats.tombstone_ratio < ratio:
            continue
        start = time.perf_counter()
        if await asyncio.to_thread(collection.rebuild_online):
            rebuilt.append(name)
            took = round(time.perf_counter() - start, 2)
            log.info("embedding_hnsw_rebuilt", collection=name, items=stats.item_count,
                     tombstones=stats.deleted_count, seconds=took)  # fmt: skip
    return rebuilt


def create(ctx: ServiceContext[EmbeddingSettings]) -> ServiceDefinition:
    settings = ctx.settings
    set_faiss_threads(settings.faiss_threads)
    encoder = open_encoder(settings)
    batcher = MicroBatcher(
        encoder,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_pending=settings.max_pending_texts,
    )
    embeddings = Embeddings(
        batcher,
        max_texts=settings.max_texts_per_call,
        over_token_limit=settings.over_token_limit,
    )
    milvus_uri = settings.milvus_uri or embedded_uri(ctx.backends.state_dir)
    selected = frozenset(settings.milvus_collections)

    def open_milvus() -> object:
        return connect(milvus_uri, token=settings.milvus_token)

    store = CollectionStore(
        ctx.backends.state_dir / "embedding",
        fsync=settings.fsync,
        milvus=open_milvus,
        in_milvus=lambda name: "*" in selected or name in selected,
        wal_segment_bytes=settings.wal_segment_bytes,
    )
    vectors = Vectors(
        store,
        embeddings,
        ctx.events,
        VectorMetrics(ctx.metrics),
        query_cache_entries=settings.query_cache_entries,
        outbox_min_age_s=settings.audit_outbox_min_age_s,
    )

    async def start() -> None:
        # the latest snapshots, then the write-ahead log: every acknowledged change is back
        await asyncio.to_thread(store.open)

    async def stop() -> None:
        await batcher.close()
        if isinstance(encoder, TritonEncoder):
            await encoder.close()
        store.close()

    tasks: list[Task] = [vectors.outbox.task(settings.audit_outbox_interval_s)]
    if settings.rebuild_check_interval_s > 0:

        async def compact() -> None:
            await rebuild_worn(store, settings.rebuild_tombstone_ratio)

        tasks.append(Periodic("hnsw_rebuild", settings.rebuild_check_interval_s, compact))
    if settings.checkpoint_check_interval_s > 0 and settings.checkpoint_wal_bytes > 0:

        async def checkpoint() -> None:
            await vectors.checkpoint_if_grown(
                settings.checkpoint_wal_bytes, keep=settings.checkpoint_keep
            )

        tasks.append(Periodic("wal_checkpoint", settings.checkpoint_check_interval_s, checkpoint))
    if settings.seeds_demo(ctx.mode):  # after SERVING: embedding must not delay the start

        async def seed() -> None:
            await seed_if_absent(vectors, settings.demo_properties)

        tasks.append(Background("demo_data", seed))
    version = settings.model_version
    return ServiceDefinition(
        bindings=[
            binding(
                embedding_pb2,
                embedding_pb2_grpc,
                "EmbeddingService",
                EmbeddingServicer(embeddings, vectors),
            ),
            binding(
                embedding_pb2,
                embedding_pb2_grpc,
                "EmbeddingAdminService",
                EmbeddingAdminServicer(vectors, version),
            ),
        ],
        tasks=tasks,
        on_start=[start],
        on_stop=[stop],
    )
