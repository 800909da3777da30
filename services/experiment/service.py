"""Wiring of the experiment service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import experiment_pb2, experiment_pb2_grpc

PENDING = "experiment allocation and analysis arrive with issue #5 (Experiment allocator)"


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="experiment",
        bindings=[
            pending_binding(experiment_pb2, experiment_pb2_grpc, "ExperimentService", PENDING),
            pending_binding(experiment_pb2, experiment_pb2_grpc, "ExperimentAdminService", PENDING),
        ],
    )
