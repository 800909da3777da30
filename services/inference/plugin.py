"""The inference service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(name="inference", ports=(50053, 9153), summary="LLM generation, task runs")
