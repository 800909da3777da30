"""gRPC servicers of the guardrail service: protobuf <-> :mod:`services.guardrail.domain`.

Nothing here decides: requests become domain objects, domain results become responses.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from llmops.server import current_request_id
from llmops.v1 import common_pb2, guardrail_pb2, guardrail_pb2_grpc
from services.guardrail.detectors.base import Fact
from services.guardrail.domain import (
    Checked,
    Guardrail,
    PolicyCase,
    ReloadReport,
    StreamStep,
    Subject,
    finding_proto,
    latencies,
)
from services.guardrail.policy import DIRECTIONS, VERDICTS, CompiledPolicy

_DIRECTION_NAMES = {v: k for k, v in DIRECTIONS.items()}
_FAIL_MODES = {"OPEN": guardrail_pb2.FAIL_MODE_OPEN, "CLOSED": guardrail_pb2.FAIL_MODE_CLOSED}


def _facts(facts: Iterable[guardrail_pb2.Fact]) -> tuple[Fact, ...]:
    return tuple(Fact(f.id, f.text, f.source) for f in facts)


def _subject(
    m: guardrail_pb2.CheckRequest
    | guardrail_pb2.CheckStreamConfig
    | guardrail_pb2.CheckBatchRequest,
) -> Subject:
    """The request's subject; its request id is the caller's, else the one the runtime gave
    this RPC (common.proto: the first service that sees a request without one makes one)."""
    ctx = m.context
    return Subject(
        direction=m.direction, policy=m.policy, policy_version=m.policy_version,
        request_id=ctx.request_id or current_request_id() or "", tenant=ctx.tenant,
        market=ctx.market, locale=ctx.locale,
        facts=_facts(m.facts), route=m.route, task=m.task,
    )  # fmt: skip


async def _stream_items(
    requests: AsyncIterator[guardrail_pb2.CheckStreamRequest],
) -> AsyncIterator[Subject | str]:
    async for message in requests:
        yield (
            _subject(message.config) if message.WhichOneof("payload") == "config" else message.chunk
        )


def _check_response(checked: Checked) -> guardrail_pb2.CheckResponse:
    d = checked.decision
    return guardrail_pb2.CheckResponse(
        verdict=d.verdict, redacted_text=d.redacted_text,  # type: ignore[arg-type]
        findings=[finding_proto(c) for c in d.findings], policy=checked.policy.name,
        policy_version=checked.policy.version, detector_latencies=latencies(d.latencies_us),
        latency_us=d.latency_us, decision_id=checked.decision_id, degraded=d.degraded,
        block_message=d.block_message,
    )  # fmt: skip


def _stream_response(step: StreamStep) -> guardrail_pb2.CheckStreamResponse:
    out = guardrail_pb2.CheckStreamResponse(
        released_text=step.released_text, released_until=step.released_until,
        verdict=step.verdict, findings=[finding_proto(c) for c in step.findings],  # type: ignore[arg-type]
    )  # fmt: skip
    if step.summary is not None:
        d = step.summary.decision
        out.final = True
        out.policy = step.summary.policy.name
        out.policy_version = step.summary.policy.version
        out.detector_latencies.extend(latencies(d.latencies_us))
        out.latency_us = d.latency_us
        out.decision_id = step.summary.decision_id
        out.degraded = d.degraded
        out.block_message = d.block_message
    return out


def _reload_response(
    report: ReloadReport,
) -> guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse:
    return guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse(
        policy_count=report.policy_count, changed_policies=report.changed_policies,
        previous_revision=report.previous_revision, revision=report.revision,
    )  # fmt: skip


def _set_value(target: common_pb2.Value, v: Any) -> None:
    if isinstance(v, bool):
        target.bool_value = v
    elif isinstance(v, int):
        target.int64_value = v
    elif isinstance(v, float):
        target.double_value = v
    elif isinstance(v, str):
        target.string_value = v
    elif isinstance(v, list) and all(isinstance(x, str) for x in v):
        target.string_list_value.values.extend(v)
    else:  # nested structures (a JSON schema) travel as their JSON text
        target.string_value = json.dumps(v, sort_keys=True)


def _python(v: common_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_list_value":
        return list(v.string_list_value.values)
    return getattr(v, kind) if kind else None


def policy_proto(policy: CompiledPolicy) -> guardrail_pb2.Policy:
    """A compiled policy as the contract's ``Policy``: REDACT styles and BLOCK messages
    travel in the check's ``params``."""
    p = policy.spec
    out = guardrail_pb2.Policy(
        name=p.name, version=p.version, description=p.description,
        directions=[DIRECTIONS[d] for d in p.directions],
        fail_mode=_FAIL_MODES[p.fail_mode],
    )  # fmt: skip
    out.timeout.FromMicroseconds(int(policy.timeout_s * 1e6))
    for c in p.detectors:
        d = out.detectors.add(
            detector=c.detector, finding_types=c.finding_types, threshold=c.threshold,
            action=VERDICTS[c.action],
        )  # fmt: skip
        params = dict(c.params)
        if c.action == "REDACT":
            params["redact_style"] = c.redact_style
        if c.block_message:
            params["block_message"] = c.block_message
        for k, v in params.items():
            _set_value(d.params[k], v)
    return out


