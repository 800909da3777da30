"""Wiring of the feature service: the servicers it registers with the shared runtime."""

from __future__ import annotations

from llmops.server import ServiceContext, ServiceDefinition, pending_binding
from llmops.v1 import feature_pb2, feature_pb2_grpc

PENDING = "the online/offline feature store arrives with issue #4 (Feature service)"


def create(ctx: ServiceContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="feature",
        bindings=[
            pending_binding(feature_pb2, feature_pb2_grpc, "FeatureService", PENDING),
            pending_binding(feature_pb2, feature_pb2_grpc, "FeatureAdminService", PENDING),
        ],
    )
