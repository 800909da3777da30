"""Policy checks of registry changes: the :class:`ChangeGuard` seam, its built-in rules, and
the :class:`PolicyGate` that puts the Rego deploy gates of the policy engine in front of them.

The registry asks a guard before it registers a version, moves a version's state or moves
an alias, handing it a decision path and a JSON input of facts it gathered from its own
records (who acts, the version's registrant and approver, its state, its model card and
what the card lacks). The guard answers a :class:`~services.governance.model.Decision`; a
denial becomes PERMISSION_DENIED with the reasons and the decision id, and is audited. The
input is shaped for Rego (the alias input follows the one documented in
``deploy/opa/policies/llmops/registry/alias.rego``: ``alias``, ``artifact`` with ``kind``,
``version``, ``state``, ``created_by``, ``card``, and ``approvals: [{"by": ...}]``; the
registry adds ``card_gaps``, ``actor``, ``action`` and ``previous_version``).

Two seams, because the two kinds of decider run in different places:

- a :class:`ChangeGuard` is synchronous and runs *inside* the change's database
  transaction, on the store's worker thread (the built-in rules);
- a :class:`PolicyGate` is asynchronous (the policy engine: in-process Wasm, or an HTTP call
  to the OPA server) and must never run inside a transaction. The registry decides *before*
  opening the write transaction, from facts read in a read transaction, then re-reads the
  same facts inside the write transaction (the target version row locked) and writes only
  when they are unchanged; when anything the decision depended on changed meanwhile, it
  decides again (a bounded number of times, then ABORTED). A denial writes nothing. So a
  change is applied only under a decision made on exactly the facts it is applied to, and
  nothing is half-written. :class:`RegoGate` gates alias moves with
  ``llmops/registry/alias/decision`` (removals, registrations and transitions stay with the
  guard); every one of its decisions is also recorded by
  :class:`~services.governance.policy_decisions.PolicyDecisions` (``policy.decide``).

The built-in rules (:class:`BuiltinRules`), the fallback when no policy engine is
configured:

- ``llmops/registry/register/allow``: a model whose card says RISK_TIER_UNACCEPTABLE is
  refused (EU AI Act Art. 5, prohibited practices);
- ``llmops/registry/transition/allow``: allowed (the lifecycle rules are not policy: a move
  the lifecycle forbids is FAILED_PRECONDITION before the guard is asked);
- ``llmops/registry/alias/allow``: moving a *serving* alias (``serving_aliases`` setting,
  e.g. ``champion``) needs a version approved by someone other than its registrant
  (four eyes) and, for models, a complete model card. Removing an alias is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from llmops.events.ids import uuid7
from services.governance import policy_decisions
from services.governance.model import Decision
from services.governance.policy_decisions import PolicyDecisions

REGISTER = "llmops/registry/register/allow"
TRANSITION = "llmops/registry/transition/allow"
ALIAS = "llmops/registry/alias/allow"

ALIAS_GATE = "llmops/registry/alias/decision"
"""The Rego deploy gate of alias moves (deploy/opa/policies/llmops/registry/alias.rego)."""


class ChangeGuard(Protocol):
    """Decides whether a registry change may happen (synchronous: it runs inside the
    change's database transaction, on the store's worker thread)."""

    def decide(self, path: str, input: Mapping[str, Any]) -> Decision: ...


class PolicyGate(Protocol):
    """Decides registry changes with the policy engine, before the change's transaction."""

    def gates(self, path: str) -> bool:
        """Whether this gate decides the registry decision ``path`` (one of the constants
        above); the :class:`ChangeGuard` decides the others."""
        ...

    async def decide(self, path: str, input: Mapping[str, Any], *, tenant: str) -> Decision:
        """Decide and record the decision. Never called inside a transaction."""
        ...


class RegoGate:
    """The policy engine's deploy gates: ``ALIAS`` (an alias pointing at a version) is
    decided by ``llmops/registry/alias/decision`` of the bundle in force. A bundle without
    that path fails the move with NOT_FOUND naming the path (closed, not the fallback)."""

    def __init__(self, decisions: PolicyDecisions, paths: Mapping[str, str] | None = None) -> None:
        self.decisions = decisions
        self.paths = dict(paths if paths is not None else {ALIAS: ALIAS_GATE})

    def gates(self, path: str) -> bool:
        return path in self.paths

    async def decide(self, path: str, input: Mapping[str, Any], *, tenant: str) -> Decision:
        decided = await self.decisions.evaluate(self.paths[path], input, tenant=tenant)
        return registry_decision(decided)


def registry_decision(decided: policy_decisions.Decision) -> Decision:
    """A recorded policy decision as the registry returns and audits it."""
    return Decision(
        decision_id=decided.decision_id,
        path=decided.path,
        bundle_revision=decided.bundle_revision,
        input=decided.input,
        result=decided.result,
        allowed=decided.allowed,
        reasons=decided.reasons,
        decide_time_us=int(decided.decide_time * 1e6),
        latency_us=decided.latency_us,
    )


class BuiltinRules:
    """The registry's default rules, in Python (see the module docstring)."""

    revision = "builtin:registry-rules@1"

    def __init__(
        self, serving_aliases: Collection[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.serving_aliases = frozenset(serving_aliases)
        self._clock = clock

    def decide(self, path: str, input: Mapping[str, Any]) -> Decision:
        start = time.perf_counter()
        rule = {REGISTER: self._register, TRANSITION: _no_reasons, ALIAS: self._alias}.get(path)
        reasons = rule(input) if rule is not None else [f"no rule answers {path}"]
        latency_us = int((time.perf_counter() - start) * 1e6)
        allowed = not reasons
        return Decision(
            decision_id=uuid7(),
            path=path,
            bundle_revision=self.revision,
            input=dict(input),
            result={"allow": allowed, "reasons": list(reasons)},
            allowed=allowed,
            reasons=tuple(reasons),
            decide_time_us=int(self._clock() * 1e6),
            latency_us=latency_us,
        )

    def _register(self, input: Mapping[str, Any]) -> list[str]:
        card = input.get("artifact", {}).get("card") or {}
        if card.get("risk_tier") == "unacceptable":
            return [
                "the model card's risk tier is UNACCEPTABLE: a prohibited practice under "
                "EU AI Act Art. 5 may not be registered"
            ]
        return []

    def _alias(self, input: Mapping[str, Any]) -> list[str]:
        alias = str(input.get("alias", ""))
        target = input.get("artifact", {})
        if alias not in self.serving_aliases or "version" not in target:  # or a removal
            return []
        reasons = []
        number, registrant = target["version"], target.get("created_by", "")
        approvers = [a.get("by", "") for a in input.get("approvals", [])]
        if not [a for a in approvers if a != registrant]:
            reasons.append(
                f"serving alias {alias!r} needs version {number} approved by another person "
                f"than its registrant {registrant!r}"
                + (" (it was approved only by its registrant)" if approvers else "")
            )
        gaps = target.get("card_gaps", [])
        if target.get("kind") == "model" and gaps:
            reasons.append(f"serving alias {alias!r} needs a complete model card; missing: "
                           + ", ".join(gaps))  # fmt: skip
        return reasons


def _no_reasons(input: Mapping[str, Any]) -> list[str]:
    return []
