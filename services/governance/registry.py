"""The registry: immutable versions, aliases with full history, lifecycle, lineage.

Every change is one store transaction (:mod:`services.governance.store`) in which the
registry reads what it needs, asks the guard (:mod:`services.governance.guard`) and
writes; nothing is half-written. Every change is audited: the event buffer must have room
for the record *before* the transaction (RESOURCE_EXHAUSTED otherwise, nothing written),
the record is published after the commit with the caller as the actor, and a record that
still cannot be published fails the call with DATA_LOSS naming what was stored. A change
the guard denies writes nothing, is audited with outcome DENIED and fails with
PERMISSION_DENIED carrying the policy's reasons and the decision id.

History is never lost: versions are immutable and never reused; alias moves, state
changes, renames and deletions are rows of their own, so "which version was ``champion``
at time T" (:meth:`Registry.alias_at`) and "who approved version 3"
(:meth:`Registry.state_history`) are answerable for the whole life of an artifact.
Lineage edges point at artifacts by their internal id, so a rename keeps the lineage.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from google.protobuf import json_format

from llmops.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from llmops.events.outbox import AuditOutbox
from llmops.identity import Identity, current_identity
from llmops.v1 import common_pb2, events_pb2, governance_pb2
from services.governance import guard as rules
from services.governance import model, validation
from services.governance.guard import ChangeGuard, PolicyGate
from services.governance.model import (
    AliasChange,
    AliasMove,
    AliasMoved,
    Artifact,
    ArtifactQuery,
    Change,
    Decision,
    Details,
    Edge,
    NameChange,
    Node,
    Page,
    PolicyDenied,
    Ref,
    Registered,
    Registration,
    StateChange,
    Transitioned,
    Version,
    VersionQuery,
)
from services.governance.store import (
    AliasEventRow,
    ArtifactRow,
    EdgeRow,
    NameChangeRow,
    RegistryStore,
    RegistryTx,
    RetryTransaction,
    Side,
    StateChangeRow,
    VersionRow,
)

if TYPE_CHECKING:
    from llmops.events.port import ServiceEvents

T = TypeVar("T")

log = structlog.get_logger("llmops.governance")

UNKNOWN = Identity("unknown", events_pb2.ACTOR_TYPE_UNSPECIFIED, False, "governance")
"""The actor of a change made outside an RPC without an explicit actor."""

MOVES: dict[int, tuple[int, ...]] = {
    model.REGISTERED: (model.APPROVED, model.REJECTED),
    model.APPROVED: (model.DEPRECATED,),
    model.DEPRECATED: (model.APPROVED, model.ARCHIVED),
    model.REJECTED: (model.ARCHIVED,),
    model.ARCHIVED: (),
}
"""Lifecycle: state -> the states it may move to (governance.proto, VersionState)."""

GATE_ATTEMPTS = 3
"""Decisions of the policy gate per alias move before ABORTED (facts kept changing)."""

DEFAULT_DEPTH, MAX_DEPTH = 3, 10
DEFAULT_PAGE, MAX_PAGE = 100, 1000
MAX_EDGES = 1000
_DETAIL_TYPES: dict[str, type[Details]] = {
    "model_card": governance_pb2.ModelCard,
    "prompt": governance_pb2.PromptTemplate,
    "dataset": governance_pb2.DatasetInfo,
    "policy": governance_pb2.PolicyInfo,
}


# -- what a transaction hands back --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Audit:
    """An audit record to publish after the commit (built on the event loop, where the
    request id lives)."""

    action: str
    resource_type: str
    name: str
    version: int = 0
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    decision_id: str = ""
    outcome: events_pb2.AuditOutcome.ValueType = events_pb2.AUDIT_OUTCOME_SUCCESS


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    value: T | None
    audit: _Audit | None = None
    denied: Decision | None = None
    denied_what: str = ""
    stale: bool = False
    """The facts a decision made before the transaction depended on changed: nothing was
    written; decide again."""


# -- conversions between rows and domain objects ------------------------------------------


def _dump_details(details: Details | None) -> str:
    if details is None:
        return "{}"
    field_name = validation.DETAIL_FIELD[_detail_kind(details)]
    body = json_format.MessageToDict(details, preserving_proto_field_name=True)
    return json.dumps({field_name: body}, sort_keys=True, separators=(",", ":"))


def _detail_kind(details: Details) -> int:
    for kind, field_name in validation.DETAIL_FIELD.items():
        if isinstance(details, _DETAIL_TYPES[field_name]):
            return kind
    raise TypeError(type(details))


@functools.lru_cache(maxsize=4096)
def _load_details(text: str) -> Details | None:
    """The stored details, parsed. Cached on the text (versions are immutable, and
    json_format parsing a model card is most of a registry read's CPU): the message is
    shared, so callers copy it before changing it (version_pb does)."""
    for field_name, body in json.loads(text).items():
        return json_format.ParseDict(body, _DETAIL_TYPES[field_name]())
    return None


def _dump_metadata(values: dict[str, common_pb2.Value]) -> str:
    body = {k: json_format.MessageToDict(v) for k, v in values.items()}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _load_metadata(text: str) -> dict[str, common_pb2.Value]:
    return dict(_parsed_metadata(text))


@functools.lru_cache(maxsize=4096)
def _parsed_metadata(text: str) -> tuple[tuple[str, common_pb2.Value], ...]:
    """Cached like :func:`_load_details` (the Values are shared: copy before changing)."""
    return tuple(
        (k, json_format.ParseDict(v, common_pb2.Value())) for k, v in json.loads(text).items()
    )


def _card_facts(details: Details | None) -> dict[str, Any]:
    """A model card as policy input: proto field names, the risk tier as its short lowercase
    name (``high``), as deploy/opa/policies/llmops/registry/alias.rego reads it."""
    if not isinstance(details, governance_pb2.ModelCard):
        return {}
    facts = json_format.MessageToDict(details, preserving_proto_field_name=True)
    if "risk_tier" in facts:
        facts["risk_tier"] = str(facts["risk_tier"]).removeprefix("RISK_TIER_").lower()
    return facts


def _artifact(row: ArtifactRow, latest: int, aliases: dict[str, int]) -> Artifact:
    return Artifact(
        id=row.id,
        kind=model.kind_of(row.kind),
        name=row.name,
        description=row.description,
        owner=row.owner,
        tags=json.loads(row.tags_json),
        latest_version=latest,
        aliases=dict(sorted(aliases.items())),
        create_time_us=row.create_time_us,
        created_by=row.created_by,
    )


def _version(art: ArtifactRow, row: VersionRow, aliases: dict[str, int]) -> Version:
    return Version(
        kind=model.kind_of(art.kind),
        name=art.name,
        version=row.version,
        uri=row.uri,
        content_digest=row.content_digest,
        state=model.state_of(row.state),
        metadata=_load_metadata(row.metadata_json),
        details=_load_details(row.details_json),
        created_by=row.created_by,
        create_time_us=row.create_time_us,
        aliases=tuple(sorted(a for a, v in aliases.items() if v == row.version)),
    )


def _version_key(artifact_id: int, version: int) -> str:
    return f"artifact:{artifact_id}@{version}"


def _page_bounds(size: int, token: str) -> tuple[int, int]:
    if size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    try:
        offset = int(token) if token else 0
    except ValueError:
        raise InvalidArgument("page_token", "not a token this service issued") from None
    if offset < 0:
        raise InvalidArgument("page_token", "not a token this service issued")
    return offset, min(size or DEFAULT_PAGE, MAX_PAGE)


def _page(items: list[T], offset: int, limit: int) -> Page[T]:
    """``items`` were fetched with ``limit + 1``: one more means another page."""
    more = len(items) > limit
    return Page(items[:limit], str(offset + limit) if more else "")


@dataclass(slots=True)
class _Walk:
    """A lineage walk's state in one direction."""

    side: Side
    """The column matched against the frontier (``downstream`` walks upstream)."""
    frontier: set[str]
    seen: set[str] = field(default_factory=set)


class Registry:
    """The registry's decisions; the store only keeps rows."""

    def __init__(
        self,
        store: RegistryStore,
        events: ServiceEvents,
        guard: ChangeGuard,
        clock: Callable[[], float] = time.time,
        *,
        gate: PolicyGate | None = None,
        outbox_min_age_s: float = 60.0,
    ) -> None:
        """``outbox_min_age_s``: how old an audit record left in the outbox by another
        process must be before :meth:`relay_outbox` publishes it (a live writer publishes
        its own within milliseconds)."""
        self.store = store
        self.events = events
        self.guard = guard
        self.gate = gate
        """Decides the changes it gates (:meth:`PolicyGate.gates`) before their transaction;
        None: the guard decides everything (the built-in rules)."""
        self._clock = clock
        self.outbox = AuditOutbox(
            _RegistryOutbox(store), events, min_age_s=outbox_min_age_s, clock=clock
        )

    # -- writes ---------------------------------------------------------------------------

    async def register(self, reg: Registration, change: Change) -> Registered:
        """A new immutable version (and the artifact, on its first); an identical content
        digest returns the existing version with ``already_exists``."""
        validation.kind(reg.kind, "kind")
        validation.name(reg.name, "name")
        validation.digest(reg.content_digest, "content_digest")
        validation.uri(reg.uri, "uri")
        validation.text(reg.description, "description")
        validation.text(reg.owner, "owner", 256)
        validation.metadata(reg.metadata, "metadata")
        field_name = (
            validation.DETAIL_FIELD[_detail_kind(reg.details)] if reg.details is not None else None
        )
        validation.details(reg.kind, reg.details, field_name)
        self._check_lineage_of_new_version(reg)
        actor = self._actor(change)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[Registered]:
            art = tx.artifact(model.kind_name(reg.kind), reg.name)
            if art is not None and art.deleted:
                raise FailedPrecondition(
                    f"{model.resource_type(reg.kind)} {reg.name} was deleted; its name stays "
                    "reserved for its history"
                )
            if art is not None:
                existing = tx.version_by_digest(art.id, reg.content_digest)
                if existing is not None:
                    return self._register_again(tx, art, existing, reg, actor, now)
            decision = self.guard.decide(rules.REGISTER, self._register_input(reg, art, actor))
            what = f"register {model.resource_type(reg.kind)} {reg.name}"
            if not decision.allowed:
                return self._denied(decision, what, "artifact.register", reg.kind, reg.name, 0)
            if art is None:
                art_id = tx.insert_artifact(
                    model.kind_name(reg.kind), reg.name, reg.description, reg.owner, "{}",
                    actor.principal, now,
                )  # fmt: skip
                art = tx.artifacts_by_id([art_id])[art_id]
                number = 1
            else:
                number = tx.latest_versions([art.id]).get(art.id, 0) + 1
            row = VersionRow(
                artifact_id=art.id,
                version=number,
                uri=reg.uri,
                content_digest=reg.content_digest,
                state=model.state_name(model.REGISTERED),
                metadata_json=_dump_metadata(reg.metadata),
                details_json=_dump_details(reg.details),
                created_by=actor.principal,
                create_time_us=now,
            )
            tx.insert_version(row)
            tx.insert_state_change(
                StateChangeRow(art.id, number, "", row.state, actor.principal, "registered", now)
            )
            linked = self._link_new_version(tx, art, number, reg.lineage, actor, now)
            after = {
                "version": number,
                "content_digest": reg.content_digest,
                "uri": reg.uri,
                "state": row.state,
                "lineage_added": linked,
            }
            audit = _Audit(
                "artifact.register", model.resource_type(reg.kind), reg.name, number,
                after=after, decision_id=decision.decision_id,
            )  # fmt: skip
            return _Done(Registered(_version(art, row, {}), False, decision, ""), audit)

        done = await self._write(work, change, actor)
        assert done.value is not None
        return replace(done.value, audit_event_id=done.audit_event_id)

    def _register_again(
        self,
        tx: RegistryTx,
        art: ArtifactRow,
        existing: VersionRow,
        reg: Registration,
        actor: Identity,
        now: int,
    ) -> _Done[Registered]:
        """Idempotent on content: the stored version, unchanged; lineage edges it did not
        have yet are added (as AddLineage would) and audited."""
        linked = self._link_new_version(tx, art, existing.version, reg.lineage, actor, now)
        aliases = tx.aliases([art.id]).get(art.id, {})
        registered = Registered(_version(art, existing, aliases), True, None, "")
        audit = None
        if linked:
            audit = _Audit(
                "lineage.add", model.resource_type(reg.kind), reg.name, existing.version,
                after={"added": linked},
            )  # fmt: skip
        return _Done(registered, audit)

    async def set_alias(self, move: AliasMove, change: Change) -> AliasMoved:
        """Point ``alias`` at a version (0 removes it), compare-and-set on
        ``expected_version``; aliases point only at APPROVED versions, and the guard (or,
        when one is configured, the policy gate) decides serving aliases."""
        validation.kind(move.kind, "kind")
        validation.name(move.name, "name")
        validation.alias(move.alias, "alias")
        if move.version < 0:
            raise InvalidArgument("version", "must be >= 1, or 0 to remove the alias")
        if move.expected_version is not None and move.expected_version < 0:
            raise InvalidArgument("expected_version", "must be >= 0 (0 = must not exist)")
        actor = self._actor(change)
        if move.version and self.gate is not None and self.gate.gates(rules.ALIAS):
            return await self._set_alias_gated(move, change, actor)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[AliasMoved]:
            art, current, facts = self._alias_facts(tx, move, actor)
            decision = self.guard.decide(rules.ALIAS, facts)
            return self._move_alias(tx, art, move, change, actor, current, decision, now)

        done = await self._write(work, change, actor)
        assert done.value is not None
        return replace(done.value, audit_event_id=done.audit_event_id)

    async def _set_alias_gated(
        self, move: AliasMove, change: Change, actor: Identity
    ) -> AliasMoved:
        """The policy gate decides outside any transaction (it is async and may be a network
        call): read the facts, decide, then apply in a write transaction only if the same
        facts read there (the version row locked) are unchanged; otherwise decide again.
        A denial writes nothing (it is audited and raised)."""
        assert self.gate is not None
        for _ in range(GATE_ATTEMPTS):
            # room for the decision record, then for the change's audit record
            if not self.events.has_room(2):
                raise ResourceExhausted(
                    "event buffer full: the policy decision and the audit record of this "
                    "change cannot be published now; nothing was changed (retry later)"
                )
            _, current, facts = await self.store.read(
                lambda tx: self._alias_facts(tx, move, actor, lock=False)
            )
            decision = await self.gate.decide(rules.ALIAS, facts, tenant=change.tenant)
            if not decision.allowed:
                what = f"move {self._alias_label(move)} to version {move.version}"
                denied: _Done[AliasMoved] = self._denied(
                    decision, what, "alias.set", move.kind, move.name, move.version
                )
                self._finish(denied, change, actor)  # audits the denial and raises it

            now = self._now_us()

            def work(
                tx: RegistryTx,
                facts: dict[str, Any] = facts,
                decision: Decision = decision,
                now: int = now,
            ) -> _Done[AliasMoved]:
                art, now_current, now_facts = self._alias_facts(tx, move, actor)
                if now_facts != facts:
                    return _Done(None, stale=True)
                return self._move_alias(tx, art, move, change, actor, now_current, decision, now)

            done = await self._write(work, change, actor)
            if not done.stale:
                assert done.value is not None
                return replace(done.value, audit_event_id=done.audit_event_id)
            log.info("alias_gate_redecide", alias=move.alias, name=move.name, previous=current)
        raise Aborted(
            f"{self._alias_label(move)} or its target version changed while the policy "
            f"decided, {GATE_ATTEMPTS} times in a row; nothing was changed (retry)"
        )

    @staticmethod
    def _alias_label(move: AliasMove) -> str:
        return f"alias {move.alias} of {model.resource_type(move.kind)} {move.name}"

    def _alias_facts(
        self, tx: RegistryTx, move: AliasMove, actor: Identity, *, lock: bool = True
    ) -> tuple[ArtifactRow, int, dict[str, Any]]:
        """The artifact, the version the alias points at now (compare-and-set checked) and
        the decision input of the move, from the registry's own records."""
        label = self._alias_label(move)
        art = self._live(tx, move.kind, move.name, "name")
        current = tx.aliases([art.id]).get(art.id, {}).get(move.alias, 0)
        if move.expected_version is not None and move.expected_version != current:
            raise Aborted(
                f"expected_version: {label} points at version {current or 'none'}, the "
                f"request expected {move.expected_version or 'none'} (re-read and retry)"
            )
        target, approvals = (
            self._alias_target(tx, art, move, lock=lock) if move.version else ({}, [])
        )
        return (
            art,
            current,
            {
                "action": "alias.set" if move.version else "alias.remove",
                "actor": actor.principal,
                "alias": move.alias,
                "previous_version": current,
                "artifact": {"kind": art.kind.lower(), "name": art.name, **target},
                "approvals": approvals,
            },
        )

    def _move_alias(
        self,
        tx: RegistryTx,
        art: ArtifactRow,
        move: AliasMove,
        change: Change,
        actor: Identity,
        current: int,
        decision: Decision,
        now: int,
    ) -> _Done[AliasMoved]:
        """Apply a decided alias move (compare-and-set on ``current``) in ``tx``."""
        label = self._alias_label(move)
        action = "alias.set" if move.version else "alias.remove"
        if not decision.allowed:
            what = f"move {label} to version {move.version}"
            return self._denied(decision, what, action, move.kind, move.name, move.version)
        if current == move.version:  # already there: nothing to change or audit
            return _Done(AliasMoved(current, move.version, decision, ""))
        if not tx.move_alias(art.id, move.alias, current, move.version, now):
            if move.expected_version is not None:
                raise Aborted(f"expected_version: {label} moved concurrently (retry)")
            raise RetryTransaction(f"{label} moved concurrently")
        tx.insert_alias_event(
            AliasEventRow(
                art.id, move.alias, current, move.version, actor.principal, change.reason, now
            )
        )
        audit = _Audit(
            action, model.resource_type(move.kind), move.name, move.version,
            before={"alias": move.alias, "version": current},
            after={"alias": move.alias, "version": move.version},
            decision_id=decision.decision_id,
        )  # fmt: skip
        return _Done(AliasMoved(current, move.version, decision, ""), audit)

    def _alias_target(
        self, tx: RegistryTx, art: ArtifactRow, move: AliasMove, *, lock: bool = True
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Facts about the version an alias moves to, and its approvals, for the guard
        (lifecycle checked first)."""
        row = tx.version(art.id, move.version, lock=lock)
        if row is None:
            raise NotFound(f"{art.kind.lower()} {art.name} has no version {move.version}")
        if row.state != model.state_name(model.APPROVED):
            raise FailedPrecondition(
                f"aliases may point only at APPROVED versions: {art.kind.lower()} {art.name} "
                f"version {row.version} is {row.state}"
            )
        details = _load_details(row.details_json)
        approvers = [c.actor for c in tx.state_changes(art.id, row.version) if c.state == row.state]
        key = _version_key(art.id, row.version)
        trained_on = sum(
            1
            for e in tx.edges("downstream", [key])
            if e.relation == model.relation_name(model.TRAINED_ON)
        )
        card = details if isinstance(details, governance_pb2.ModelCard) else None
        gaps = validation.card_gaps(card, trained_on) if art.kind == "MODEL" else []
        facts = {
            "version": row.version,
            "state": row.state.lower(),
            "created_by": row.created_by,
            "card": _card_facts(details),
            "card_gaps": gaps,
        }
        return facts, [{"by": a} for a in approvers]

    async def transition(self, ref: Ref, target: int, change: Change) -> Transitioned:
        """Move a version along its lifecycle (``MOVES``); the guard decides."""
        validation.ref(ref)
        if target not in model.STATES:
            raise InvalidArgument("target_state", "required: a VersionState")
        actor = self._actor(change)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[Transitioned]:
            art, row = self._resolve(tx, ref, lock=True)
            previous = model.state_of(row.state)
            label = f"{art.kind.lower()} {art.name} version {row.version}"
            if target not in MOVES[previous]:
                allowed = " or ".join(model.state_name(s) for s in MOVES[previous]) or "nothing"
                raise FailedPrecondition(
                    f"{label} is {row.state}; it may move to {allowed}, "
                    f"not {model.state_name(target)}"
                )
            aliases = tx.aliases([art.id]).get(art.id, {})
            pointing = sorted(a for a, v in aliases.items() if v == row.version)
            if target == model.ARCHIVED and pointing:
                raise FailedPrecondition(
                    f"{label}: alias {', '.join(pointing)} still points here; move it first"
                )
            decision = self.guard.decide(
                rules.TRANSITION,
                {
                    "action": "artifact.transition",
                    "actor": actor.principal,
                    "artifact": {
                        "kind": art.kind.lower(),
                        "name": art.name,
                        "version": row.version,
                        "state": row.state.lower(),
                        "created_by": row.created_by,
                        "aliases": pointing,
                        "card": _card_facts(_load_details(row.details_json)),
                    },
                    "target_state": model.state_name(target).lower(),
                },
            )
            kind = model.kind_of(art.kind)
            if not decision.allowed:
                what = f"move {label} to {model.state_name(target)}"
                return self._denied(
                    decision, what, "artifact.transition", kind, art.name, row.version
                )
            state = model.state_name(target)
            if not tx.set_state(art.id, row.version, row.state, state):
                raise RetryTransaction(f"{label} changed state concurrently")
            tx.insert_state_change(
                StateChangeRow(
                    art.id, row.version, row.state, state, actor.principal, change.reason, now
                )
            )
            version = _version(art, replace(row, state=state), aliases)
            audit = _Audit(
                "artifact.transition", art.kind.lower(), art.name, row.version,
                before={"state": row.state}, after={"state": state},
                decision_id=decision.decision_id,
            )  # fmt: skip
            return _Done(Transitioned(version, previous, decision, ""), audit)

        done = await self._write(work, change, actor)
        assert done.value is not None
        return replace(done.value, audit_event_id=done.audit_event_id)

    async def add_lineage(self, edges: list[Edge], change: Change) -> int:
        """Record edges (existing ones are not duplicated); returns how many were new."""
        if not edges:
            raise InvalidArgument("edges", "at least one edge")
        if len(edges) > MAX_EDGES:
            raise InvalidArgument("edges", f"at most {MAX_EDGES} per call")
        for i, e in enumerate(edges):
            validation.edge(e, f"edges[{i}]")
        actor = self._actor(change)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[int]:
            added: list[str] = []
            for i, e in enumerate(edges):
                row = EdgeRow(
                    upstream=self._key(tx, e.upstream, f"edges[{i}].upstream"),
                    downstream=self._key(tx, e.downstream, f"edges[{i}].downstream"),
                    relation=model.relation_name(e.relation),
                    created_by=actor.principal,
                    create_time_us=now,
                )
                if tx.insert_edge(row):
                    added.append(f"{row.upstream} -{row.relation}-> {row.downstream}")
            if not added:
                return _Done(0)
            audit = _Audit("lineage.add", "lineage", added[0].split(" ")[-1],
                           after={"added": len(added), "edges": added[:100]})  # fmt: skip
            return _Done(len(added), audit)

        done = await self._write(work, change, actor)
        return done.value or 0

    async def rename(self, kind: int, name: str, new_name: str, change: Change) -> Artifact:
        """Rename an artifact: its versions, aliases, history and lineage stay (they point
        at its id); the old name is recorded. (No RPC in the v1 contract yet.)"""
        validation.kind(kind, "kind")
        validation.name(name, "name")
        validation.name(new_name, "new_name")
        actor = self._actor(change)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[Artifact]:
            art = self._live(tx, kind, name, "name")
            if tx.artifact(art.kind, new_name) is not None:
                raise FailedPrecondition(f"{art.kind.lower()} {new_name} exists already")
            tx.rename_artifact(art.id, new_name)
            tx.insert_name_change(
                NameChangeRow(art.id, name, new_name, actor.principal, change.reason, now)
            )
            renamed = replace(art, name=new_name)
            audit = _Audit("artifact.rename", art.kind.lower(), new_name,
                           before={"name": name}, after={"name": new_name})  # fmt: skip
            return _Done(self._artifact_of(tx, renamed), audit)

        done = await self._write(work, change, actor)
        assert done.value is not None
        return done.value

    async def delete(self, kind: int, name: str, change: Change) -> None:
        """Delete an artifact: it leaves listings and lookups (NOT_FOUND), but its rows,
        versions, alias history and lineage stay, and its name stays reserved. (No RPC in
        the v1 contract yet.)"""
        validation.kind(kind, "kind")
        validation.name(name, "name")
        actor = self._actor(change)
        now = self._now_us()

        def work(tx: RegistryTx) -> _Done[None]:
            art = self._live(tx, kind, name, "name")
            tx.mark_deleted(art.id)
            tx.insert_name_change(
                NameChangeRow(art.id, name, "", actor.principal, change.reason, now)
            )
            audit = _Audit("artifact.delete", art.kind.lower(), name, before={"name": name})
            return _Done(None, audit)

        await self._write(work, change, actor)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, ref: Ref) -> tuple[Artifact, Version]:
        """An artifact and one version (by version, by alias, or the latest)."""
        validation.ref(ref)

        def work(tx: RegistryTx) -> tuple[Artifact, Version]:
            # _resolve + _artifact_of in 4 statements instead of up to 6 (the hot read)
            art = self._live(tx, ref.kind, ref.name, f"{ref.where}.name")
            aliases = tx.aliases([art.id]).get(art.id, {})
            latest = tx.latest_versions([art.id]).get(art.id, 0)
            label = f"{art.kind.lower()} {art.name}"
            number = ref.version
            if not number and ref.alias and ref.alias != model.LATEST:
                number = aliases.get(ref.alias, 0)
                if not number:
                    raise NotFound(f"{ref.where}.alias: {label} has no alias {ref.alias!r}")
            row = tx.version(art.id, number or latest)
            if row is None:
                raise NotFound(f"{ref.where}.version: {label} has no version {number or latest}")
            artifact = _artifact(art, latest, aliases)
            return artifact, _version(art, row, artifact.aliases)

        return await self.store.read(work)

    async def list_artifacts(self, query: ArtifactQuery) -> Page[Artifact]:
        if query.kind:
            validation.kind(query.kind, "kind")
        if query.states:
            raise InvalidArgument("states", "filters versions: set name (and kind) too")
        offset, limit = _page_bounds(query.page_size, query.page_token)
        kind = model.kind_name(query.kind) if query.kind else None

        def work(tx: RegistryTx) -> Page[Artifact]:
            rows = tx.list_artifacts(kind, query.name_prefix, offset, limit + 1)
            ids = [r.id for r in rows]
            latest, aliases = tx.latest_versions(ids), tx.aliases(ids)
            items = [_artifact(r, latest.get(r.id, 0), aliases.get(r.id, {})) for r in rows]
            return _page(items, offset, limit)

        return await self.store.read(work)

    async def list_versions(self, query: VersionQuery) -> Page[Version]:
        """The versions of one artifact, newest first."""
        validation.kind(query.kind, "kind")
        validation.name(query.name, "name")
        for i, state in enumerate(query.states):
            if state not in model.STATES:
                raise InvalidArgument(f"states[{i}]", "not a VersionState")
        offset, limit = _page_bounds(query.page_size, query.page_token)
        states = [model.state_name(s) for s in query.states]

        def work(tx: RegistryTx) -> Page[Version]:
            art = self._live(tx, query.kind, query.name, "name")
            aliases = tx.aliases([art.id]).get(art.id, {})
            rows = tx.versions(art.id, states, offset, limit + 1)
            return _page([_version(art, r, aliases) for r in rows], offset, limit)

        return await self.store.read(work)

    async def alias_history(
        self, kind: int, name: str, alias: str | None = None
    ) -> list[AliasChange]:
        """Every move of ``alias`` (of every alias when None), oldest first: who moved it,
        from which version to which, when and why."""
        validation.kind(kind, "kind")
        validation.name(name, "name")
        if alias is not None:
            validation.alias(alias, "alias")

        def work(tx: RegistryTx) -> list[AliasChange]:
            art = self._any(tx, kind, name)
            return [
                AliasChange(r.alias, r.previous_version, r.version, r.actor, r.reason, r.time_us)
                for r in tx.alias_events(art.id, alias, None)
            ]

        return await self.store.read(work)

    async def alias_at(self, kind: int, name: str, alias: str, at_us: int) -> int:
        """The version ``alias`` pointed at, at time ``at_us`` (0: it did not exist then)."""
        validation.kind(kind, "kind")
        validation.name(name, "name")
        validation.alias(alias, "alias")

        def work(tx: RegistryTx) -> int:
            art = self._any(tx, kind, name)
            moves = tx.alias_events(art.id, alias, at_us)
            return moves[-1].version if moves else 0

        return await self.store.read(work)

    async def state_history(self, ref: Ref) -> list[StateChange]:
        """Every state change of a version (registration first), with who and why."""
        validation.ref(ref)

        def work(tx: RegistryTx) -> list[StateChange]:
            art, row = self._resolve(tx, ref)
            return [
                StateChange(
                    c.version,
                    model.state_of(c.previous_state) if c.previous_state else 0,
                    model.state_of(c.state),
                    c.actor,
                    c.reason,
                    c.time_us,
                )
                for c in tx.state_changes(art.id, row.version)
            ]

        return await self.store.read(work)

    async def name_history(self, kind: int, name: str) -> list[NameChange]:
        """Renames and the deletion of the artifact known now (or last) as ``name``."""
        validation.kind(kind, "kind")
        validation.name(name, "name")

        def work(tx: RegistryTx) -> list[NameChange]:
            art = self._any(tx, kind, name)
            return [
                NameChange(c.old_name, c.new_name, c.actor, c.reason, c.time_us)
                for c in tx.name_changes(art.id)
            ]

        return await self.store.read(work)

    async def lineage(self, node: Node, direction: int, depth: int) -> list[Edge]:
        """Edges reached from ``node`` walking upstream and/or downstream, nearest first."""
        validation.node(node, "node")
        direction = direction or model.BOTH
        if direction not in (model.UPSTREAM, model.DOWNSTREAM, model.BOTH):
            raise InvalidArgument("direction", "not a LineageDirection")
        depth = depth or DEFAULT_DEPTH
        if not 1 <= depth <= MAX_DEPTH:
            raise InvalidArgument("depth", f"must be 1..{MAX_DEPTH} (0 means {DEFAULT_DEPTH})")

        def work(tx: RegistryTx) -> list[Edge]:
            start = self._key(tx, node, "node")
            walks = []
            if direction in (model.UPSTREAM, model.BOTH):
                walks.append(_Walk("downstream", {start}, {start}))
            if direction in (model.DOWNSTREAM, model.BOTH):
                walks.append(_Walk("upstream", {start}, {start}))
            reached: list[EdgeRow] = []
            taken: set[tuple[str, str, str]] = set()
            for _ in range(depth):
                for walk in walks:
                    nxt: set[str] = set()
                    for row in tx.edges(walk.side, walk.frontier):
                        ident = (row.upstream, row.downstream, row.relation)
                        if ident in taken:
                            continue
                        taken.add(ident)
                        reached.append(row)
                        far = row.upstream if walk.side == "downstream" else row.downstream
                        if far not in walk.seen:
                            walk.seen.add(far)
                            nxt.add(far)
                    walk.frontier = nxt
            return self._edges(tx, reached)

        return await self.store.read(work)

    # -- steps ----------------------------------------------------------------------------

    def _actor(self, change: Change) -> Identity:
        return change.actor or current_identity() or UNKNOWN

    def _now_us(self) -> int:
        return int(self._clock() * 1e6)

    def _live(self, tx: RegistryTx, kind: int, name: str, where: str) -> ArtifactRow:
        art = tx.artifact(model.kind_name(kind), name)
        if art is None or art.deleted:
            gone = " (deleted)" if art is not None else ""
            raise NotFound(f"{where}: {model.resource_type(kind)} {name} not found{gone}")
        return art

    def _any(self, tx: RegistryTx, kind: int, name: str) -> ArtifactRow:
        """Deleted artifacts too: their history stays readable."""
        art = tx.artifact(model.kind_name(kind), name)
        if art is None:
            raise NotFound(f"name: {model.resource_type(kind)} {name} not found")
        return art

    def _resolve(
        self, tx: RegistryTx, ref: Ref, lock: bool = False
    ) -> tuple[ArtifactRow, VersionRow]:
        art = self._live(tx, ref.kind, ref.name, f"{ref.where}.name")
        label = f"{art.kind.lower()} {art.name}"
        number = ref.version
        if not number and ref.alias and ref.alias != model.LATEST:
            number = tx.aliases([art.id]).get(art.id, {}).get(ref.alias, 0)
            if not number:
                raise NotFound(f"{ref.where}.alias: {label} has no alias {ref.alias!r}")
        if not number:
            number = tx.latest_versions([art.id]).get(art.id, 0)
        row = tx.version(art.id, number, lock=lock)
        if row is None:
            raise NotFound(f"{ref.where}.version: {label} has no version {number}")
        return art, row

    def _artifact_of(self, tx: RegistryTx, art: ArtifactRow) -> Artifact:
        latest = tx.latest_versions([art.id]).get(art.id, 0)
        return _artifact(art, latest, tx.aliases([art.id]).get(art.id, {}))

    def _key(self, tx: RegistryTx, node: Node, where: str) -> str:
        """The stored key of a node; an artifact ref resolves to a concrete version now."""
        if node.artifact is not None:
            art, row = self._resolve(tx, replace(node.artifact, where=f"{where}.artifact"))
            return _version_key(art.id, row.version)
        return f"route:{node.route}" if node.route else f"uri:{node.uri}"

    def _edges(self, tx: RegistryTx, rows: list[EdgeRow]) -> list[Edge]:
        ids = {
            int(k.removeprefix("artifact:").partition("@")[0])
            for r in rows
            for k in (r.upstream, r.downstream)
            if k.startswith("artifact:")
        }
        arts = tx.artifacts_by_id(ids)

        def node(key: str) -> Node:
            scheme, _, rest = key.partition(":")
            if scheme == "route":
                return Node(route=rest)
            if scheme == "uri":
                return Node(uri=rest)
            art_id, _, version = rest.partition("@")
            art = arts[int(art_id)]
            return Node(artifact=Ref(model.kind_of(art.kind), art.name, int(version)))

        return [
            Edge(
                node(r.upstream),
                node(r.downstream),
                model.relation_of(r.relation),
                r.created_by,
                r.create_time_us,
            )
            for r in rows
        ]

    def _check_lineage_of_new_version(self, reg: Registration) -> None:
        own = Node(artifact=Ref(reg.kind, reg.name))
        for i, e in enumerate(reg.lineage):
            down = e.downstream
            if down != Node() and (
                down.artifact is None
                or (down.artifact.kind, down.artifact.name) != (reg.kind, reg.name)
                or down.artifact.version
                or down.artifact.alias
            ):
                raise InvalidArgument(
                    f"lineage[{i}].downstream", "must be unset: it is the version registered"
                )
            validation.edge(replace(e, downstream=own), f"lineage[{i}]")

    def _link_new_version(
        self,
        tx: RegistryTx,
        art: ArtifactRow,
        version: int,
        lineage: Collection[Edge],
        actor: Identity,
        now: int,
    ) -> int:
        added = 0
        for i, e in enumerate(lineage):
            row = EdgeRow(
                upstream=self._key(tx, e.upstream, f"lineage[{i}].upstream"),
                downstream=_version_key(art.id, version),
                relation=model.relation_name(e.relation),
                created_by=actor.principal,
                create_time_us=now,
            )
            added += tx.insert_edge(row)
        return added

    def _register_input(
        self, reg: Registration, art: ArtifactRow | None, actor: Identity
    ) -> dict[str, Any]:
        return {
            "action": "artifact.register",
            "actor": actor.principal,
            "artifact": {
                "kind": model.resource_type(reg.kind),
                "name": reg.name,
                "exists": art is not None,
                "content_digest": reg.content_digest,
                "uri": reg.uri,
                "card": _card_facts(reg.details),
            },
        }

    def _denied(
        self, decision: Decision, what: str, action: str, kind: int, name: str, version: int
    ) -> _Done[Any]:
        audit = _Audit(
            action, model.resource_type(kind), name, version,
            after={"reasons": list(decision.reasons)}, decision_id=decision.decision_id,
            outcome=events_pb2.AUDIT_OUTCOME_DENIED,
        )  # fmt: skip
        return _Done(None, audit, denied=decision, denied_what=what)

    async def _write(
        self, work: Callable[[RegistryTx], _Done[T]], change: Change, actor: Identity
    ) -> _Published[T]:
        """Run ``work`` in one transaction, then publish its audit record; a denial is
        audited and raised."""
        if not self.events.has_room(1):
            raise ResourceExhausted(
                "event buffer full: the audit record of this change cannot be published now; "
                "nothing was changed (retry later)"
            )
        staged: list[events_pb2.EventEnvelope] = []

        def with_outbox(tx: RegistryTx) -> _Done[T]:
            # The audit record goes into the outbox in the change's own transaction: a
            # process that dies after the commit and before the log has the record leaves
            # it there for relay_outbox, never a change without its audit record.
            staged.clear()  # a transaction run again starts over
            done = work(tx)
            if done.audit is not None and not done.stale:
                envelope = self._envelope(done.audit, change, actor)
                tx.insert_outbox(
                    envelope.audit.event_id, envelope.SerializeToString(), self._now_us()
                )
                staged.append(envelope)
            return done

        done = await self.store.write(with_outbox)
        return self._finish(done, change, actor, staged[0] if staged else None)

    def _finish(
        self,
        done: _Done[T],
        change: Change,
        actor: Identity,
        staged: events_pb2.EventEnvelope | None = None,
    ) -> _Published[T]:
        """Publish ``done``'s audit record (``staged``: the one already in the outbox);
        raise its denial."""
        event_id = ""
        if done.audit is not None:
            envelope = staged if staged is not None else self._envelope(done.audit, change, actor)
            sequence = self._publish(envelope, done.audit)
            event_id = envelope.audit.event_id
            if staged is not None:
                self.outbox.published(event_id, sequence)
        if done.denied is not None:
            reasons = "; ".join(done.denied.reasons) or "denied"
            raise PolicyDenied(
                f"policy {done.denied.path} denied: {done.denied_what}: {reasons} "
                f"(decision_id={done.denied.decision_id})",
                done.denied.decision_id,
            )
        return _Published(done.value, event_id, done.stale)

    def _envelope(self, audit: _Audit, change: Change, actor: Identity) -> events_pb2.EventEnvelope:
        envelope = self.events.audit_event(
            audit.action,
            audit.resource_type,
            audit.name,
            version=str(audit.version or ""),
            before=audit.before,
            after=audit.after,
            reason=change.reason,
            tenant=change.tenant,
            outcome=audit.outcome,
            actor=actor,
        )
        envelope.audit.policy_decision_id = audit.decision_id
        return envelope

    def _publish(self, envelope: events_pb2.EventEnvelope, audit: _Audit) -> int:
        done = (
            "was denied"
            if audit.outcome == events_pb2.AUDIT_OUTCOME_DENIED
            else f"is stored (version {audit.version or '-'})"
        )
        return self.events.publish_audit(
            envelope, f"{audit.action} of {audit.resource_type} {audit.name} {done}"
        )

    async def relay_outbox(self) -> int:
        """Empty the audit outbox (:meth:`AuditOutbox.relay`): records left by a process
        that died between its commit and the append are published; how many."""
        return await self.outbox.relay()


class _RegistryOutbox:
    """The registry store's audit outbox table, for :class:`AuditOutbox`."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        return await self.store.read(lambda tx: tx.outbox_before(cutoff_us, limit))

    async def delete_outbox(self, event_ids: Sequence[str]) -> None:
        await self.store.write(lambda tx: tx.delete_outbox(event_ids))


@dataclass(frozen=True, slots=True)
class _Published(Generic[T]):
    value: T | None
    audit_event_id: str
    stale: bool = False
