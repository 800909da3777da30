"""The catalogue of the mesh's services: names, default ports, protobuf service names.

This is the one place that lists the seven services; the CLI, the config defaults, the
status command and the docs all read it. The shared runtime only *names* service packages
(``services.<name>``) and imports them lazily, so a service still never imports another.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTO_PACKAGE = "llmops.v1"
ADMIN_SERVICE = f"{PROTO_PACKAGE}.AdminService"


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One service of the mesh and its defaults."""

    name: str
    """Short name: the package under ``services/`` and the key in the config."""
    port: int
    """Default gRPC port."""
    admin_port: int
    """Default HTTP admin port (Prometheus ``/metrics``)."""
    proto_service: str
    """Short name of the main protobuf service, e.g. ``FeatureService``."""
    summary: str

    @property
    def grpc_service(self) -> str:
        """Fully qualified main service name, as used by the gRPC health protocol."""
        return f"{PROTO_PACKAGE}.{self.proto_service}"

    @property
    def grpc_admin_service(self) -> str:
        """Fully qualified service-specific admin service name."""
        return f"{PROTO_PACKAGE}.{self.proto_service.removesuffix('Service')}AdminService"

    @property
    def module(self) -> str:
        return f"services.{self.name}"


SERVICES: dict[str, ServiceEntry] = {
    e.name: e
    for e in (
        ServiceEntry("feature", 50051, 9151, "FeatureService", "online and offline features"),
        ServiceEntry("embedding", 50052, 9152, "EmbeddingService", "embeddings, vector search"),
        ServiceEntry("inference", 50053, 9153, "InferenceService", "LLM generation, task runs"),
        ServiceEntry("guardrail", 50054, 9154, "GuardrailService", "input/output moderation"),
        ServiceEntry("experiment", 50055, 9155, "ExperimentService", "experiment allocation"),
        ServiceEntry("feedback", 50056, 9156, "FeedbackService", "explicit/implicit feedback"),
        ServiceEntry("governance", 50057, 9157, "GovernanceService", "registry, policy, audit"),
    )
}
