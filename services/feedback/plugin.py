"""The feedback service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="feedback",
    port=50056,
    admin_port=9156,
    proto_service="FeedbackService",
    summary="explicit/implicit feedback",
    factory="services.feedback.service:create",
    backends=frozenset({"events", "clickhouse"}),
)
