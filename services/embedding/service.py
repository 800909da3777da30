"""Wiring of the embedding service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from typing import Any

from llmops.server import ServiceContext, ServiceDefinition, pending_definition
from llmops.v1 import embedding_pb2, embedding_pb2_grpc

PENDING = "embeddings and vector search arrive with issue #12 (Embedding and vector search service)"


def create(ctx: ServiceContext[Any]) -> ServiceDefinition:
    return pending_definition(embedding_pb2, embedding_pb2_grpc, ctx.plugin, PENDING)
