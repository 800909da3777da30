"""Policy decisions (GovernanceService.Evaluate, GovernanceAdminService.ReloadPolicies /
GetPolicyBundle): every decision identified, attributed to a bundle revision, and recorded.

:meth:`PolicyDecisions.evaluate` checks the input (INVALID_ARGUMENT naming the field), asks
the engine in force, and returns a :class:`Decision`: a UUIDv7 decision id, the revision of
the bundle that decided, the input minus anything that looks like a credential, the raw
result, ``allowed``/``reasons`` and the evaluation latency. Each decision is published as an
event before it is returned; when the event buffer has no room the evaluation is refused
(RESOURCE_EXHAUSTED) instead of deciding without a record: OPA's own decision logs are best
effort and drop on overflow, these are not.

events.proto has no PolicyDecision event kind, so a decision travels as an ``AuditEvent``
(what the contract offers, and the audit trail is where an auditor looks): action
``policy.decide``, resource ``policy``/<decision path>/<bundle revision>, outcome SUCCESS
when allowed and DENIED otherwise, ``policy_decision_id`` the decision id, and ``after``
holding the decision (input, result, allowed, reasons, latency_us, redacted fields).

Input rules: a JSON object (nesting <= 32, at most ``max_input_bytes`` serialized, finite
numbers, string keys). Integral floats become ints first: a ``google.protobuf.Struct`` turns
every number into a double, and Rego prints ``7.0`` and ``7`` differently in messages.
A policy reports malformed input in its result's ``invalid`` list
(``"input.<field>: <problem>"``); the first one becomes INVALID_ARGUMENT naming that field,
and such an input is not a decision (nothing is recorded).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.ids import uuid7
from llmops.events.port import ServiceEvents
from llmops.policy.engine import JsonValue, PolicyBundle, PolicyEngine
from llmops.scheduler import Background, Watch
from llmops.v1 import events_pb2
from llmops.yamlfiles import HotReload

MAX_DEPTH = 32
DEFAULT_MAX_INPUT_BYTES = 256 * 1024

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "token",
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "bearer",
        "sessionid",
    }
)
_SECRET_KEYS = frozenset({"auth", "key", "jwt"})
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD = re.compile(r"[a-z0-9]+")
_CREDENTIAL_VALUE = re.compile(r"^(bearer|basic)\s+\S", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a key names a credential: one of its words (``client_secret``,
    ``accessToken``) or two adjacent words (``api_key``, ``X-Api-Key``) is a credential
    word, or the key is ``auth``/``key``/``jwt``. ``max_tokens`` or ``token_budget``'s
    plural/compound forms are kept only where no word is exactly a credential word."""
    words = _WORD.findall(_CAMEL.sub(r"\1_\2", key).lower())
    if "".join(words) in _SECRET_KEYS:
        return True
    pairs = ("".join(p) for p in itertools.pairwise(words))
    return any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_WORDS for p in pairs)


def strip_secrets(value: JsonValue, field: str = "input") -> tuple[JsonValue, tuple[str, ...]]:
    """``value`` without credential-looking entries (see :func:`is_secret_key`, and string
    values like ``Bearer ...``/``Basic ...``), and the field paths removed."""
    removed: list[str] = []

    def walk(item: JsonValue, path: str) -> JsonValue:
        if isinstance(item, dict):
            kept = {}
            for key, child in item.items():
                where = f"{path}.{key}"
                if is_secret_key(key) or (
                    isinstance(child, str) and _CREDENTIAL_VALUE.match(child)
                ):
                    removed.append(where)
                else:
                    kept[key] = walk(child, where)
            return kept
        if isinstance(item, list):
            return [walk(child, f"{path}[{i}]") for i, child in enumerate(item)]
        return item

    return walk(value, field), tuple(removed)


def check_input(value: Any, field: str = "input", depth: int = 0) -> JsonValue:
    """A JSON copy of ``value`` with integral floats as ints; InvalidArgument naming the
    first offending field otherwise."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(field, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        out = {}
        for key, child in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(field, f"object keys must be strings, not {key!r}")
            out[key] = check_input(child, f"{field}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [check_input(c, f"{field}[{i}]", depth + 1) for i, c in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field, f"{value} is not a finite number")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if value is None or isinstance(value, str | bool | int):
        return value
    raise InvalidArgument(field, f"a {type(value).__name__} is not a JSON value")


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded policy decision (PolicyDecision in governance.proto)."""

    decision_id: str
    """UUIDv7."""
    path: str
    bundle_revision: str
    input: dict[str, JsonValue]
    """The input as evaluated, minus credential-looking fields (see ``redacted``)."""
    redacted: tuple[str, ...]
    """Field paths removed from ``input`` before recording, e.g. ``input.headers.token``."""
    result: JsonValue
    """The raw policy result; ``None`` when the policy left the path undefined."""
    allowed: bool
    """``result`` is ``true``, or an object whose ``allow`` is ``true``."""
    reasons: tuple[str, ...]
    """The result's ``reasons`` (or ``deny``) strings."""
    decide_time: float
    """When it was decided, Unix seconds (UTC)."""
    latency_us: int
    """Engine evaluation time, microseconds."""
    event_id: str
    """event_id of the AuditEvent that recorded it."""


@dataclass(frozen=True, slots=True)
class PolicyReload:
    """ReloadPolicies' answer."""

    previous_revision: str
    revision: str
    """In force after the call (the previous one on a dry run or when nothing changed)."""
    candidate_revision: str
    """The revision that was loaded and compiled (checked, even on a dry run)."""
    module_count: int
    """Rego modules of the candidate."""
    applied: bool


