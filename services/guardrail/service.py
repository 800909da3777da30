"""Wiring of the guardrail service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import guardrail_pb2, guardrail_pb2_grpc

PENDING = "moderation policies and detectors arrive with issue #6 (Guardrail service)"


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="guardrail",
        bindings=[
            pending_binding(guardrail_pb2, guardrail_pb2_grpc, "GuardrailService", PENDING),
            pending_binding(guardrail_pb2, guardrail_pb2_grpc, "GuardrailAdminService", PENDING),
        ],
    )
