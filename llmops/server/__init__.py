"""Server bootstrap and the per-call pipeline shared by every service."""

from __future__ import annotations

from llmops.callcontext import current_request_id, remaining_time
from llmops.server.app import (
    GrpcService,
    binding,
    paginate,
    pending_binding,
    pending_definition,
    pending_servicer,
    run,
    serve,
)
from llmops.server.context import Binding, ServiceContext, ServiceDefinition

__all__ = [
    "Binding",
    "GrpcService",
    "ServiceContext",
    "ServiceDefinition",
    "binding",
    "current_request_id",
    "paginate",
    "pending_binding",
    "pending_definition",
    "pending_servicer",
    "remaining_time",
    "run",
    "serve",
]
