"""The inference service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="inference",
    port=50053,
    admin_port=9153,
    proto_service="InferenceService",
    summary="LLM generation, task runs",
    factory="services.inference.service:create",
)
