"""The embedding service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(name="embedding", ports=(50052, 9152), summary="embeddings, vector search")
