"""Collections as the RPCs see them: texts embedded with the served model, blocking store
calls moved off the event loop, changes audited, counts in metrics.

Pure of gRPC: the servicer converts the contract's messages to these calls and back.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2
from services.embedding.collection import CollectionSpec, CollectionStats, Hit
from services.embedding.embeddings import EmbedCall, Embeddings
from services.embedding.snapshots import SnapshotInfo
from services.embedding.store import Checkpoint, CollectionInfo, CollectionStore

INLINE_SEARCH_ITEMS = 1024
"""Collections up to this size are searched on the event loop (an exact search of 1,024
384-dimension vectors: ~60 us here, 80 of them: ~6 us); larger ones on a worker thread."""


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to upsert: exactly one of ``vector`` and ``text``."""

    id: str
    vector: Sequence[float] | None
    text: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Upserted:
    count: int
    prompt_tokens: int
    embed_ms: float
    truncated: list[int]
    """Indices of the items whose text was cut at the token limit."""


class VectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter(
            "llmops_embedding_items_total",
            "Items written or deleted, by collection and operation.",
            ["collection", "op"],
            registry=registry,
        )
        self.searches = Counter(
            "llmops_embedding_searches_total",
            "Searches by collection and query kind (vector or text).",
            ["collection", "query"],
            registry=registry,
        )
        self.checkpoints = Counter(
            "llmops_embedding_checkpoints_total",
            "Checkpoints of the collections (snapshots written, then the log cut).",
            registry=registry,
        )
        self.query_cache = Counter(
            "llmops_embedding_query_cache_total",
            "Text queries of Search by whether their embedding came from the cache.",
            ["outcome"],
            registry=registry,
        )
        self.wal_bytes = Gauge(
            "llmops_embedding_wal_bytes",
            "Bytes in the collections' write-ahead log (what a restart reads).",
            registry=registry,
        )


