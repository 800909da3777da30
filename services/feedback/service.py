"""Wiring of the feedback service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import feedback_pb2, feedback_pb2_grpc

PENDING = (
    "feedback capture and dataset export arrive with the Feedback service issue (not yet filed)"
)


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="feedback",
        bindings=[
            pending_binding(feedback_pb2, feedback_pb2_grpc, "FeedbackService", PENDING),
            pending_binding(feedback_pb2, feedback_pb2_grpc, "FeedbackAdminService", PENDING),
        ],
    )
