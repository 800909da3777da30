"""Wiring of the governance service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import governance_pb2, governance_pb2_grpc

PENDING = (
    "the registry, policy decisions and audit trail arrive with the Governance service issue "
    "(not yet filed)"
)


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="governance",
        bindings=[
            pending_binding(governance_pb2, governance_pb2_grpc, "GovernanceService", PENDING),
            pending_binding(governance_pb2, governance_pb2_grpc, "GovernanceAdminService", PENDING),
        ],
    )
