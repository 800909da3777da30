"""Wiring of the feedback service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from typing import Any

from llmops.server import ServiceContext, ServiceDefinition, pending_definition
from llmops.v1 import feedback_pb2, feedback_pb2_grpc

PENDING = "feedback capture and dataset export arrive with issue #14 (Feedback service)"


def create(ctx: ServiceContext[Any]) -> ServiceDefinition:
    return pending_definition(feedback_pb2, feedback_pb2_grpc, ctx.plugin, PENDING)
