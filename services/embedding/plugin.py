"""The embedding service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="embedding",
    port=50052,
    admin_port=9152,
    proto_service="EmbeddingService",
    summary="embeddings, vector search",
    factory="services.embedding.service:create",
)