class Vectors:
    """The collection RPCs' domain (see the module docstring)."""

    def __init__(
        self,
        store: CollectionStore,
        embeddings: Embeddings,
        events: ServiceEvents,
        metrics: VectorMetrics,
        query_cache_entries: int = 4096,
    ) -> None:
        """``query_cache_entries``: text queries whose embedding is kept (LRU; 0 = none).
        Storefront queries repeat (a property page's name, popular searches) and the model
        is fixed for the process, so a repeated query costs a lookup, not a forward pass."""
        self.store = store
        self.embeddings = embeddings
        self.events = events
        self.metrics = metrics
        self.query_cache_entries = query_cache_entries
        self._queries: OrderedDict[str, tuple[np.ndarray, int, bool]] = OrderedDict()

    async def _embed_query(self, text: str) -> tuple[np.ndarray, int, bool]:
        """A text query's vector, prompt tokens and whether it was cut: from the LRU when the
        same text was embedded before (the served model never changes in a process)."""
        cached = self._queries.get(text)
        if cached is not None:
            self._queries.move_to_end(text)
            self.metrics.query_cache.labels("hit").inc()
            return cached
        result = await self.embeddings.embed(EmbedCall(texts=[text], normalize=True), "text")
        entry = (result.vectors[0], result.prompt_tokens, bool(result.truncated))
        if self.query_cache_entries:
            self.metrics.query_cache.labels("miss").inc()
            self._queries[text] = entry
            while len(self._queries) > self.query_cache_entries:
                self._queries.popitem(last=False)
        return entry

    # -- collections ---------------------------------------------------------------------

    async def create(self, spec: CollectionSpec, *, if_not_exists: bool) -> CollectionInfo:
        if spec.embedding_model:
            info = self.embeddings.info
            self.embeddings.check_model(spec.embedding_model, 0, "", "collection.embedding_model")
            if spec.dimension != info.dimension:
                raise InvalidArgument(
                    "collection.dimension",
                    f"{spec.dimension} differs from {info.name}'s output ({info.dimension})",
                )
        self._room()
        existed = spec.name in self.store.names()
        info_ = await asyncio.to_thread(self.store.create, spec, if_not_exists=if_not_exists)
        if not existed:
            self._audit("collection.create", spec.name, after={
                "dimension": spec.dimension, "metric": spec.metric, "index_kind": spec.index_kind,
                "embedding_model": spec.embedding_model,
                "metadata_fields": sorted(spec.metadata_schema),
            })  # fmt: skip
        return info_

    async def drop(self, name: str, *, if_exists: bool) -> int:
        self._room()
        existed = name in self.store.names()
        deleted = await asyncio.to_thread(self.store.drop, name, if_exists=if_exists)
        if existed:
            self._audit("collection.drop", name, before={"item_count": deleted})
        return deleted

    async def snapshot(self, name: str) -> SnapshotInfo:
        self._room()
        info = await asyncio.to_thread(self.store.snapshot, name)
        self._audit("collection.snapshot", name, after={
            "snapshot_id": info.snapshot_id, "item_count": info.item_count, "sha256": info.sha256,
        })  # fmt: skip
        return info

    async def checkpoint_if_grown(self, wal_bytes: int, *, keep: int) -> Checkpoint | None:
        """A checkpoint once the log has grown by ``wal_bytes`` since the last one (or since
        start); the service's own, so not audited (it changes no collection)."""
        grown = await asyncio.to_thread(self.store.wal_growth)
        done = None
        if grown >= wal_bytes:
            done = await asyncio.to_thread(self.store.checkpoint, keep=keep)
            self.metrics.checkpoints.inc()
        self.metrics.wal_bytes.set(await asyncio.to_thread(lambda: self.store.wal.size_bytes))
        return done

    async def restore(
        self, snapshot_id: str, uri: str, name: str, *, overwrite: bool
    ) -> CollectionInfo:
        self._room()
        if uri:
            info = await asyncio.to_thread(self.store.restore_uri, uri, name, overwrite=overwrite)
        else:
            info = await asyncio.to_thread(
                self.store.restore, snapshot_id, name, overwrite=overwrite
            )
        self._audit("collection.restore", info.spec.name, after={
            "snapshot_id": snapshot_id, "uri": uri, "item_count": info.item_count,
            "overwrite": overwrite,
        })  # fmt: skip
        return info

    async def infos(self, names: Sequence[str]) -> list[CollectionInfo]:
        """Off the event loop: an item count waits for the collection's lock, which a
        snapshot export or a rebuild may hold for seconds."""
        return await asyncio.to_thread(lambda: [self.store.info(n) for n in names])

    def names(self) -> list[str]:
        return self.store.names()

    async def stats(self, name: str) -> tuple[CollectionInfo, CollectionStats, SnapshotInfo | None]:
        def read() -> tuple[CollectionInfo, CollectionStats, SnapshotInfo | None]:
            stats, snapshot = self.store.stats(name)
            return self.store.info(name), stats, snapshot

        return await asyncio.to_thread(read)

    # -- items ---------------------------------------------------------------------------

    async def upsert(self, name: str, items: Sequence[NewItem]) -> Upserted:
        collection = self.store.get(name)
        spec = collection.spec
        texts = [(i, it.text) for i, it in enumerate(items) if it.text is not None]
        vectors = np.zeros((len(items), spec.dimension), dtype=np.float32)
        tokens, embed_ms, truncated = 0, 0.0, []
        if texts:
            if not spec.embedding_model:
                raise InvalidArgument(
                    f"items[{texts[0][0]}].text",
                    f"collection {name!r} has no embedding model: give vectors",
                )
            result = await self.embeddings.embed(
                EmbedCall(texts=[t for _, t in texts], normalize=True),
                where="items.text",
            )
            for row, (i, _) in enumerate(texts):
                vectors[i] = result.vectors[row]
            tokens, embed_ms = result.prompt_tokens, result.total_ms
            truncated = [texts[row][0] for row in result.truncated]
        for i, it in enumerate(items):
            if it.vector is not None:
                if len(it.vector) != spec.dimension:
                    raise InvalidArgument(
                        f"items[{i}].vector",
                        f"{len(it.vector)} values; the collection's dimension is {spec.dimension}",
                    )
                vectors[i] = np.asarray(it.vector, dtype=np.float32)
            elif it.text is None:
                raise InvalidArgument(f"items[{i}]", "give a vector or a text")
        count = await asyncio.to_thread(
            self.store.upsert, name, [it.id for it in items], vectors, [it.metadata for it in items]
        )
        self.metrics.items.labels(name, "upsert").inc(count)
        return Upserted(count, tokens, embed_ms, truncated)

    async def delete_ids(self, name: str, ids: Sequence[str]) -> int:
        deleted = await asyncio.to_thread(self.store.delete_ids, name, ids)
        self.metrics.items.labels(name, "delete").inc(deleted)
        return deleted

    async def delete_where(self, name: str, filter: common_pb2.Filter) -> int:
        deleted = await asyncio.to_thread(self.store.delete_where, name, filter)
        self.metrics.items.labels(name, "delete").inc(deleted)
        return deleted

    async def search(
        self,
        name: str,
        *,
        vector: Sequence[float] | None,
        text: str | None,
        k: int,
        filter: common_pb2.Filter | None,
        params: Mapping[str, Any],
        include_metadata: bool,
        include_vectors: bool,
        min_score: float | None,
    ) -> tuple[list[Hit], int, bool]:
        """Hits best first, the prompt tokens a text query used, whether it was cut."""
        collection = self.store.get(name)
        tokens, cut = 0, False
        if text is not None:
            if not collection.spec.embedding_model:
                raise InvalidArgument(
                    "text", f"collection {name!r} has no embedding model: search by vector"
                )
            query, tokens, cut = await self._embed_query(text)
        elif vector is not None:
            query = np.asarray(vector, dtype=np.float32)
        else:
            raise InvalidArgument("query", "give a vector or a text")
        args = (name, query, k, filter, params, include_metadata, include_vectors, min_score)
        with self.store.uncontended(name, INLINE_SEARCH_ITEMS) as inline:
            hits = self.store.search(*args) if inline else None
        if hits is None:
            hits = await asyncio.to_thread(self.store.search, *args)
        self.metrics.searches.labels(name, "text" if text is not None else "vector").inc()
        return hits, tokens, cut

    # -- audit ---------------------------------------------------------------------------

    def _room(self) -> None:
        if not self.events.has_room(1):
            raise ResourceExhausted("the event buffer has no room for the audit record; retry")

    def _audit(
        self,
        action: str,
        name: str,
        *,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        envelope = self.events.audit_event(action, "collection", name, before=before, after=after)
        self.events.publish_audit(envelope, f"{action} of {name} is applied")
