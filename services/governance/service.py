"""Wiring of the governance service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from typing import Any

from llmops.server import ServiceContext, ServiceDefinition, pending_definition
from llmops.v1 import governance_pb2, governance_pb2_grpc

PENDING = "the registry, policy decisions and audit trail arrive with issue #11 (Governance)"


def create(ctx: ServiceContext[Any]) -> ServiceDefinition:
    return pending_definition(governance_pb2, governance_pb2_grpc, ctx.plugin, PENDING)
