"""gRPC servicers of the embedding service: protobuf in, domain call, protobuf out."""

from __future__ import annotations

from typing import Any

from llmops.errors import InvalidArgument
from llmops.server import paginate
from llmops.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from services.embedding.collection import CollectionSpec, Hit
from services.embedding.embeddings import EmbedCall, Embeddings, EmbedResult
from services.embedding.filters import metadata_to_values, values_to_metadata
from services.embedding.snapshots import SnapshotInfo
from services.embedding.store import CollectionInfo
from services.embedding.vectors import NewItem, Vectors


def embed_response(result: EmbedResult) -> embedding_pb2.EmbedResponse:
    out = embedding_pb2.EmbedResponse(
        embeddings=[common_pb2.FloatVector(values=v) for v in result.vectors.tolist()],
        model=common_pb2.ModelRef(name=result.model_name, version=result.model_version),
        dimension=result.dimension,
        usage=common_pb2.Usage(
            prompt_tokens=result.prompt_tokens,
            queue_time_ms=result.queue_ms,
            total_time_ms=result.total_ms,
        ),
        truncated=result.truncated,
    )
    return out


METRICS = {
    embedding_pb2.DISTANCE_METRIC_COSINE: "cosine",
    embedding_pb2.DISTANCE_METRIC_DOT_PRODUCT: "dot",
    embedding_pb2.DISTANCE_METRIC_L2: "l2",
}
KINDS = {
    embedding_pb2.INDEX_KIND_FLAT: "flat",
    embedding_pb2.INDEX_KIND_IVF_FLAT: "ivf_flat",
    embedding_pb2.INDEX_KIND_HNSW: "hnsw",
}
METRIC_ENUM = {v: k for k, v in METRICS.items()}
KIND_ENUM = {v: k for k, v in KINDS.items()}


def _number(value: common_pb2.Value, where: str) -> int | float:
    kind = value.WhichOneof("kind")
    if kind == "int64_value":
        return int(value.int64_value)
    if kind == "double_value":
        number = float(value.double_value)
        return int(number) if number.is_integer() else number
    raise InvalidArgument(where, "must be a number")


def params_of(values: Any, where: str) -> dict[str, int | float]:
    return {k: _number(v, f"{where}[{k!r}]") for k, v in sorted(values.items())}


def spec_of(c: embedding_pb2.Collection) -> CollectionSpec:
    """The contract's Collection as a spec. Unset metric = cosine; unset index kind =
    ivf_flat (deletable, exact until trained, GPU-ready); IVF_PQ is not offered yet."""
    if c.metric and c.metric not in METRICS:
        raise InvalidArgument("collection.metric", f"unknown metric {c.metric}")
    if c.index_kind == embedding_pb2.INDEX_KIND_IVF_PQ:
        raise InvalidArgument("collection.index_kind", "IVF_PQ is not offered yet: use IVF_FLAT")
    if c.index_kind and c.index_kind not in KINDS:
        raise InvalidArgument("collection.index_kind", f"unknown index kind {c.index_kind}")
    if c.embedding_model.version or c.embedding_model.alias:
        raise InvalidArgument(
            "collection.embedding_model", "name the model only (the service serves one version)"
        )
    return CollectionSpec(
        name=c.name,
        dimension=c.dimension,
        metric=METRICS.get(c.metric, "cosine"),
        index_kind=KINDS.get(c.index_kind, "ivf_flat"),
        index_params=params_of(c.index_params, "collection.index_params"),
        metadata_schema={k: int(v) for k, v in sorted(c.metadata_schema.items())},
        embedding_model=c.embedding_model.name,
        description=c.description,
    )


def collection_pb(info: CollectionInfo, model_version: int = 0) -> embedding_pb2.Collection:
    spec = info.spec
    out = embedding_pb2.Collection(
        name=spec.name,
        dimension=spec.dimension,
        metric=METRIC_ENUM[spec.metric],
        index_kind=KIND_ENUM[spec.index_kind],
        metadata_schema=spec.metadata_schema,  # type: ignore[arg-type]
        description=spec.description,
        item_count=info.item_count,
    )
    for key, value in spec.index_params.items():
        if isinstance(value, int):
            out.index_params[key].int64_value = value
        else:
            out.index_params[key].double_value = value
    if spec.embedding_model:
        out.embedding_model.name = spec.embedding_model
        out.embedding_model.version = model_version
    out.create_time.FromNanoseconds(int(info.create_time * 1e9))
    out.update_time.FromNanoseconds(int(info.update_time * 1e9))
    return out


def snapshot_pb(info: SnapshotInfo) -> embedding_pb2.SnapshotInfo:
    out = embedding_pb2.SnapshotInfo(
        snapshot_id=info.snapshot_id,
        collection=info.collection,
        uri=info.uri,
        item_count=info.item_count,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
    )
    out.create_time.FromNanoseconds(int(info.create_time * 1e9))
    return out


def hit_pb(hit: Hit, schema: dict[str, int]) -> embedding_pb2.SearchHit:
    out = embedding_pb2.SearchHit(id=hit.id, score=hit.score)
    if hit.metadata is not None:
        for key, value in metadata_to_values(hit.metadata, schema).items():
            out.metadata[key].CopyFrom(value)
    if hit.vector is not None:
        out.vector.values.extend(hit.vector.tolist())
    return out


