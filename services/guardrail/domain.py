"""The guardrail service's behaviour, free of gRPC: checks, streams, decision events, policy
tests and reloads.

The servicer converts protobuf requests into the dataclasses here (:class:`Subject`, chunks
as ``str``, :class:`PolicyCase`) and the results (:class:`Checked`, :class:`StreamStep`,
:class:`PolicyTestReport`, :class:`ReloadReport`) back into responses; everything that decides —
limits, policy lookup, the worker pool, the stream's hold-back and final verdict, which
decisions are recorded — happens here. Decision events are published through the service's
event port (``ctx.events``).

Limits are in UTF-8 bytes, as the contract states them: a ``Check`` text and the whole of a
``CheckStream`` each carry at most :data:`MAX_TEXT_BYTES`. Offsets in findings stay code
points (Python ``str`` indices).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from llmops.callcontext import for_worker
from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.ids import retry_stable_uuid7, uuid7
from llmops.v1 import common_pb2, events_pb2
from llmops.yamlfiles import HotReload
from services.guardrail.detectors.base import CheckContext, Fact
from services.guardrail.engine import (
    ALLOW,
    BLOCK,
    INLINE_LIMIT,
    Counted,
    Decision,
    DecisionCache,
    Engine,
    worst,
)
from services.guardrail.policy import CompiledPolicy, PolicySet, compile_candidate
from services.guardrail.stream import CONTEXT, Release, StreamState

T = TypeVar("T")
log = structlog.get_logger("llmops.guardrail")

MAX_TEXT_BYTES = 64 * 1024
"""Most UTF-8 bytes of one ``Check`` text, and of all chunks of one ``CheckStream``."""
MAX_BATCH_TEXTS = 256
"""Most texts of one ``CheckBatch``."""
MAX_TEST_CASES = 100
"""Most cases of one ``TestPolicy``."""
MAX_FACTS = 256
"""Most facts of one check; together they carry at most :data:`MAX_TEXT_BYTES` (the
grounding detector reads every one of them for every text checked against them)."""
POOL_SLOTS = 256
"""Checks (texts above :data:`~services.guardrail.engine.INLINE_LIMIT`, a batch's pooled
texts, a stream's scans) on the worker pool or waiting for a worker at once; one more is
refused with RESOURCE_EXHAUSTED instead of queueing without bound."""
DIRECTION_NAMES: dict[int, str] = {
    common_pb2.DIRECTION_INPUT: "INPUT",
    common_pb2.DIRECTION_OUTPUT: "OUTPUT",
}


class EventPort(Protocol):
    """Where decision events go: the service's ``ctx.events``
    (:class:`llmops.events.port.ServiceEvents`)."""

    def publish(self, envelope: events_pb2.EventEnvelope) -> object: ...


@dataclass(frozen=True, slots=True)
class Subject:
    """What a check is about, besides its text: a ``CheckRequest`` or ``CheckStreamConfig``."""

    direction: int
    """``common_pb2.DIRECTION_INPUT`` or ``DIRECTION_OUTPUT``; anything else is refused."""
    policy: str = ""
    """Empty: the default policy of the direction."""
    policy_version: int = 0
    """0: the current version."""
    request_id: str = ""
    tenant: str = ""
    market: str = ""
    locale: str = ""
    facts: tuple[Fact, ...] = ()
    route: str = ""
    task: str = ""


@dataclass(frozen=True, slots=True)
class Checked:
    """One decision: the policy that made it and its recorded event id ("" for a clean ALLOW)."""

    policy: CompiledPolicy
    decision: Decision
    decision_id: str


@dataclass(frozen=True, slots=True)
class StreamStep:
    """One answer of a stream: text cleared since the previous one, and on the last one
    (``summary`` set) the stream's whole decision."""

    released_text: str
    released_until: int
    """Code points of the whole stream released so far."""
    verdict: int
    """Most severe verdict so far."""
    findings: Sequence[Counted]
    """New since the previous step, in stream offsets."""
    summary: Checked | None = None


@dataclass(frozen=True, slots=True)
class PolicyCase:
    name: str
    direction: int
    text: str
    facts: tuple[Fact, ...] = ()
    expected_verdict: int = 0
    """0 (unspecified): only report."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    decision: Decision
    passed: bool


@dataclass(frozen=True, slots=True)
class PolicyTestReport:
    results: tuple[CaseResult, ...]
    failed_count: int


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What ``ReloadPolicies`` did (or, for a dry run, would do)."""

    policy_count: int
    """Policies (names) in the files just validated."""
    changed_policies: tuple[str, ...]
    """``name@version`` of every policy whose current version is new, other or edited;
    ``name@0`` for a policy the files no longer define."""
    previous_revision: str
    revision: str
    """In force after the call: equal to ``previous_revision`` for a dry run."""
    candidate_revision: str
    applied: bool


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def finding_proto(c: Counted) -> common_pb2.GuardrailFinding:
    f = c.finding
    return common_pb2.GuardrailFinding(
        type=f.type, detector=f.detector, span_start=f.start, span_end=f.end, score=f.score,
        action=c.action, match_hash=c.match_hash,  # type: ignore[arg-type]
    )  # fmt: skip


def latencies(items: Sequence[tuple[str, int]]) -> list[common_pb2.StageLatency]:
    return [common_pb2.StageLatency(stage=name, duration_us=us) for name, us in items]


def decision_event(
    subject: Subject,
    policy: CompiledPolicy,
    decision: Decision,
    streamed: bool,
    event_id: str = "",
) -> events_pb2.EventEnvelope:
    """The GuardrailDecisionEvent of a decision: types, spans, scores, hashes; no text."""
    event = events_pb2.GuardrailDecisionEvent(
        event_id=event_id or uuid7(), request_id=subject.request_id, tenant=subject.tenant,
        market=subject.market, direction=subject.direction,  # type: ignore[arg-type]
        policy=policy.name, policy_version=policy.version,
        verdict=decision.verdict,  # type: ignore[arg-type]
        findings=[finding_proto(c) for c in decision.findings],
        detector_latencies=latencies(decision.latencies_us), latency_us=decision.latency_us,
        text_length=decision.text_length, route=subject.route, task=subject.task,
        streamed=streamed, degraded=decision.degraded,
    )  # fmt: skip
    event.event_time.FromNanoseconds(time.time_ns())
    return events_pb2.EventEnvelope(guardrail_decision=event)


def changed_policies(before: PolicySet, after: PolicySet) -> tuple[str, ...]:
    """``name@version`` of the current versions of ``after`` that differ from ``before``
    (new policy, other version, or the same version edited); ``name@0`` for removed ones."""
    old = {p.name: p for p in before.current()}
    changed: list[str] = []
    for p in after.current():
        was = old.pop(p.name, None)
        if was is None or was.version != p.version or was.spec != p.spec:
            changed.append(f"{p.name}@{p.version}")
    changed += [f"{name}@0" for name in old]
    return tuple(sorted(changed))


def _context(
    direction: int, locale: str, facts: Sequence[Fact], field: str = "facts"
) -> CheckContext:
    """The detectors' context; INVALID_ARGUMENT naming ``field`` when the facts are over
    :data:`MAX_FACTS` or :data:`MAX_TEXT_BYTES` together."""
    if len(facts) > MAX_FACTS:
        raise InvalidArgument(field, f"at most {MAX_FACTS} facts")
    if facts and sum(utf8_size(f.text) for f in facts) > MAX_TEXT_BYTES:
        raise InvalidArgument(field, f"at most {MAX_TEXT_BYTES} bytes of UTF-8 together")
    return CheckContext(
        direction=DIRECTION_NAMES.get(direction, "INPUT"), locale=locale, facts=tuple(facts)
    )


class Guardrail:
    """Checks texts and streams against the policies in force and records the decisions."""

    def __init__(
        self,
        policies: HotReload[PolicySet],
        engine: Engine,
        events: EventPort,
        pool: Executor,
        pool_slots: int = POOL_SLOTS,
        *,
        hard_timeout_s: float = 1.0,
        decisions: DecisionCache | None = None,
    ) -> None:
        self._policies = policies
        self.engine = engine
        self.decisions = decisions if decisions is not None else DecisionCache(0)
        self._events = events
        self._pool = pool
        self._slots = asyncio.Semaphore(pool_slots)
        self._hard_timeout_s = hard_timeout_s

    @property
    def policies(self) -> PolicySet:
        """The policy set in force."""
        return self._policies.current

    def policy(self, name: str, version: int, direction: int) -> CompiledPolicy:
        """A policy for checking text of ``direction`` (the direction's default when
        ``name`` is empty, the current version when ``version`` is 0)."""
        return self._policy_in_force(name, version, direction)[0]

    def _policy_in_force(
        self, name: str, version: int, direction: int
    ) -> tuple[CompiledPolicy, str]:
        """:meth:`policy` and the revision of the set it comes from."""
        if direction not in DIRECTION_NAMES:
            raise InvalidArgument("direction", "INPUT or OUTPUT")
        policies = self._policies.current
        return policies.get(name, version, direction), policies.revision

    def stored_policy(self, name: str, version: int) -> CompiledPolicy:
        """One version of a named policy (the current one when ``version`` is 0)."""
        if not name:
            raise InvalidArgument("name", "required")
        return self._policies.current.get(name, version, 0)

    async def check(self, subject: Subject, text: str) -> Checked:
        if utf8_size(text) > MAX_TEXT_BYTES:
            raise InvalidArgument("text", f"at most {MAX_TEXT_BYTES} bytes of UTF-8")
        policy, revision = self._policy_in_force(
            subject.policy, subject.policy_version, subject.direction
        )
        ctx = _context(subject.direction, subject.locale, subject.facts)
        key, decision = self.decisions.lookup(revision, policy, text, ctx)
        if decision is None:
            decision = await self._evaluate(policy, text, ctx)
            self.decisions.keep(key, decision)
        return Checked(policy, decision, self._record(subject, policy, decision, False, text))

    async def check_batch(self, subject: Subject, texts: Sequence[str]) -> list[Checked]:
        """Each text checked as :meth:`check` would, in order. Every text is validated
        first and nothing is recorded until every decision is made, so a refused batch
        leaves no trace. Texts decided before under the same policy and context come from
        :attr:`decisions`; of the others, the short texts are decided on the event loop
        while their sum stays within :data:`INLINE_LIMIT` (as one text of that size would);
        the others go to the worker pool together."""
        if not texts:
            raise InvalidArgument("texts", "at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidArgument("texts", f"at most {MAX_BATCH_TEXTS} texts")
        for i, text in enumerate(texts):
            if utf8_size(text) > MAX_TEXT_BYTES:
                raise InvalidArgument(f"texts[{i}]", f"at most {MAX_TEXT_BYTES} bytes of UTF-8")
        policy, revision = self._policy_in_force(
            subject.policy, subject.policy_version, subject.direction
        )
        ctx = _context(subject.direction, subject.locale, subject.facts)
        decisions: dict[int, Decision] = {}
        keys: dict[int, tuple[object, ...] | None] = {}
        inline: list[int] = []
        pooled: list[int] = []
        inline_left = INLINE_LIMIT
        for i, text in enumerate(texts):
            keys[i], kept = self.decisions.lookup(revision, policy, text, ctx)
            if kept is not None:
                decisions[i] = kept
            elif len(text) <= inline_left:
                inline_left -= len(text)
                inline.append(i)
            else:
                pooled.append(i)
        for i in inline:
            decisions[i] = self.engine.evaluate(policy, texts[i], ctx)
        if pooled:
            # one job for all of them: one pool slot, whatever the batch's size
            try:
                found = await self._pooled(
                    lambda: [self.engine.evaluate(policy, texts[i], ctx) for i in pooled]
                )
            except TimeoutError:
                found = [self.engine.timed_out(policy, texts[i]) for i in pooled]
            decisions.update(zip(pooled, found, strict=True))
        for i in (*inline, *pooled):
            self.decisions.keep(keys[i], decisions[i])
        return [
            Checked(
                policy,
                decisions[i],
                self._record(subject, policy, decisions[i], False, texts[i], i),
            )
            for i in range(len(texts))
        ]

    async def _evaluate(self, policy: CompiledPolicy, text: str, ctx: CheckContext) -> Decision:
        if len(text) <= INLINE_LIMIT:
            return self.engine.evaluate(policy, text, ctx)
        try:
            return await self._pooled(lambda: self.engine.evaluate(policy, text, ctx))
        except TimeoutError:
            return self.engine.timed_out(policy, text)

    async def _pooled(self, work: Callable[[], T], bounded: bool = True) -> T:
        """``work`` on the worker pool, off the event loop (RESOURCE_EXHAUSTED when every
        slot is taken; not started once the RPC's deadline has passed, and the detectors
        see that deadline); with ``bounded``, TimeoutError after ``hard_timeout_s``. A Python
        thread cannot be stopped: the worker finishes on its own (the detectors are linear,
        so it does soon) and holds its slot until then, so a stuck detector sheds load
        rather than piling it up."""
        if self._slots.locked():  # every worker busy and more waiting: shed load
            raise ResourceExhausted("guardrail worker pool is full (long texts); retry later")
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, for_worker(work))
        future.add_done_callback(lambda _: self._slots.release())
        if not bounded:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._hard_timeout_s)
        except TimeoutError:
            log.error("guardrail_check_timed_out", hard_timeout_s=self._hard_timeout_s)
            raise

    def _record(
        self,
        subject: Subject,
        policy: CompiledPolicy,
        decision: Decision,
        streamed: bool,
        text: str,
        index: int = 0,
    ) -> str:
        """Publish the decision's event unless it is a clean ALLOW; its id ("" if none).

        The id is the same on a retry of the call (same request id, policy, text, place in
        the batch and outcome), so the sink stores a retried Check's decision once."""
        if decision.verdict == ALLOW and not decision.degraded:
            return ""
        event_id = retry_stable_uuid7(
            subject.request_id,
            "guardrail", policy.name, str(policy.version), str(subject.direction),
            "stream" if streamed else "unary", str(index), str(decision.verdict),
            "degraded" if decision.degraded else "",
            hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest(),
        )  # fmt: skip
        envelope = decision_event(subject, policy, decision, streamed, event_id)
        self._events.publish(envelope)
        return envelope.guardrail_decision.event_id

    async def check_stream(self, items: AsyncIterator[Subject | str]) -> AsyncIterator[StreamStep]:
        """A stream: its :class:`Subject` first, then text chunks; answers as text clears
        (:mod:`services.guardrail.stream`), a final step after the last chunk or at once on
        BLOCK."""
        subject = await anext(aiter(items), None)
        if not isinstance(subject, Subject):
            raise InvalidArgument("config", "the first message must carry the stream's config")
        policy = self.policy(subject.policy, subject.policy_version, subject.direction)
        state = StreamState(
            self.engine, policy, _context(subject.direction, subject.locale, subject.facts)
        )
        verdict: int = ALLOW
        size = 0
        async for chunk in items:
            if not isinstance(chunk, str):
                raise InvalidArgument("config", "only the first message carries a config")
            size += utf8_size(chunk)
            if size > MAX_TEXT_BYTES:
                raise InvalidArgument(
                    "chunk", f"a stream carries at most {MAX_TEXT_BYTES} bytes of UTF-8"
                )
            text, released = state.text + chunk, state.released  # before a worker holds it
            try:
                release = await self._scan(state, chunk)
            except TimeoutError:
                yield self._timed_out(subject, state.policy, text, released)
                return
            verdict = worst(verdict, release.decision.verdict)
            if release.decision.verdict == BLOCK:
                yield self._final(subject, state, release, verdict)
                return
            if release.text or release.findings:
                yield StreamStep(release.text, release.until, verdict, release.findings)
        text, released = state.text, state.released
        try:
            release = await self._scan(state, None)
        except TimeoutError:
            yield self._timed_out(subject, state.policy, text, released)
            return
        yield self._final(subject, state, release, verdict=worst(verdict, release.decision.verdict))

    async def _scan(self, state: StreamState, chunk: str | None) -> Release:
        """``state.push(chunk)`` (``None``: ``state.finish()``): on the event loop when the
        text it scans is short, else on the worker pool under the hard timeout (TimeoutError:
        the worker may still hold ``state``, so the caller stops using it)."""
        window = len(state.text) + len(chunk or "") - max(0, state.released - CONTEXT)
        if window <= INLINE_LIMIT:
            return state.push(chunk) if chunk is not None else state.finish()
        if chunk is None:
            return await self._pooled(state.finish)
        return await self._pooled(lambda: state.push(chunk))

    def _timed_out(
        self, subject: Subject, policy: CompiledPolicy, text: str, released: int
    ) -> StreamStep:
        """The final step of a stream whose scan ran past the hard timeout: degraded; under
        FAIL_MODE_OPEN the rest of the text is released unchecked, under CLOSED none of it.
        Built from what was read before the scan went to the pool (its worker may still be
        changing the stream's state)."""
        decision = self.engine.timed_out(policy, text)
        rest = text[released:] if decision.verdict != BLOCK else ""
        decision_id = self._record(subject, policy, decision, True, text)
        return StreamStep(
            released_text=rest,
            released_until=released + len(rest),
            verdict=decision.verdict,
            findings=[],
            summary=Checked(policy, decision, decision_id),
        )

    def _final(
        self, subject: Subject, state: StreamState, release: Release, verdict: int
    ) -> StreamStep:
        summary = Decision(
            verdict=verdict, findings=state.counted, redacted_text="",
            block_message=release.decision.block_message,
            latencies_us=sorted(state.latencies.items()), degraded=state.degraded,
            latency_us=state.latency_us, text_length=len(state.text),
        )  # fmt: skip
        decision_id = self._record(subject, state.policy, summary, True, state.text)
        return StreamStep(
            released_text=release.text if verdict != BLOCK else "",
            released_until=state.released,
            verdict=verdict,
            findings=release.findings,
            summary=Checked(state.policy, summary, decision_id),
        )

    async def test_policy(
        self, target: str | Mapping[str, Any] | None, version: int, cases: Sequence[PolicyCase]
    ) -> PolicyTestReport:
        """Run ``cases`` against a stored policy (by name) or a candidate (the mapping a
        policy file would hold); no events are recorded. At most :data:`MAX_TEST_CASES`
        cases of a check's size; building the candidate's detectors and running the cases
        happen on the worker pool, never on the event loop the other checks share."""
        if len(cases) > MAX_TEST_CASES:
            raise InvalidArgument("cases", f"at most {MAX_TEST_CASES} cases")
        for i, case in enumerate(cases):
            if utf8_size(case.text) > MAX_TEXT_BYTES:
                raise InvalidArgument(
                    f"cases[{i}].text", f"at most {MAX_TEXT_BYTES} bytes of UTF-8"
                )
            _context(case.direction, "", case.facts, f"cases[{i}].facts")  # within the caps
        if target is None:
            raise InvalidArgument("target", "name a policy or send a candidate")
        policy_of: Callable[[], CompiledPolicy]
        if isinstance(target, str):
            stored = self.stored_policy(target, version)  # NOT_FOUND before any work
            policy_of = lambda: stored  # noqa: E731
        else:
            candidate = target
            policy_of = lambda: compile_candidate(candidate)  # noqa: E731

        def run() -> PolicyTestReport:
            policy = policy_of()
            results = []
            for case in cases:
                ctx = _context(case.direction, "", case.facts)
                decision = self.engine.evaluate(policy, case.text, ctx)
                passed = not case.expected_verdict or decision.verdict == case.expected_verdict
                results.append(CaseResult(case.name, decision, passed))
            return PolicyTestReport(tuple(results), sum(not r.passed for r in results))

        return await self._pooled(run, bounded=False)  # capped by cases and sizes instead

    async def reload(self, dry_run: bool) -> ReloadReport:
        """Validate the policy files and, unless ``dry_run``, put them in force. A file that
        does not validate raises PolicyError and the policies in force stay."""
        before = self._policies.current
        result = await self._policies.reload(dry_run=dry_run)
        return ReloadReport(
            policy_count=len(result.candidate.policies),
            changed_policies=changed_policies(before, result.candidate),
            previous_revision=result.previous_revision,
            revision=result.revision,
            candidate_revision=result.candidate_revision,
            applied=result.applied,
        )
