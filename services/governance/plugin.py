"""The governance service's plug-in: metadata (no settings yet)."""

from __future__ import annotations

from llmops.plugin import ServicePlugin

PLUGIN = ServicePlugin(
    name="governance",
    port=50057,
    admin_port=9157,
    proto_service="GovernanceService",
    summary="registry, policy, audit",
    factory="services.governance.service:create",
)
