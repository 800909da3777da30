"""Wiring of the feedback service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from typing import Any

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import feedback_pb2, feedback_pb2_grpc

PENDING = "feedback capture and dataset export arrive with issue #14 (Feedback service)"


def create(ctx: ServiceContext[Any]) -> ServiceDefinition:
    return ServiceDefinition(
        bindings=[
            pending_binding(feedback_pb2, feedback_pb2_grpc, "FeedbackService", PENDING),
            pending_binding(feedback_pb2, feedback_pb2_grpc, "FeedbackAdminService", PENDING),
        ],
    )
