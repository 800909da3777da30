"""gRPC servicers of the guardrail service, and the decision events they publish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.ids import uuid7
from llmops.v1 import common_pb2, events_pb2, guardrail_pb2, guardrail_pb2_grpc
from services.guardrail.detectors.base import CheckContext, Fact
from services.guardrail.engine import ALLOW, INLINE_LIMIT, Counted, Decision, Engine, worst
from services.guardrail.policy import CompiledPolicy, PolicySet, compile_candidate
from services.guardrail.stream import StreamState

MAX_TEXT_BYTES = 64 * 1024
DIRECTION_NAMES: dict[int, str] = {
    common_pb2.DIRECTION_INPUT: "INPUT",
    common_pb2.DIRECTION_OUTPUT: "OUTPUT",
}

Publish = Callable[[events_pb2.EventEnvelope], None]


class PolicyHolder:
    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies


def finding_proto(c: Counted) -> common_pb2.GuardrailFinding:
    f = c.finding
    return common_pb2.GuardrailFinding(
        type=f.type, detector=f.detector, span_start=f.start, span_end=f.end, score=f.score,
        action=c.action, match_hash=c.match_hash,  # type: ignore[arg-type]
    )  # fmt: skip


def latencies(items: Sequence[tuple[str, int]]) -> list[common_pb2.StageLatency]:
    return [common_pb2.StageLatency(stage=name, duration_us=us) for name, us in items]


def _context(direction: int, ctx: common_pb2.RequestContext, facts: Sequence[Any]) -> CheckContext:
    return CheckContext(
        direction=DIRECTION_NAMES.get(direction, "INPUT"),
        locale=ctx.locale,
        facts=tuple(Fact(f.id, f.text, f.source) for f in facts),
    )


class GuardrailServicer(guardrail_pb2_grpc.GuardrailServiceServicer):
    def __init__(
        self, holder: PolicyHolder, engine: Engine, publish: Publish, pool: ThreadPoolExecutor,
        pool_slots: int = 8,
    ) -> None:  # fmt: skip
        self.holder = holder
        self.engine = engine
        self.publish = publish
        self.pool = pool
        self._slots = asyncio.Semaphore(pool_slots)
        self._pool_slots = pool_slots

    def _policy(self, name: str, version: int, direction: int) -> CompiledPolicy:
        if direction not in DIRECTION_NAMES:
            raise InvalidArgument("direction", "INPUT or OUTPUT")
        return self.holder.policies.get(name, version, direction)

    async def _evaluate(self, policy: CompiledPolicy, text: str, ctx: CheckContext) -> Decision:
        if len(text) <= INLINE_LIMIT:
            return self.engine.evaluate(policy, text, ctx)
        if self._slots.locked():  # every worker busy and more waiting: shed load
            raise ResourceExhausted("guardrail worker pool is full (long texts); retry later")
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.engine.evaluate, policy, text, ctx)

    def _record(
        self,
        decision: Decision,
        policy: CompiledPolicy,
        direction: int,
        ctx: common_pb2.RequestContext,
        route: str,
        task: str,
        findings: Sequence[Counted],
        streamed: bool = False,
    ) -> str:
        if decision.verdict == ALLOW and not decision.degraded:
            return ""
        event = events_pb2.GuardrailDecisionEvent(
            event_id=uuid7(), request_id=ctx.request_id, tenant=ctx.tenant, market=ctx.market,
            direction=direction, policy=policy.name, policy_version=policy.version,  # type: ignore[arg-type]
            verdict=decision.verdict, findings=[finding_proto(c) for c in findings],  # type: ignore[arg-type]
            detector_latencies=latencies(decision.latencies_us), latency_us=decision.latency_us,
            text_length=decision.text_length, route=route, task=task, streamed=streamed,
            degraded=decision.degraded,
        )  # fmt: skip
        event.event_time.FromNanoseconds(time.time_ns())
        self.publish(events_pb2.EventEnvelope(guardrail_decision=event))
        return event.event_id

    async def Check(
        self, request: guardrail_pb2.CheckRequest, context: Any
    ) -> guardrail_pb2.CheckResponse:
        if len(request.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidArgument("text", f"at most {MAX_TEXT_BYTES} bytes of UTF-8")
        policy = self._policy(request.policy, request.policy_version, request.direction)
        ctx = _context(request.direction, request.context, request.facts)
        decision = await self._evaluate(policy, request.text, ctx)
        decision_id = self._record(
            decision, policy, request.direction, request.context, request.route, request.task,
            decision.findings,
        )  # fmt: skip
        return guardrail_pb2.CheckResponse(
            verdict=decision.verdict, redacted_text=decision.redacted_text,  # type: ignore[arg-type]
            findings=[finding_proto(c) for c in decision.findings], policy=policy.name,
            policy_version=policy.version, detector_latencies=latencies(decision.latencies_us),
            latency_us=decision.latency_us, decision_id=decision_id, degraded=decision.degraded,
            block_message=decision.block_message,
        )  # fmt: skip

    async def CheckStream(
        self, request_iterator: AsyncIterator[guardrail_pb2.CheckStreamRequest], context: Any
    ) -> AsyncIterator[guardrail_pb2.CheckStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidArgument("config", "the first message must carry the stream's config")
        cfg = first.config
        policy = self._policy(cfg.policy, cfg.policy_version, cfg.direction)
        state = StreamState(self.engine, policy, _context(cfg.direction, cfg.context, cfg.facts))
        verdict: int = ALLOW
        async for message in request_iterator:
            if message.WhichOneof("payload") != "chunk":
                raise InvalidArgument("config", "only the first message carries a config")
            if len(state.text) + len(message.chunk) > MAX_TEXT_BYTES:
                raise InvalidArgument(
                    "chunk", f"a stream carries at most {MAX_TEXT_BYTES} characters"
                )
            release = state.push(message.chunk)
            verdict = worst(verdict, release.decision.verdict)
            if release.decision.verdict == common_pb2.VERDICT_BLOCK:
                yield self._final(state, release.decision, cfg, verdict, release.findings)
                return
            if release.text or release.findings:
                yield guardrail_pb2.CheckStreamResponse(
                    released_text=release.text, released_until=release.until,
                    verdict=verdict, findings=[finding_proto(c) for c in release.findings],  # type: ignore[arg-type]
                )  # fmt: skip
        release = state.finish()
        verdict = worst(verdict, release.decision.verdict)
        final = self._final(state, release.decision, cfg, verdict, release.findings)
        final.released_text = release.text if verdict != common_pb2.VERDICT_BLOCK else ""
        final.released_until = release.until
        yield final

    def _final(
        self,
        state: StreamState,
        decision: Decision,
        cfg: guardrail_pb2.CheckStreamConfig,
        verdict: int,
        new: Sequence[Counted],
    ) -> guardrail_pb2.CheckStreamResponse:
        summary = Decision(
            verdict=verdict, findings=state.counted, redacted_text="",
            block_message=decision.block_message, latencies_us=sorted(state.latencies.items()),
            degraded=state.degraded, latency_us=state.latency_us, text_length=len(state.text),
        )  # fmt: skip
        decision_id = self._record(
            summary, state.policy, cfg.direction, cfg.context, cfg.route, cfg.task,
            state.counted, streamed=True,
        )  # fmt: skip
        return guardrail_pb2.CheckStreamResponse(
            released_until=state.released, verdict=verdict,  # type: ignore[arg-type]
            findings=[finding_proto(c) for c in new], final=True, policy=state.policy.name,
            policy_version=state.policy.version, detector_latencies=latencies(summary.latencies_us),
            latency_us=state.latency_us, decision_id=decision_id, degraded=state.degraded,
            block_message=decision.block_message,
        )  # fmt: skip


class GuardrailAdminServicer(guardrail_pb2_grpc.GuardrailAdminServiceServicer):
    def __init__(self, holder: PolicyHolder, engine: Engine, reload: Callable[[bool], Any]) -> None:
        self.holder = holder
        self.engine = engine
        self._reload = reload

    async def ListPolicies(
        self, request: guardrail_pb2.ListPoliciesRequest, context: Any
    ) -> guardrail_pb2.ListPoliciesResponse:
        return guardrail_pb2.ListPoliciesResponse(
            policies=[p.proto for p in self.holder.policies.current()]
        )

    async def GetPolicy(
        self, request: guardrail_pb2.GetPolicyRequest, context: Any
    ) -> guardrail_pb2.GetPolicyResponse:
        if not request.name:
            raise InvalidArgument("name", "required")
        policy = self.holder.policies.get(request.name, request.version, 0)
        return guardrail_pb2.GetPolicyResponse(policy=policy.proto)

    async def TestPolicy(
        self, request: guardrail_pb2.TestPolicyRequest, context: Any
    ) -> guardrail_pb2.TestPolicyResponse:
        if request.WhichOneof("target") == "candidate":
            policy = compile_candidate(request.candidate)
        elif request.WhichOneof("target") == "policy":
            policy = self.holder.policies.get(request.policy, request.policy_version, 0)
        else:
            raise InvalidArgument("target", "name a policy or send a candidate")
        response = guardrail_pb2.TestPolicyResponse()
        for case in request.cases:
            ctx = _context(case.direction, common_pb2.RequestContext(), case.facts)
            decision = self.engine.evaluate(policy, case.text, ctx)
            passed = not case.expected_verdict or decision.verdict == case.expected_verdict
            response.results.add(
                name=case.name, verdict=decision.verdict,
                findings=[finding_proto(c) for c in decision.findings],
                redacted_text=decision.redacted_text, passed=passed,
                latency_us=decision.latency_us,
            )  # fmt: skip
            response.failed_count += 0 if passed else 1
        return response

    async def ReloadPolicies(
        self, request: guardrail_pb2.GuardrailAdminServiceReloadPoliciesRequest, context: Any
    ) -> guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse:
        result: guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse = await self._reload(
            False
        )
        return result