_VERDICT_NAMES = {
    number: name.removeprefix("VERDICT_") for name, number in common_pb2.Verdict.items()
}


def candidate_data(candidate: guardrail_pb2.Policy) -> dict[str, Any]:
    """An inline ``Policy`` as the mapping a policy file would hold (unset fields left out)."""
    checks = []
    for d in candidate.detectors:
        params = {k: _python(v) for k, v in d.params.items()}
        # an enum number the contract does not name stays a number: validation refuses it
        action = _VERDICT_NAMES.get(d.action, str(d.action))
        check = {"detector": d.detector, "finding_types": list(d.finding_types),
                 "threshold": d.threshold, "action": action, "params": params}  # fmt: skip
        for key in ("redact_style", "block_message"):
            if key in params:
                check[key] = params.pop(key)
        checks.append(check)
    data: dict[str, Any] = {"detectors": checks, "description": candidate.description}
    if candidate.name:
        data["name"] = candidate.name
    if candidate.version:
        data["version"] = candidate.version
    if candidate.directions:
        data["directions"] = [_DIRECTION_NAMES.get(d, str(d)) for d in candidate.directions]
    if candidate.fail_mode == guardrail_pb2.FAIL_MODE_OPEN:
        data["fail_mode"] = "OPEN"
    if candidate.HasField("timeout"):
        data["timeout"] = f"{candidate.timeout.ToMilliseconds()}ms"
    return data


class GuardrailServicer(guardrail_pb2_grpc.GuardrailServiceServicer):
    def __init__(self, guardrail: Guardrail) -> None:
        self.guardrail = guardrail

    async def Check(
        self, request: guardrail_pb2.CheckRequest, context: Any
    ) -> guardrail_pb2.CheckResponse:
        return _check_response(await self.guardrail.check(_subject(request), request.text))

    async def CheckBatch(
        self, request: guardrail_pb2.CheckBatchRequest, context: Any
    ) -> guardrail_pb2.CheckBatchResponse:
        began = time.perf_counter()
        checked = await self.guardrail.check_batch(_subject(request), request.texts)
        return guardrail_pb2.CheckBatchResponse(
            results=[_check_response(c) for c in checked],
            latency_us=int((time.perf_counter() - began) * 1e6),
        )

    async def CheckStream(
        self, request_iterator: AsyncIterator[guardrail_pb2.CheckStreamRequest], context: Any
    ) -> AsyncIterator[guardrail_pb2.CheckStreamResponse]:
        async for step in self.guardrail.check_stream(_stream_items(request_iterator)):
            yield _stream_response(step)


class GuardrailAdminServicer(guardrail_pb2_grpc.GuardrailAdminServiceServicer):
    def __init__(self, guardrail: Guardrail) -> None:
        self.guardrail = guardrail

    async def ListPolicies(
        self, request: guardrail_pb2.ListPoliciesRequest, context: Any
    ) -> guardrail_pb2.ListPoliciesResponse:
        current = self.guardrail.policies.current()
        return guardrail_pb2.ListPoliciesResponse(policies=[policy_proto(p) for p in current])

    async def GetPolicy(
        self, request: guardrail_pb2.GetPolicyRequest, context: Any
    ) -> guardrail_pb2.GetPolicyResponse:
        policy = self.guardrail.stored_policy(request.name, request.version)
        return guardrail_pb2.GetPolicyResponse(policy=policy_proto(policy))

    async def TestPolicy(
        self, request: guardrail_pb2.TestPolicyRequest, context: Any
    ) -> guardrail_pb2.TestPolicyResponse:
        target: str | dict[str, Any] | None = None
        if request.WhichOneof("target") == "candidate":
            target = candidate_data(request.candidate)
        elif request.WhichOneof("target") == "policy":
            target = request.policy
        cases = [
            PolicyCase(c.name, c.direction, c.text, _facts(c.facts), c.expected_verdict)
            for c in request.cases
        ]
        report = await self.guardrail.test_policy(target, request.policy_version, cases)
        response = guardrail_pb2.TestPolicyResponse(failed_count=report.failed_count)
        for r in report.results:
            response.results.add(
                name=r.name, verdict=r.decision.verdict,
                findings=[finding_proto(c) for c in r.decision.findings],
                redacted_text=r.decision.redacted_text, passed=r.passed,
                latency_us=r.decision.latency_us,
            )  # fmt: skip
        return response

    async def ReloadPolicies(
        self, request: guardrail_pb2.GuardrailAdminServiceReloadPoliciesRequest, context: Any
    ) -> guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse:
        return _reload_response(await self.guardrail.reload(dry_run=request.dry_run))