def items_of(request: embedding_pb2.UpsertRequest) -> list[NewItem]:
    out = []
    for i, item in enumerate(request.items):
        which = item.WhichOneof("content")
        if which is None:
            raise InvalidArgument(f"items[{i}]", "give a vector or a text")
        out.append(
            NewItem(
                id=item.id,
                vector=list(item.vector.values) if which == "vector" else None,
                text=item.text if which == "text" else None,
                metadata=values_to_metadata(item.metadata, f"items[{i}].metadata"),
            )
        )
    return out


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, embeddings: Embeddings, vectors: Vectors) -> None:
        self.embeddings = embeddings
        self.vectors = vectors

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Any
    ) -> embedding_pb2.EmbedResponse:
        result = await self.embeddings.embed(
            EmbedCall(
                texts=list(request.texts),
                model_name=request.model.name,
                model_version=request.model.version,
                model_alias=request.model.alias,
                normalize=request.normalize,
                dimensions=request.dimensions,
            )
        )
        return embed_response(result)

    async def CreateCollection(
        self, request: embedding_pb2.CreateCollectionRequest, context: Any
    ) -> embedding_pb2.CreateCollectionResponse:
        info = await self.vectors.create(
            spec_of(request.collection), if_not_exists=request.if_not_exists
        )
        return embedding_pb2.CreateCollectionResponse(
            collection=collection_pb(info, self.embeddings.info.version)
        )

    async def Upsert(
        self, request: embedding_pb2.UpsertRequest, context: Any
    ) -> embedding_pb2.UpsertResponse:
        done = await self.vectors.upsert(request.collection, items_of(request))
        return embedding_pb2.UpsertResponse(
            upserted_count=done.count,
            usage=common_pb2.Usage(prompt_tokens=done.prompt_tokens, total_time_ms=done.embed_ms),
            truncated=done.truncated,
        )

    async def Delete(
        self, request: embedding_pb2.DeleteRequest, context: Any
    ) -> embedding_pb2.DeleteResponse:
        which = request.WhichOneof("selector")
        if which == "ids":
            deleted = await self.vectors.delete_ids(request.collection, list(request.ids.ids))
        elif which == "filter":
            deleted = await self.vectors.delete_where(request.collection, request.filter)
        else:
            raise InvalidArgument("selector", "give ids or a filter")
        return embedding_pb2.DeleteResponse(deleted_count=deleted)

    async def Search(
        self, request: embedding_pb2.SearchRequest, context: Any
    ) -> embedding_pb2.SearchResponse:
        which = request.WhichOneof("query")
        hits, tokens, cut = await self.vectors.search(
            request.collection,
            vector=list(request.vector.values) if which == "vector" else None,
            text=request.text if which == "text" else None,
            k=request.k,
            filter=request.filter if request.HasField("filter") else None,
            params=params_of(request.search_params, "search_params"),
            include_metadata=request.include_metadata,
            include_vectors=request.include_vectors,
            min_score=request.min_score if request.HasField("min_score") else None,
        )
        schema = self.vectors.store.get(request.collection).spec.metadata_schema
        return embedding_pb2.SearchResponse(
            hits=[hit_pb(h, schema) for h in hits],
            usage=common_pb2.Usage(prompt_tokens=tokens),
            truncated=cut,
        )


class EmbeddingAdminServicer(embedding_pb2_grpc.EmbeddingAdminServiceServicer):
    def __init__(self, vectors: Vectors, model_version: int) -> None:
        self.vectors = vectors
        self.model_version = model_version

    async def ListCollections(
        self, request: embedding_pb2.ListCollectionsRequest, context: Any
    ) -> embedding_pb2.ListCollectionsResponse:
        names, token = paginate(self.vectors.names(), request.page_size, request.page_token)
        return embedding_pb2.ListCollectionsResponse(
            collections=[
                collection_pb(info, self.model_version) for info in await self.vectors.infos(names)
            ],
            next_page_token=token,
        )

    async def GetCollection(
        self, request: embedding_pb2.GetCollectionRequest, context: Any
    ) -> embedding_pb2.GetCollectionResponse:
        info, stats, snapshot = await self.vectors.stats(request.name)
        out = embedding_pb2.GetCollectionResponse(
            collection=collection_pb(info, self.model_version),
            stats=embedding_pb2.IndexStats(
                item_count=stats.item_count,
                deleted_count=stats.deleted_count,
                memory_bytes=stats.memory_bytes,
                trained=stats.trained,
                device=stats.device,
            ),
        )
        if snapshot is not None:
            out.stats.last_snapshot.CopyFrom(snapshot_pb(snapshot))
        return out

    async def DropCollection(
        self, request: embedding_pb2.DropCollectionRequest, context: Any
    ) -> embedding_pb2.DropCollectionResponse:
        deleted = await self.vectors.drop(request.name, if_exists=request.if_exists)
        return embedding_pb2.DropCollectionResponse(deleted_count=deleted)

    async def Snapshot(
        self, request: embedding_pb2.SnapshotRequest, context: Any
    ) -> embedding_pb2.SnapshotResponse:
        if request.destination_uri:
            # never write where a caller says: snapshots go to the configured store only
            raise InvalidArgument(
                "destination_uri", "not accepted: snapshots go to the configured snapshot store"
            )
        return embedding_pb2.SnapshotResponse(
            snapshot=snapshot_pb(await self.vectors.snapshot(request.collection))
        )

    async def Restore(
        self, request: embedding_pb2.RestoreRequest, context: Any
    ) -> embedding_pb2.RestoreResponse:
        which = request.WhichOneof("source")
        if which is None:
            raise InvalidArgument("source", "give snapshot_id or uri")
        info = await self.vectors.restore(
            request.snapshot_id if which == "snapshot_id" else "",
            request.uri if which == "uri" else "",
            request.collection,
            overwrite=request.overwrite,
        )
        return embedding_pb2.RestoreResponse(collection=collection_pb(info, self.model_version))
