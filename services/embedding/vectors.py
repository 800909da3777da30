"""Collections as the RPCs see them: texts embedded with the served model, blocking store
calls moved off the event loop, changes audited, counts in metrics.

A collection's create, drop, snapshot and restore are audited through the store's outbox: the
record is built under the store's write lock and logged with the change, published as usual,
and forgotten once the event log holds it (:class:`AuditOutbox`, the service's
``audit_outbox`` task); a process killed in between leaves it to the next one.

Pure of gRPC: the servicer converts the contract's messages to these calls and back.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.outbox import AuditOutbox, StagedAudit
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2, events_pb2
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
        outbox_min_age_s: float = 60.0,
    ) -> None:
        """``query_cache_entries``: text queries whose embedding is kept (LRU; 0 = none).
        Storefront queries repeat (a property page's name, popular searches) and the model
        is fixed for the process, so a repeated query costs a lookup, not a forward pass.
        ``outbox_min_age_s``: see :class:`AuditOutbox` (records recovered at start go at
        once: this process alone holds the store)."""
        self.store = store
        self.embeddings = embeddings
        self.events = events
        self.metrics = metrics
        self.outbox = AuditOutbox(_StoreOutbox(store), events, min_age_s=outbox_min_age_s)
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
        after = {
            "dimension": spec.dimension, "metric": spec.metric, "index_kind": spec.index_kind,
            "embedding_model": spec.embedding_model,
            "metadata_fields": sorted(spec.metadata_schema),
        }  # fmt: skip
        audit = self._draft("collection.create", lambda items: (None, after))
        info_ = await asyncio.to_thread(
            self.store.create, spec, if_not_exists=if_not_exists, audit=audit
        )
        self._publish(audit)  # none when it existed already (if_not_exists)
        return info_

    async def drop(self, name: str, *, if_exists: bool) -> int:
        self._room()
        audit = self._draft("collection.drop", lambda items: ({"item_count": items}, None))
        deleted = await asyncio.to_thread(self.store.drop, name, if_exists=if_exists, audit=audit)
        self._publish(audit)
        return deleted

    async def snapshot(self, name: str) -> SnapshotInfo:
        self._room()
        info = await asyncio.to_thread(self.store.snapshot, name)
        # A snapshot is no log record: its audit record is logged just after it is written.
        after = {"snapshot_id": info.snapshot_id, "item_count": info.item_count,
                 "sha256": info.sha256}  # fmt: skip
        audit = self._draft("collection.snapshot", lambda items: (None, after))
        await asyncio.to_thread(self.store.stage_audit, audit(name, info.item_count))
        self._publish(audit)
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
        audit = self._draft("collection.restore", lambda items: (None, {
            "snapshot_id": snapshot_id, "uri": uri, "item_count": items, "overwrite": overwrite,
        }))  # fmt: skip
        if uri:
            info = await asyncio.to_thread(
                self.store.restore_uri, uri, name, overwrite=overwrite, audit=audit
            )
        else:
            info = await asyncio.to_thread(
                self.store.restore, snapshot_id, name, overwrite=overwrite, audit=audit
            )
        self._publish(audit)
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

    def _draft(self, action: str, shape: _Shape) -> _AuditDraft:
        return _AuditDraft(self.events, self.outbox, action, shape)

    def _publish(self, draft: _AuditDraft) -> None:
        """Publish the record the store staged (none: the store changed nothing). On failure
        it stays staged (the relay publishes it) and the caller gets DATA_LOSS."""
        envelope = draft.envelope
        if envelope is None:
            return
        event = envelope.audit
        sequence = self.events.publish_audit(
            envelope, f"{event.action} of {event.resource.name} is applied"
        )
        self.outbox.published(event.event_id, sequence)

    async def relay_outbox(self) -> int:
        """:meth:`AuditOutbox.relay`: how many records a dead process left were published."""
        return await self.outbox.relay()


_Shape = Callable[[int], tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]
"""A change's audit ``before`` and ``after``, given the item count the store reports."""


class _AuditDraft:
    """An audit record the store completes under its write lock (:data:`AuditFor`). Built
    in the store's thread: the RPC's identity and request id come with the copied context."""

    def __init__(
        self, events: ServiceEvents, outbox: AuditOutbox, action: str, shape: _Shape
    ) -> None:
        self.events = events
        self.outbox = outbox
        self.action = action
        self.shape = shape
        self.envelope: events_pb2.EventEnvelope | None = None

    def __call__(self, name: str, items: int) -> StagedAudit:
        before, after = self.shape(items)
        self.envelope = envelope = self.events.audit_event(
            self.action, "collection", name, before=before, after=after
        )
        return StagedAudit(
            envelope.audit.event_id, envelope.SerializeToString(), self.outbox.now_us()
        )


class _StoreOutbox:
    """The collection store's outbox, for :class:`AuditOutbox` (its calls off the loop)."""

    def __init__(self, store: CollectionStore) -> None:
        self.store = store

    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        return await asyncio.to_thread(self.store.outbox_before, cutoff_us, limit)

    async def delete_outbox(self, event_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.store.delete_outbox, event_ids)