def allowed_and_reasons(result: JsonValue) -> tuple[bool, tuple[str, ...]]:
    if result is True:
        return True, ()
    if not isinstance(result, dict):
        return False, ()
    listed = result.get("reasons", result.get("deny", []))
    reasons = tuple(r for r in listed if isinstance(r, str)) if isinstance(listed, list) else ()
    return result.get("allow") is True, reasons


def _invalid(result: JsonValue) -> InvalidArgument | None:
    if not isinstance(result, dict):
        return None
    invalid = result.get("invalid")
    if not isinstance(invalid, list) or not invalid:
        return None
    field, _, problem = str(invalid[0]).partition(": ")
    return InvalidArgument(field or "input", problem or "malformed")


class PolicyDecisions:
    """The decisions domain over the engine in force (swapped by :meth:`reload`).

    ``load`` builds an engine from the configured bundle (``WasmPolicyEngine(path)`` or
    ``OpaServerEngine(connection)``); it runs now (a bad bundle stops start-up) and again,
    off the event loop, on every reload. Applied reloads are audited (``policy.reload``)
    by :class:`~llmops.yamlfiles.HotReload`.
    """

    # An engine a reload built but did not swap in is dropped without close(): the OPA
    # engines of one configuration share their connection, and a Wasm engine holds nothing
    # that outlives it.

    def __init__(
        self,
        load: Callable[[], PolicyEngine],
        events: ServiceEvents,
        *,
        watched: Sequence[Path] = (),
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._max_input_bytes = max_input_bytes
        self._clock = clock
        self._watched = tuple(watched)
        self._engines: HotReload[PolicyEngine] = HotReload(
            "policy",
            load,
            lambda engine: engine.bundle.identity,
            watched=self._watched,
            audit=events,
            resource_type="policy",
        )

    @property
    def engine(self) -> PolicyEngine:
        return self._engines.current

    async def evaluate(
        self, path: str, input: Mapping[str, Any] | None, *, tenant: str = ""
    ) -> Decision:
        """Decide ``path`` on ``input`` and record the decision (see the module docstring)."""
        if not path:
            raise InvalidArgument("path", "required, e.g. llmops/registry/alias/decision")
        document = check_input({} if input is None else input)
        size = len(json.dumps(document, separators=(",", ":")))
        if size > self._max_input_bytes:
            raise InvalidArgument(
                "input", f"{size} bytes serialized, over the {self._max_input_bytes} limit"
            )
        if not self._events.has_room(1):
            raise ResourceExhausted(
                "policy decision refused: the event buffer has no room to record it; retry later"
            )
        engine = self._engines.current
        started = time.perf_counter()
        evaluation = await engine.evaluate(path, document)
        latency_us = int((time.perf_counter() - started) * 1e6)
        problem = _invalid(evaluation.result)
        if problem is not None:
            raise problem
        allowed, reasons = allowed_and_reasons(evaluation.result)
        recorded, redacted = strip_secrets(document)
        decision = Decision(
            decision_id=uuid7(),
            path=path,
            bundle_revision=evaluation.revision,
            input=recorded,
            redacted=redacted,
            result=evaluation.result,
            allowed=allowed,
            reasons=reasons,
            decide_time=self._clock(),
            latency_us=latency_us,
            event_id="",
        )
        envelope = self._event(decision, tenant)
        self._events.publish(envelope)
        return dataclasses.replace(decision, event_id=envelope.audit.event_id)

    def _event(self, decision: Decision, tenant: str) -> events_pb2.EventEnvelope:
        envelope = self._events.audit_event(
            "policy.decide",
            "policy",
            decision.path,
            version=decision.bundle_revision,
            after={
                "decision_id": decision.decision_id,
                "path": decision.path,
                "bundle_revision": decision.bundle_revision,
                "input": decision.input,
                "redacted": list(decision.redacted),
                "result": decision.result,
                "allowed": decision.allowed,
                "reasons": list(decision.reasons),
                "latency_us": decision.latency_us,
            },
            tenant=tenant,
            outcome=(
                events_pb2.AUDIT_OUTCOME_SUCCESS
                if decision.allowed
                else events_pb2.AUDIT_OUTCOME_DENIED
            ),
        )
        envelope.audit.policy_decision_id = decision.decision_id
        envelope.audit.event_time.FromNanoseconds(int(decision.decide_time * 1e9))
        return envelope

    async def reload(self, *, dry_run: bool = False) -> PolicyReload:
        """Load and compile the configured bundle; swap it in unless ``dry_run`` or nothing
        changed. A bundle that does not load raises INVALID_ARGUMENT (field ``bundle``) and
        the one in force stays."""
        outcome = await self._engines.reload(dry_run=dry_run)
        previous = outcome.previous.bundle
        candidate = outcome.candidate.bundle
        return PolicyReload(
            previous_revision=previous.revision,
            revision=self._engines.current.bundle.revision,
            candidate_revision=candidate.revision,
            module_count=len(candidate.modules),
            applied=outcome.applied,
        )

    def bundle(self, *, include_source: bool = False) -> PolicyBundle:
        """The bundle in force (GetPolicyBundle); module sources only when asked."""
        bundle = self._engines.current.bundle
        if include_source:
            return bundle
        modules = tuple(dataclasses.replace(m, source="") for m in bundle.modules)
        return dataclasses.replace(bundle, modules=modules)

    def load_audit(self) -> list[Background]:
        """The task that audits the bundle this process started with (``policy.load``)."""
        return self._engines.load_audit()

    def watch(self, interval_s: float) -> Watch:
        """The runtime task reloading when a watched file (the Wasm bundle) changes."""
        if not self._watched:
            raise InvalidArgument("watched", "no bundle file to watch (OPA server mode)")
        return self._engines.watch(self._watched, interval_s)

    async def health(self) -> bool:
        return await self._engines.current.health()

    async def close(self) -> None:
        await self._engines.current.close()
