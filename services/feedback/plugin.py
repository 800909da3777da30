"""The feedback service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="feedback",
    ports=(50056, 9156),
    summary="explicit/implicit feedback",
    backends=frozenset({"events", "clickhouse"}),
)
