"""gRPC servicers of the embedding service: protobuf in, domain call, protobuf out."""

from __future__ import annotations

from typing import Any

from llmops.errors import NotImplementedYet
from llmops.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from services.embedding.embeddings import EmbedCall, Embeddings, EmbedResult

PENDING = "collections arrive with the next part of issue #12 (Embedding and vector search)"


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


def _pending(method: str) -> NotImplementedYet:
    return NotImplementedYet(
        f"llmops.v1.EmbeddingService.{method} is not implemented yet: {PENDING}"
    )


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings

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

    async def CreateCollection(self, request: Any, context: Any) -> Any:
        raise _pending("CreateCollection")

    async def Upsert(self, request: Any, context: Any) -> Any:
        raise _pending("Upsert")

    async def Delete(self, request: Any, context: Any) -> Any:
        raise _pending("Delete")

    async def Search(self, request: Any, context: Any) -> Any:
        raise _pending("Search")
