"""Wiring of the inference service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from typing import Any

from llmops.server import ServiceContext, ServiceDefinition, pending_definition
from llmops.v1 import inference_pb2, inference_pb2_grpc

PENDING = "LLM routes, generation and task runs arrive with issue #13 (Inference service)"


def create(ctx: ServiceContext[Any]) -> ServiceDefinition:
    return pending_definition(inference_pb2, inference_pb2_grpc, ctx.plugin, PENDING)
