"""The registry's domain objects: artifacts, immutable versions, aliases, lineage, decisions.

Kinds, states, relations and risk tiers are the contract's enum numbers
(``governance_pb2``); the kind-specific facts of a version (model card, prompt template,
dataset facts, policy facts) are the contract's value messages, validated by
:mod:`services.governance.validation`. Times are UTC microseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from llmops.errors import PermissionDenied
from llmops.identity import Identity
from llmops.v1 import common_pb2, governance_pb2

Details = (
    governance_pb2.ModelCard
    | governance_pb2.PromptTemplate
    | governance_pb2.DatasetInfo
    | governance_pb2.PolicyInfo
)
"""Kind-specific facts of a version (the ``details`` oneof)."""

MODEL = governance_pb2.ARTIFACT_KIND_MODEL
PROMPT = governance_pb2.ARTIFACT_KIND_PROMPT
DATASET = governance_pb2.ARTIFACT_KIND_DATASET
POLICY = governance_pb2.ARTIFACT_KIND_POLICY
KINDS = (MODEL, PROMPT, DATASET, POLICY)

REGISTERED = governance_pb2.VERSION_STATE_REGISTERED
APPROVED = governance_pb2.VERSION_STATE_APPROVED
REJECTED = governance_pb2.VERSION_STATE_REJECTED
DEPRECATED = governance_pb2.VERSION_STATE_DEPRECATED
ARCHIVED = governance_pb2.VERSION_STATE_ARCHIVED
STATES = (REGISTERED, APPROVED, REJECTED, DEPRECATED, ARCHIVED)

TRAINED_ON = governance_pb2.LINEAGE_RELATION_TRAINED_ON
EVALUATED_ON = governance_pb2.LINEAGE_RELATION_EVALUATED_ON
DERIVED_FROM = governance_pb2.LINEAGE_RELATION_DERIVED_FROM
SERVED_BY = governance_pb2.LINEAGE_RELATION_SERVED_BY
GOVERNS = governance_pb2.LINEAGE_RELATION_GOVERNS
RELATIONS = (TRAINED_ON, EVALUATED_ON, DERIVED_FROM, SERVED_BY, GOVERNS)

UPSTREAM = governance_pb2.LINEAGE_DIRECTION_UPSTREAM
DOWNSTREAM = governance_pb2.LINEAGE_DIRECTION_DOWNSTREAM
BOTH = governance_pb2.LINEAGE_DIRECTION_BOTH

HIGH_RISK = governance_pb2.RISK_TIER_HIGH
UNACCEPTABLE_RISK = governance_pb2.RISK_TIER_UNACCEPTABLE

T = TypeVar("T")

LATEST = "latest"
"""Reserved alias: always the highest version (never stored)."""


def kind_name(kind: int) -> str:
    return governance_pb2.ArtifactKind.Name(kind).removeprefix("ARTIFACT_KIND_")  # type: ignore[arg-type]


def kind_of(name: str) -> int:
    return int(governance_pb2.ArtifactKind.Value(f"ARTIFACT_KIND_{name}"))


def state_name(state: int) -> str:
    return governance_pb2.VersionState.Name(state).removeprefix("VERSION_STATE_")  # type: ignore[arg-type]


def state_of(name: str) -> int:
    return int(governance_pb2.VersionState.Value(f"VERSION_STATE_{name}"))


def relation_name(relation: int) -> str:
    return governance_pb2.LineageRelation.Name(relation).removeprefix("LINEAGE_RELATION_")  # type: ignore[arg-type]


def relation_of(name: str) -> int:
    return int(governance_pb2.LineageRelation.Value(f"LINEAGE_RELATION_{name}"))


def resource_type(kind: int) -> str:
    """The audit resource type of a kind: ``model``, ``prompt``, ``dataset``, ``policy``."""
    return kind_name(kind).lower()


class PolicyDenied(PermissionDenied):
    """Policy refused the change; the message carries the policy's reasons and decision id."""

    reason = "POLICY_DENIED"

    def __init__(self, message: str, decision_id: str) -> None:
        super().__init__(message, metadata={"decision_id": decision_id})
        self.decision_id = decision_id


# -- refs and nodes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """An artifact version as asked for: by ``version``, by ``alias``, or (both unset) the
    latest. ``where`` is the request field path it came from (for error messages)."""

    kind: int
    name: str
    version: int = 0
    alias: str = ""
    where: str = "ref"


@dataclass(frozen=True, slots=True)
class Node:
    """A lineage node: exactly one of an artifact ref, a route name or an external URI."""

    artifact: Ref | None = None
    route: str = ""
    uri: str = ""


# -- stored things ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    id: int
    kind: int
    name: str
    description: str
    owner: str
    tags: dict[str, str]
    latest_version: int
    aliases: dict[str, int]
    """Alias -> version, as of now."""
    create_time_us: int
    created_by: str


@dataclass(frozen=True, slots=True)
class Version:
    kind: int
    name: str
    version: int
    uri: str
    content_digest: str
    state: int
    metadata: dict[str, common_pb2.Value]
    details: Details | None
    created_by: str
    create_time_us: int
    aliases: tuple[str, ...] = ()
    """Aliases pointing here now."""


@dataclass(frozen=True, slots=True)
class AliasChange:
    """One move of an alias: the full history answers "which version was X at time T"."""

    alias: str
    previous_version: int
    """0: the alias did not exist."""
    version: int
    """0: the alias was removed."""
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class StateChange:
    version: int
    previous_state: int
    state: int
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class NameChange:
    """A rename (``new_name`` set) or a deletion (``new_name`` empty) of an artifact."""

    old_name: str
    new_name: str
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class Edge:
    upstream: Node
    downstream: Node
    relation: int
    created_by: str = ""
    create_time_us: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy decision on a registry change, as returned and referenced by its audit
    record."""

    decision_id: str
    path: str
    bundle_revision: str
    input: dict[str, Any]
    result: Any
    allowed: bool
    reasons: tuple[str, ...]
    decide_time_us: int
    latency_us: int


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """Who makes a change, for its audit record and the rows it writes."""

    tenant: str = ""
    reason: str = ""
    actor: Identity | None = None
    """None: the caller of the RPC being served (``llmops.identity``)."""


@dataclass(frozen=True, slots=True)
class Registration:
    kind: int
    name: str
    content_digest: str
    uri: str = ""
    description: str = ""
    owner: str = ""
    metadata: dict[str, common_pb2.Value] = field(default_factory=dict)
    details: Details | None = None
    lineage: tuple[Edge, ...] = ()
    """Upstream edges of the new version (their downstream is unset: the new version)."""


@dataclass(frozen=True, slots=True)
class AliasMove:
    kind: int
    name: str
    alias: str
    version: int
    """0 removes the alias."""
    expected_version: int | None = None
    """Compare-and-set: what the alias must point at now (0: must not exist)."""


@dataclass(frozen=True, slots=True)
class ArtifactQuery:
    kind: int = 0
    """0: every kind."""
    name_prefix: str = ""
    states: tuple[int, ...] = ()
    """Only with a name (versions): refused here."""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class VersionQuery:
    kind: int
    name: str
    states: tuple[int, ...] = ()
    page_size: int = 0
    page_token: str = ""


# -- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered:
    version: Version
    already_exists: bool
    decision: Decision | None
    audit_event_id: str


@dataclass(frozen=True, slots=True)
class AliasMoved:
    previous_version: int
    version: int
    decision: Decision
    audit_event_id: str


@dataclass(frozen=True, slots=True)
class Transitioned:
    version: Version
    previous_state: int
    decision: Decision
    audit_event_id: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str
