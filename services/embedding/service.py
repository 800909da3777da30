"""Wiring of the embedding service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import embedding_pb2, embedding_pb2_grpc

PENDING = "embeddings and vector search arrive with the Embedding service issue (not yet filed)"


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="embedding",
        bindings=[
            pending_binding(embedding_pb2, embedding_pb2_grpc, "EmbeddingService", PENDING),
            pending_binding(embedding_pb2, embedding_pb2_grpc, "EmbeddingAdminService", PENDING),
        ],
    )
