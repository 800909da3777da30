"""The registry's alias moves gated by the Rego deploy gate (``llmops/registry/alias/decision``)
on the embedded Wasm engine: the decision is made before the write transaction and recorded,
a denial carries the policy's reasons and writes nothing, a move whose facts changed while the
policy decided is decided again (and ABORTED when they keep changing), removals stay with the
built-in rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import Aborted
from llmops.policy.wasm import DEFAULT_WASM_BUNDLE, WasmPolicyEngine
from llmops.v1 import events_pb2
from services.governance import guard as rules
from services.governance.guard import ALIAS_GATE, BuiltinRules, RegoGate
from services.governance.model import AliasMove, Decision, PolicyDenied, Ref
from services.governance.policy_decisions import PolicyDecisions
from services.governance.registry import GATE_ATTEMPTS, Registry
from services.governance.store_sql import SqlRegistryStore
from tests.unit.test_governance_registry import (
    ALICE,
    BOB,
    MODEL,
    Clock,
    FakeEvents,
    approved_model,
    complete_card,
)


class Interfering:
    """A gate that runs ``meddle`` (another registry change) while it decides, as a
    concurrent caller would, ``times`` times; it counts its decisions."""

    def __init__(self, gate: RegoGate, times: int) -> None:
        self.gate, self.times = gate, times
        self.decided: list[Decision] = []
        self.meddle: Any = None
        self._busy = False

    def gates(self, path: str) -> bool:
        return self.gate.gates(path)

    async def decide(self, path: str, input: Mapping[str, Any], *, tenant: str) -> Decision:
        decision = await self.gate.decide(path, input, tenant=tenant)
        if not self._busy:
            self.decided.append(decision)
            if self.times > 0:
                self.times -= 1
                self._busy = True
                try:
                    await self.meddle()
                finally:
                    self._busy = False
        return decision


@pytest.fixture
async def gated(
    tmp_path: Path, events: FakeEvents, clock: Clock
) -> AsyncIterator[tuple[Registry, RegoGate]]:
    store = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    await store.open()
    decisions = PolicyDecisions(lambda: WasmPolicyEngine(DEFAULT_WASM_BUNDLE), events)
    gate = RegoGate(decisions)
    rules_ = BuiltinRules(["champion", "production"], clock)
    yield Registry(store, events, rules_, clock, gate=gate), gate
    await store.close()


@pytest.fixture
def events() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_the_rego_gate_decides_records_and_allows(
    gated: tuple[Registry, RegoGate], events: FakeEvents
) -> None:
    registry, gate = gated
    number = await approved_model(registry)
    moved = await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", number), BOB)
    assert (moved.previous_version, moved.version) == (0, number)
    decision = moved.decision
    assert decision.allowed and decision.path == ALIAS_GATE
    assert decision.bundle_revision == gate.decisions.bundle().revision
    assert decision.input["artifact"]["card"]["license"] == "Apache-2.0"
    decide, alias_set = events.audits[-2:]
    assert (decide.action, alias_set.action) == ("policy.decide", "alias.set")
    assert decide.policy_decision_id == alias_set.policy_decision_id == decision.decision_id
    assert alias_set.event_id == moved.audit_event_id
    _, version = await registry.get(Ref(MODEL, "summary-llm", alias="champion"))
    assert version.version == number


async def test_a_denial_carries_the_policy_reasons_and_writes_nothing(
    gated: tuple[Registry, RegoGate], events: FakeEvents
) -> None:
    registry, _ = gated
    # approved by bob (four eyes hold), but the card lacks a licence: only the Rego gate asks
    number = await approved_model(registry, details=complete_card(license=""))
    before = len(events.audits)
    with pytest.raises(PolicyDenied) as err:
        await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", number), BOB)
    message = str(err.value)
    assert f"policy {ALIAS_GATE} denied" in message
    assert 'model card field "license" is missing (required for alias "champion")' in message
    assert f"decision_id={err.value.decision_id}" in message
    decide, denied = events.audits[before:]
    assert (decide.action, denied.action) == ("policy.decide", "alias.set")
    assert decide.outcome == denied.outcome == events_pb2.AUDIT_OUTCOME_DENIED
    assert decide.policy_decision_id == denied.policy_decision_id == err.value.decision_id
    artifact, _ = await registry.get(Ref(MODEL, "summary-llm"))
    assert artifact.aliases == {}
    assert await registry.alias_history(MODEL, "summary-llm", "champion") == []


async def test_facts_changed_while_deciding_are_decided_again(
    gated: tuple[Registry, RegoGate], events: FakeEvents
) -> None:
    registry, gate = gated
    for n in range(3):
        await approved_model(registry, details=complete_card(intended_use=f"use {n}"))
    meddler = Interfering(gate, times=1)
    registry.gate = meddler

    async def concurrent_move() -> None:
        await registry.set_alias(AliasMove(MODEL, "summary-llm", "canary", 2), ALICE)

    meddler.meddle = concurrent_move
    moved = await registry.set_alias(AliasMove(MODEL, "summary-llm", "canary", 1), BOB)
    assert [d.input["previous_version"] for d in meddler.decided] == [0, 2]
    assert (moved.previous_version, moved.version) == (2, 1)
    assert moved.decision.decision_id == meddler.decided[-1].decision_id

    async def flip() -> None:
        _, now = await registry.get(Ref(MODEL, "summary-llm", alias="canary"))
        await registry.set_alias(
            AliasMove(MODEL, "summary-llm", "canary", 3 if now.version == 2 else 2), ALICE
        )

    meddler.decided, meddler.times, meddler.meddle = [], GATE_ATTEMPTS, flip
    with pytest.raises(Aborted) as err:
        await registry.set_alias(AliasMove(MODEL, "summary-llm", "canary", 1), BOB)
    assert "changed while the policy decided" in str(err.value)
    assert len(meddler.decided) == GATE_ATTEMPTS
    _, now = await registry.get(Ref(MODEL, "summary-llm", alias="canary"))
    assert now.version != 1  # the flips happened, the gated move did not


async def test_a_removal_is_decided_by_the_built_in_rules(
    gated: tuple[Registry, RegoGate],
) -> None:
    registry, _ = gated
    number = await approved_model(registry)
    await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", number), BOB)
    removed = await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", 0), BOB)
    assert removed.decision.path == rules.ALIAS and removed.version == 0
