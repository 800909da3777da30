"""The registry's decisions (services.governance.registry) on an embedded SQLite store:
idempotent registration, alias history at a point in time, compare-and-set, the four-eyes
and model-card rules, card and input validation naming the field, the lifecycle, lineage
walks both ways with a depth limit, audit records, and history kept across renames and
deletions."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from llmops.events.port import ServiceEvents
from llmops.identity import Identity
from llmops.v1 import events_pb2, governance_pb2
from services.governance import model
from services.governance.guard import BuiltinRules
from services.governance.model import (
    AliasMove,
    ArtifactQuery,
    Change,
    Edge,
    Node,
    PolicyDenied,
    Ref,
    Registration,
    VersionQuery,
)
from services.governance.registry import Registry
from services.governance.store_sql import SqlRegistryStore


def digest(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode()).hexdigest()


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[events_pb2.EventEnvelope] = []
        self.room = True

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        self.events.append(envelope)

    def publish_all(self, envelopes: list[events_pb2.EventEnvelope]) -> None:
        self.events.extend(envelopes)

    def has_room(self, count: int) -> bool:
        return self.room


class FakeEvents(ServiceEvents):
    """The real port (the real audit builder) over a publisher that keeps what it gets."""

    def __init__(self) -> None:
        self.publisher = FakePublisher()
        super().__init__("governance", lambda: self.publisher)  # type: ignore[arg-type,return-value]

    @property
    def audits(self) -> list[events_pb2.AuditEvent]:
        return [e.audit for e in self.publisher.events]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def person(name: str) -> Change:
    return Change(actor=Identity(name, events_pb2.ACTOR_TYPE_USER, True, "test"), reason="r")


ALICE, BOB = person("user:alice"), person("user:bob")
MODEL, PROMPT, DATASET = model.MODEL, model.PROMPT, model.DATASET


def complete_card(**changes: Any) -> governance_pb2.ModelCard:
    card = governance_pb2.ModelCard(
        intended_use="Summarize guest reviews",
        risk_tier=governance_pb2.RISK_TIER_LIMITED,
        risk_tier_rationale="content shown to shoppers (Art. 50)",
        limitations=["misses rare complaints"],
        evaluations=[governance_pb2.EvaluationResult(metric="rougeL", value=0.4)],
        human_oversight_contact="content-ml-oncall@example.com",
        languages=["en", "nl-NL"],
        license="Apache-2.0",
    )
    for key, value in changes.items():
        if isinstance(value, list):
            card.ClearField(key)
            getattr(card, key).extend(value)
        else:
            setattr(card, key, value)
    return card


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
async def registry(tmp_path: Path, events: FakeEvents, clock: Clock) -> AsyncIterator[Registry]:
    store = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    await store.open()
    yield Registry(store, events, BuiltinRules(["champion", "production"], clock), clock)
    await store.close()


async def register(
    registry: Registry,
    name: str,
    content: str,
    kind: int = MODEL,
    by: Change = ALICE,
    **fields: Any,
) -> int:
    reg = Registration(kind, name, digest(content), **fields)
    return (await registry.register(reg, by)).version.version


async def approved_model(registry: Registry, name: str = "summary-llm", **fields: Any) -> int:
    """A model registered by alice with a complete card and its training data, approved by
    bob."""
    if not await _exists(registry, DATASET, "reviews"):
        await register(registry, "reviews", "reviews", DATASET)
    fields.setdefault("details", complete_card())
    fields.setdefault(
        "lineage",
        (Edge(Node(artifact=Ref(DATASET, "reviews")), Node(), model.TRAINED_ON),),
    )
    number = await register(registry, name, f"{name}-{fields!r}", **fields)
    await registry.transition(Ref(MODEL, name, number), model.APPROVED, BOB)
    return number


async def _exists(registry: Registry, kind: int, name: str) -> bool:
    page = await registry.list_artifacts(ArtifactQuery(kind=kind, name_prefix=name))
    return any(a.name == name for a in page.items)


# -- registration ---------------------------------------------------------------------------


async def test_versions_are_numbered_and_an_identical_digest_returns_the_existing_one(
    registry: Registry, events: FakeEvents, clock: Clock
) -> None:
    reg = Registration(MODEL, "summary-llm", digest("weights-1"), "s3://m/1/", "d", "team")
    first = await registry.register(reg, ALICE)
    assert (first.version.version, first.already_exists) == (1, False)
    assert first.version.created_by == "user:alice"
    assert first.version.create_time_us == int(clock.now * 1e6)
    assert first.version.state == model.REGISTERED
    assert first.decision is not None and first.decision.allowed
    assert first.audit_event_id == events.audits[0].event_id
    clock.tick()
    again = await registry.register(reg, BOB)  # same content, another caller
    assert again.already_exists and again.version == first.version
    assert again.decision is None and again.audit_event_id == ""
    second = await registry.register(Registration(MODEL, "summary-llm", digest("w2")), BOB)
    assert (second.version.version, second.already_exists) == (2, False)
    artifact, latest = await registry.get(Ref(MODEL, "summary-llm"))
    assert (artifact.latest_version, latest.version, artifact.owner) == (2, 2, "team")
    assert [a.action for a in events.audits] == ["artifact.register", "artifact.register"]
    audit = events.audits[0]
    assert audit.actor.id == "user:alice" and audit.resource.type == "model"
    assert audit.resource.version == "1" and audit.policy_decision_id
    assert audit.after["content_digest"] == digest("weights-1")


async def test_which_version_held_an_alias_at_any_time(
    registry: Registry, events: FakeEvents, clock: Clock
) -> None:
    for n in range(3):
        await approved_model(registry, details=complete_card(intended_use=f"use {n}"))
    times = []
    for version in (1, 2, 0, 3):
        times.append(clock.tick(10))
        await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", version), BOB)
    at = [int(t * 1e6) for t in times]
    assert await registry.alias_at(MODEL, "summary-llm", "champion", at[0] - 1) == 0
    assert [await registry.alias_at(MODEL, "summary-llm", "champion", t) for t in at] == [
        1, 2, 0, 3,
    ]  # fmt: skip
    assert await registry.alias_at(MODEL, "summary-llm", "champion", at[1] + 5_000_000) == 2
    history = await registry.alias_history(MODEL, "summary-llm", "champion")
    assert [(h.previous_version, h.version, h.actor) for h in history] == [
        (0, 1, "user:bob"), (1, 2, "user:bob"), (2, 0, "user:bob"), (0, 3, "user:bob"),
    ]  # fmt: skip
    assert [h.time_us for h in history] == at
    moves = [a for a in events.audits if a.action.startswith("alias.")]
    assert [a.action for a in moves] == ["alias.set", "alias.set", "alias.remove", "alias.set"]
    assert moves[1].before["version"] == 1 and moves[1].after["version"] == 2


async def test_a_stale_expected_version_is_aborted_and_writes_nothing(
    registry: Registry, events: FakeEvents
) -> None:
    await approved_model(registry)
    await approved_model(registry, details=complete_card(intended_use="v2"))
    moved = await registry.set_alias(
        AliasMove(MODEL, "summary-llm", "champion", 1, expected_version=0), BOB
    )
    assert (moved.previous_version, moved.version) == (0, 1) and moved.audit_event_id
    audits = len(events.audits)
    for expected in (0, 2):
        with pytest.raises(Aborted, match="expected_version"):
            await registry.set_alias(
                AliasMove(MODEL, "summary-llm", "champion", 2, expected_version=expected), BOB
            )
    assert len(events.audits) == audits
    artifact, _ = await registry.get(Ref(MODEL, "summary-llm"))
    assert artifact.aliases == {"champion": 1}
    moved = await registry.set_alias(
        AliasMove(MODEL, "summary-llm", "champion", 2, expected_version=1), BOB
    )
    assert (moved.previous_version, moved.version) == (1, 2)


# -- policy -----------------------------------------------------------------------------------


async def test_a_serving_alias_needs_an_approval_by_another_person(
    registry: Registry, events: FakeEvents
) -> None:
    await register(registry, "self-approved", "w", details=complete_card())
    await registry.transition(Ref(MODEL, "self-approved", 1), model.APPROVED, ALICE)
    with pytest.raises(PolicyDenied) as denied:
        await registry.set_alias(AliasMove(MODEL, "self-approved", "champion", 1), ALICE)
    message = denied.value.message
    assert "approved by another person than its registrant 'user:alice'" in message
    assert f"decision_id={denied.value.decision_id}" in message
    audit = events.audits[-1]
    assert audit.outcome == events_pb2.AUDIT_OUTCOME_DENIED and audit.action == "alias.set"
    assert audit.policy_decision_id == denied.value.decision_id
    artifact, _ = await registry.get(Ref(MODEL, "self-approved"))
    assert artifact.aliases == {}  # nothing written
    canary = await registry.set_alias(AliasMove(MODEL, "self-approved", "canary", 1), ALICE)
    assert canary.decision.allowed  # not a serving alias: the lifecycle rule is enough


async def test_a_serving_model_needs_a_complete_card_and_its_training_data(
    registry: Registry,
) -> None:
    await register(registry, "bare", "w", details=complete_card(evaluations=[], limitations=[]))
    await registry.transition(Ref(MODEL, "bare", 1), model.APPROVED, BOB)
    with pytest.raises(PolicyDenied) as denied:
        await registry.set_alias(AliasMove(MODEL, "bare", "production", 1), BOB)
    assert (
        "missing: model_card.limitations, model_card.evaluations, training data"
        in denied.value.message
    )
    await register(registry, "summary-prompt", "p", PROMPT,
                   details=governance_pb2.PromptTemplate(template="Summarize {{ x }}"))  # fmt: skip
    await registry.transition(Ref(PROMPT, "summary-prompt", 1), model.APPROVED, BOB)
    moved = await registry.set_alias(AliasMove(PROMPT, "summary-prompt", "champion", 1), BOB)
    assert moved.version == 1  # prompts carry no model card
    assert (await approved_model(registry, "carded")) == 1
    assert (await registry.set_alias(AliasMove(MODEL, "carded", "champion", 1), BOB)).version == 1


async def test_aliases_point_only_at_approved_versions(registry: Registry) -> None:
    await register(registry, "fresh", "w")
    with pytest.raises(FailedPrecondition, match="only at APPROVED versions"):
        await registry.set_alias(AliasMove(MODEL, "fresh", "canary", 1), BOB)
    with pytest.raises(NotFound, match="no version 7"):
        await registry.set_alias(AliasMove(MODEL, "fresh", "canary", 7), BOB)
    with pytest.raises(InvalidArgument, match=r"^alias: 'latest' is reserved"):
        await registry.set_alias(AliasMove(MODEL, "fresh", "latest", 1), BOB)


async def test_an_unacceptable_risk_model_is_refused(registry: Registry) -> None:
    card = complete_card(risk_tier=governance_pb2.RISK_TIER_UNACCEPTABLE)
    with pytest.raises(PolicyDenied, match=r"Art\. 5"):
        await register(registry, "social-scoring", "w", details=card)
    with pytest.raises(NotFound):
        await registry.get(Ref(MODEL, "social-scoring"))


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reg", "field"),
    [
        (Registration(0, "m", digest("x")), "kind"),
        (Registration(MODEL, "Summary_LLM", digest("x")), "name"),
        (Registration(MODEL, "m", "md5:abc"), "content_digest"),
        (Registration(MODEL, "m", ""), "content_digest"),
        (Registration(MODEL, "m", digest("x"), uri="no scheme"), "uri"),
        (
            Registration(MODEL, "m", digest("x"), details=governance_pb2.PromptTemplate()),
            "prompt",
        ),
        (
            Registration(
                MODEL, "m", digest("x"),
                details=complete_card(risk_tier=governance_pb2.RISK_TIER_HIGH,
                                      human_oversight_contact=""),
            ),
            "model_card.human_oversight_contact",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(
                evaluations=[governance_pb2.EvaluationResult(metric="ok", value=1),
                             governance_pb2.EvaluationResult(metric="", value=1)])),
            "model_card.evaluations[1].metric",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(
                evaluations=[governance_pb2.EvaluationResult(metric="ok", value=float("nan"))])),
            "model_card.evaluations[0].value",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(
                evaluations=[governance_pb2.EvaluationResult(
                    metric="ok", value=1,
                    dataset=governance_pb2.ArtifactRef(kind=MODEL, name="other"))])),
            "model_card.evaluations[0].dataset.kind",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(languages=["en", "??"])),
            "model_card.languages[1]",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(license="Apache 2")),
            "model_card.license",
        ),
        (
            Registration(MODEL, "m", digest("x"), details=complete_card(risk_tier=42)),
            "model_card.risk_tier",
        ),
        (
            Registration(PROMPT, "p", digest("x"), details=governance_pb2.PromptTemplate()),
            "prompt.template",
        ),
        (
            Registration(DATASET, "d", digest("x"),
                         details=governance_pb2.DatasetInfo(row_count=-1)),
            "dataset.row_count",
        ),
        (
            Registration(MODEL, "m", digest("x"), lineage=(
                Edge(Node(route="summary"), Node(), model.TRAINED_ON),)),
            "lineage[0].upstream",
        ),
        (
            Registration(MODEL, "m", digest("x"), lineage=(
                Edge(Node(uri="s3://d/"), Node(route="r"), model.TRAINED_ON),)),
            "lineage[0].downstream",
        ),
    ],
)  # fmt: skip
async def test_malformed_input_is_invalid_argument_naming_the_field(
    registry: Registry, events: FakeEvents, reg: Registration, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await registry.register(reg, ALICE)
    assert err.value.field == field
    assert events.audits == []


async def test_reads_resolve_versions_aliases_and_latest(registry: Registry) -> None:
    await approved_model(registry)
    await register(registry, "summary-llm", "v2")
    await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", 1), BOB)
    _, by_alias = await registry.get(Ref(MODEL, "summary-llm", alias="champion"))
    assert by_alias.version == 1 and by_alias.aliases == ("champion",)
    assert by_alias.details == complete_card()
    _, latest = await registry.get(Ref(MODEL, "summary-llm", alias="latest"))
    assert latest.version == 2 and latest.aliases == ()
    for ref, field in (
        (Ref(MODEL, "nope"), "ref.name"),
        (Ref(MODEL, "summary-llm", 9), "ref.version"),
        (Ref(MODEL, "summary-llm", alias="gold"), "ref.alias"),
    ):
        with pytest.raises(NotFound, match=f"^{field}: "):
            await registry.get(ref)
    with pytest.raises(InvalidArgument, match=r"^ref: set at most one"):
        await registry.get(Ref(MODEL, "summary-llm", 1, "champion"))
    versions = await registry.list_versions(VersionQuery(MODEL, "summary-llm", page_size=1))
    assert [v.version for v in versions.items] == [2] and versions.next_page_token == "1"
    rest = await registry.list_versions(
        VersionQuery(MODEL, "summary-llm", page_size=1, page_token=versions.next_page_token)
    )
    assert [v.version for v in rest.items] == [1] and rest.next_page_token == ""
    approved = await registry.list_versions(VersionQuery(MODEL, "summary-llm", (model.APPROVED,)))
    assert [v.version for v in approved.items] == [1]
    with pytest.raises(InvalidArgument, match=r"^states: "):
        await registry.list_artifacts(ArtifactQuery(states=(model.APPROVED,)))
    with pytest.raises(InvalidArgument, match=r"^page_token: "):
        await registry.list_artifacts(ArtifactQuery(page_token="x"))
    page = await registry.list_artifacts(ArtifactQuery())
    assert [(a.kind, a.name) for a in page.items] == [(DATASET, "reviews"), (MODEL, "summary-llm")]


# -- lifecycle --------------------------------------------------------------------------------


async def test_the_lifecycle_allows_only_its_moves_and_records_who(
    registry: Registry, events: FakeEvents
) -> None:
    await register(registry, "m", "w")
    ref = Ref(MODEL, "m", 1)
    with pytest.raises(FailedPrecondition, match="may move to APPROVED or REJECTED"):
        await registry.transition(ref, model.DEPRECATED, BOB)
    with pytest.raises(InvalidArgument, match=r"^target_state"):
        await registry.transition(ref, 0, BOB)
    done = await registry.transition(ref, model.APPROVED, BOB)
    assert (done.previous_state, done.version.state) == (model.REGISTERED, model.APPROVED)
    assert done.audit_event_id == events.audits[-1].event_id
    assert events.audits[-1].before["state"] == "REGISTERED"
    await registry.set_alias(AliasMove(MODEL, "m", "canary", 1), BOB)
    await registry.transition(ref, model.DEPRECATED, BOB)
    with pytest.raises(FailedPrecondition, match="alias canary still points here"):
        await registry.transition(ref, model.ARCHIVED, BOB)
    history = await registry.state_history(ref)
    assert [(h.state, h.actor) for h in history] == [
        (model.REGISTERED, "user:alice"), (model.APPROVED, "user:bob"),
        (model.DEPRECATED, "user:bob"),
    ]  # fmt: skip


async def test_a_full_event_buffer_refuses_the_change_before_writing(
    registry: Registry, events: FakeEvents
) -> None:
    events.publisher.room = False
    with pytest.raises(ResourceExhausted):
        await register(registry, "m", "w")
    events.publisher.room = True
    assert (await registry.list_artifacts(ArtifactQuery())).items == []


# -- lineage ----------------------------------------------------------------------------------


@pytest.fixture
async def chain(registry: Registry) -> Registry:
    """dataset -TRAINED_ON-> model -DERIVED_FROM-> prompt -SERVED_BY-> route, plus an
    evaluation set beside the dataset."""
    await register(registry, "reviews", "d", DATASET)
    await register(registry, "eval-set", "e", DATASET)
    await register(registry, "summary-llm", "m", lineage=(
        Edge(Node(artifact=Ref(DATASET, "reviews")), Node(), model.TRAINED_ON),
        Edge(Node(artifact=Ref(DATASET, "eval-set")), Node(), model.EVALUATED_ON),
    ))  # fmt: skip
    await register(registry, "summary-prompt", "p", PROMPT,
                   details=governance_pb2.PromptTemplate(template="Summarize"))  # fmt: skip
    added = await registry.add_lineage(
        [
            Edge(Node(artifact=Ref(MODEL, "summary-llm")),
                 Node(artifact=Ref(PROMPT, "summary-prompt")), model.DERIVED_FROM),
            Edge(Node(artifact=Ref(PROMPT, "summary-prompt")), Node(route="summary-small"),
                 model.SERVED_BY),
        ],
        BOB,
    )  # fmt: skip
    assert added == 2
    return registry


def _names(edges: list[Edge]) -> list[str]:
    def name(node: Node) -> str:
        return node.artifact.name if node.artifact else node.route or node.uri

    return [f"{name(e.upstream)}>{name(e.downstream)}" for e in edges]


async def test_lineage_walks_both_ways_with_a_depth_limit(chain: Registry) -> None:
    model_node = Node(artifact=Ref(MODEL, "summary-llm"))
    near = await chain.lineage(model_node, model.BOTH, 1)
    assert sorted(_names(near)) == [
        "eval-set>summary-llm", "reviews>summary-llm", "summary-llm>summary-prompt",
    ]  # fmt: skip
    route = Node(route="summary-small")
    assert _names(await chain.lineage(route, model.UPSTREAM, 1)) == ["summary-prompt>summary-small"]
    whole = await chain.lineage(route, model.UPSTREAM, 3)
    assert _names(whole)[:2] == ["summary-prompt>summary-small", "summary-llm>summary-prompt"]
    assert sorted(_names(whole)[2:]) == ["eval-set>summary-llm", "reviews>summary-llm"]
    assert await chain.lineage(route, model.DOWNSTREAM, 3) == []
    down = await chain.lineage(Node(artifact=Ref(DATASET, "reviews")), 0, 0)  # BOTH, depth 3
    assert _names(down) == [
        "reviews>summary-llm", "summary-llm>summary-prompt", "summary-prompt>summary-small",
    ]  # fmt: skip
    assert down[0].relation == model.TRAINED_ON and down[0].created_by == "user:alice"
    assert down[0].upstream.artifact == Ref(DATASET, "reviews", 1)


async def test_lineage_input_errors(chain: Registry, events: FakeEvents) -> None:
    with pytest.raises(InvalidArgument, match=r"^depth: must be 1\.\.10"):
        await chain.lineage(Node(route="summary-small"), 0, 11)
    with pytest.raises(InvalidArgument, match=r"^node: required"):
        await chain.lineage(Node(), 0, 1)
    with pytest.raises(NotFound, match=r"^node.artifact.name: "):
        await chain.lineage(Node(artifact=Ref(MODEL, "nope")), 0, 1)
    with pytest.raises(InvalidArgument) as err:
        await chain.add_lineage(
            [Edge(Node(route="r"), Node(artifact=Ref(MODEL, "summary-llm")), model.SERVED_BY)],
            BOB,
        )
    assert err.value.field == "edges[0].upstream"
    with pytest.raises(NotFound, match=r"^edges\[0\].downstream.artifact.name: "):
        await chain.add_lineage(
            [Edge(Node(uri="s3://x/"), Node(artifact=Ref(MODEL, "nope")), model.TRAINED_ON)], BOB
        )
    audits = len(events.audits)
    again = Edge(Node(artifact=Ref(PROMPT, "summary-prompt")), Node(route="summary-small"),
                 model.SERVED_BY)  # fmt: skip
    assert await chain.add_lineage([again], BOB) == 0  # not duplicated, not audited
    assert len(events.audits) == audits


# -- history across renames and deletions ---------------------------------------------------


async def test_renames_and_deletions_keep_history(chain: Registry, events: FakeEvents) -> None:
    await chain.transition(Ref(PROMPT, "summary-prompt", 1), model.APPROVED, BOB)
    await chain.set_alias(AliasMove(PROMPT, "summary-prompt", "champion", 1), BOB)
    renamed = await chain.rename(PROMPT, "summary-prompt", "review-summary", ALICE)
    assert renamed.aliases == {"champion": 1} and renamed.latest_version == 1
    with pytest.raises(NotFound):
        await chain.get(Ref(PROMPT, "summary-prompt"))
    assert len(await chain.alias_history(PROMPT, "review-summary")) == 1
    lineage = await chain.lineage(Node(route="summary-small"), model.UPSTREAM, 1)
    assert _names(lineage) == ["review-summary>summary-small"]  # edges follow the id
    await chain.delete(MODEL, "summary-llm", ALICE)
    with pytest.raises(NotFound, match="deleted"):
        await chain.get(Ref(MODEL, "summary-llm"))
    assert all(a.name != "summary-llm" for a in (await chain.list_artifacts(ArtifactQuery())).items)
    with pytest.raises(FailedPrecondition, match="reserved for its history"):
        await register(chain, "summary-llm", "new weights")
    upstream = await chain.lineage(Node(route="summary-small"), model.UPSTREAM, 3)
    assert "summary-llm>review-summary" in _names(upstream)  # still there
    changes = await chain.name_history(MODEL, "summary-llm")
    assert [(c.old_name, c.new_name) for c in changes] == [("summary-llm", "")]
    assert [a.action for a in events.audits[-2:]] == ["artifact.rename", "artifact.delete"]


def test_fake_events_is_the_real_audit_builder(events: FakeEvents) -> None:
    envelope = events.audit_event("x", "model", "m")
    assert envelope.audit.actor.id == "unknown"
