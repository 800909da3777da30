"""The governance service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="governance",
    ports=(50057, 9157),
    summary="registry, policy, audit",
)
