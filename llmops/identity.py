"""Who is calling: the identity the audit trail records as the actor.

The actor of an audited action is the *authenticated* caller, never a request field
(DESIGN.md, security model): the principal the runtime authenticated (a bearer token's
``token:<id>``, a client certificate's CN). Only a mesh run with ``security.insecure`` has
none; its callers are recorded as ``unauthenticated:<peer address>``. Work the
platform does by itself (schedules, expiry, bandit re-weighting) runs as :data:`SYSTEM`.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmops.callcontext import call_var, principal_var
from llmops.v1 import events_pb2


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    """Stable principal id, e.g. ``svc:ci-release``, ``system:experiments``."""
    actor_type: events_pb2.ActorType.ValueType
    authenticated: bool
    via: str
    """Service through which the action was taken (the RPC's service), or the task."""

    def actor(self) -> events_pb2.Actor:
        return events_pb2.Actor(type=self.actor_type, id=self.principal, via=self.via)


def system(task: str) -> Identity:
    """The platform acting by itself, e.g. ``system("experiments")`` for a scheduled stop."""
    return Identity(f"system:{task}", events_pb2.ACTOR_TYPE_SYSTEM, True, f"llmops:{task}")


def _peer_host(peer: str) -> str:
    # grpc peers: "ipv4:127.0.0.1:5432", "ipv6:[::1]:5432", "unix:/path"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"


def current_identity() -> Identity | None:
    """The caller of the RPC being served, or None outside an RPC."""
    call = call_var.get()
    if call is None:
        return None
    method, context = call
    service = method.lstrip("/").partition("/")[0]
    principal = principal_var.get()
    if principal is not None:
        kind = (
            events_pb2.ACTOR_TYPE_SERVICE
            if "service" in principal.roles
            else events_pb2.ACTOR_TYPE_USER
        )
        return Identity(principal.id, kind, True, service)
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name")
    if names:
        name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        return Identity(f"svc:{name}", events_pb2.ACTOR_TYPE_SERVICE, True, service)
    return Identity(
        f"unauthenticated:{_peer_host(context.peer() or '')}",
        events_pb2.ACTOR_TYPE_UNSPECIFIED,
        False,
        service,
    )
