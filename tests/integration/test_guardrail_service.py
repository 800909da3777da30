"""The guardrail service through its real wiring: ``services.guardrail.service:create`` served
in-process by ``llmops.server.serve`` (real backends, a tmp state directory, the local event
log), called over gRPC. Reloads (admin RPC and the Watch task), a broken policy file, the
decision event of a Check, and the stream's byte limit."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmops.config import load_config
from llmops.events.local_log import LocalLog
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import common_pb2, events_pb2, guardrail_pb2, guardrail_pb2_grpc
from tests.support import mesh_env

POLICIES = """
defaults: {OUTPUT: copy}
policies:
  - name: copy
    version: 1
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: REDACT, params: {names: [Expedia]}}
"""
V2 = """
  - name: copy
    version: 2
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: BLOCK, block_message: No., params: {names: [Expedia]}}
"""
OUT = common_pb2.DIRECTION_OUTPUT
Reload = guardrail_pb2.GuardrailAdminServiceReloadPoliciesRequest


@dataclass
class Served:
    policy_file: Path
    state_dir: Path
    metrics_url: str
    check: guardrail_pb2_grpc.GuardrailServiceStub
    admin: guardrail_pb2_grpc.GuardrailAdminServiceStub

    async def current_version(self) -> int:
        reply = await self.admin.GetPolicy(guardrail_pb2.GetPolicyRequest(name="copy"), timeout=5)
        return reply.policy.version

    def edit(self, text: str) -> None:
        """Replace the policy file at once (write + rename), as deploys do: the watcher
        never sees it half written."""
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.policy_file)

    def task_errors(self, task: str) -> float:
        """``llmops_task_runs_total{outcome="error",task=...}`` from the admin port."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        prefix = f'llmops_task_runs_total{{outcome="error",task="{task}"}} '
        return sum(float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix))


@asynccontextmanager
async def serving(tmp_path: Path, reload_interval_s: float) -> AsyncIterator[Served]:
    """The guardrail service as ``llmops run guardrail`` builds it, on a policy directory of
    its own; the Watch task polls every ``reload_interval_s`` (0: off)."""
    from llmops.server import serve

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "copy.yaml").write_text(POLICIES)
    env, ports, admin_ports = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"  # in-process: this pytest process's chdb is taken
    env["LLMOPS__EVENTS__BACKEND"] = "local"
    env["LLMOPS__EVENTS__LINGER_MS"] = "1"
    env["LLMOPS__GUARDRAILS__POLICIES"] = json.dumps([str(policies)])
    env["LLMOPS__GUARDRAILS__RELOAD_INTERVAL_S"] = str(reload_interval_s)
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["guardrail"], ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    if reload_interval_s:
        # The Watch task stamps the files when it starts, just after SERVING; an edit made
        # before that stamp would look like the baseline. Let it take the stamp first.
        await asyncio.sleep(0.5)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['guardrail']}") as channel:
            yield Served(
                policy_file=policies / "copy.yaml",
                state_dir=Path(env["LLMOPS__STATE_DIR"]),
                metrics_url=f"http://127.0.0.1:{admin_ports['guardrail']}/metrics",
                check=guardrail_pb2_grpc.GuardrailServiceStub(channel),
                admin=guardrail_pb2_grpc.GuardrailAdminServiceStub(channel),
            )
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """Reloads only through the admin RPC (the file watcher off)."""
    async with serving(tmp_path, 0) as s:
        yield s


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Served]:
    """The file watcher polling every 50 ms."""
    async with serving(tmp_path, 0.05) as s:
        yield s


async def _eventually(probe: Callable[[], object]) -> None:
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(probe):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_dry_run_reports_without_swapping_and_a_reload_swaps(served: Served) -> None:
    first = await served.admin.ReloadPolicies(Reload(), timeout=10)  # nothing changed yet
    assert (first.policy_count, list(first.changed_policies)) == (1, [])
    assert first.revision == first.previous_revision and len(first.revision) == 12
    served.edit(POLICIES + V2)
    dry = await served.admin.ReloadPolicies(Reload(dry_run=True), timeout=10)
    assert dry.policy_count == 1 and list(dry.changed_policies) == ["copy@2"]
    assert dry.previous_revision == dry.revision == first.revision  # equal on dry runs
    assert await served.current_version() == 1  # the dry run swapped nothing
    real = await served.admin.ReloadPolicies(Reload(), timeout=10)
    assert real.policy_count == 1 and list(real.changed_policies) == ["copy@2"]
    assert real.previous_revision == first.revision and real.revision != first.revision
    assert await served.current_version() == 2
    # the revision the service started with, then the applied reload (and only it) are
    # audited, the reload with the caller as the actor
    event_log = LocalLog(served.state_dir / "events")
    consumer = event_log.consumer("test-guardrail-audit", [KIND_TOPICS["audit"]])
    audits: list[events_pb2.AuditEvent] = []

    def audited() -> bool:
        audits.extend(
            events_pb2.EventEnvelope.FromString(r.value).audit for r in consumer.poll(100, 0.1)
        )
        return len(audits) >= 2

    try:
        await _eventually(audited)
        audits.extend(
            events_pb2.EventEnvelope.FromString(r.value).audit for r in consumer.poll(100, 0.3)
        )
    finally:
        consumer.close()
        event_log.close()
    assert [(a.action, a.resource.type, a.resource.version) for a in audits] == [
        ("policy.load", "policy", first.revision),
        ("policy.reload", "policy", real.revision),
    ]
    assert audits[0].actor.id == "system:policies"
    assert audits[1].actor.id == "unauthenticated:127.0.0.1"
    assert audits[1].before["revision"] == first.revision
    assert audits[1].after["revision"] == real.revision


async def test_watch_picks_up_an_edit_and_keeps_policies_on_a_broken_file(
    watched: Served,
) -> None:
    served = watched
    served.edit(POLICIES + V2)

    async def version_is(n: int) -> None:
        deadline = time.monotonic() + 10
        while await served.current_version() != n:
            assert time.monotonic() < deadline, f"policy version {n} not in force in time"
            await asyncio.sleep(0.05)

    await version_is(2)  # the Watch task reloaded the edited file
    served.edit(POLICIES.replace("action: REDACT", "action: DROP"))

    await _eventually(lambda: served.task_errors("policies_reload") >= 1)  # reported
    assert await served.current_version() == 2  # the policies in force stay
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.admin.ReloadPolicies(Reload(dry_run=True), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert str(served.policy_file) in (info.value.details() or "")
    assert "policies[copy@1].detectors[0].action" in (info.value.details() or "")
    reply = await served.check.Check(
        guardrail_pb2.CheckRequest(direction=OUT, text="Cheaper than Expedia"), timeout=5
    )
    assert reply.verdict == common_pb2.VERDICT_BLOCK and reply.policy_version == 2


async def test_check_publishes_its_decision_event(served: Served) -> None:
    request = guardrail_pb2.CheckRequest(
        direction=OUT, text="Cheaper than Expedia", route="copy", task="summary",
        context=common_pb2.RequestContext(request_id="req-1", tenant="t1", market="gb"),
    )  # fmt: skip
    reply = await served.check.Check(request, timeout=5)
    assert reply.verdict == common_pb2.VERDICT_REDACT and reply.decision_id
    clean = await served.check.Check(
        guardrail_pb2.CheckRequest(direction=OUT, text="Fine."), timeout=5
    )
    assert not clean.decision_id  # a clean ALLOW records nothing
    anonymous = served.check.Check(guardrail_pb2.CheckRequest(direction=OUT, text="Expedia"))
    assert (await anonymous).decision_id
    assigned = dict(await anonymous.trailing_metadata() or ())["x-request-id"]
    event_log = LocalLog(served.state_dir / "events")
    consumer = event_log.consumer("test-guardrail", [KIND_TOPICS["guardrail_decision"]])
    events: list[events_pb2.GuardrailDecisionEvent] = []

    def decision_arrived() -> bool:
        for record in consumer.poll(100, 0.1):
            events.append(events_pb2.EventEnvelope.FromString(record.value).guardrail_decision)
        return len(events) >= 2

    try:
        await _eventually(decision_arrived)
    finally:
        consumer.close()
        event_log.close()
    event, other = sorted(events, key=lambda e: e.event_id)  # UUIDv7: in time order
    assert event.event_id == reply.decision_id and event.request_id == "req-1"
    assert other.request_id == assigned  # no id from the caller: the one the runtime made
    assert (event.tenant, event.market, event.route, event.task) == ("t1", "gb", "copy", "summary")
    assert event.verdict == common_pb2.VERDICT_REDACT and event.policy == "copy"
    assert [f.type for f in event.findings] == ["commerce.competitor"]
    assert "Expedia" not in str(event)


async def test_a_retried_check_records_its_decision_under_the_same_id(served: Served) -> None:
    """gRPC's retry resends the call with its metadata, x-request-id included: the decision
    event gets the same id, which the sinks' event_id window stores once
    (tests/integration/test_sink.py: producer duplicates are dropped)."""
    from llmops.events.ids import uuid7

    request_id = uuid7()

    async def check(text: str, rid: str = request_id) -> str:
        request = guardrail_pb2.CheckRequest(direction=OUT, text=text)
        reply = await served.check.Check(request, metadata=(("x-request-id", rid),), timeout=5)
        assert reply.verdict == common_pb2.VERDICT_REDACT
        return reply.decision_id

    first = await check("Cheaper than Expedia")
    assert await check("Cheaper than Expedia") == first  # the retry
    assert await check("Cheaper than Expedia!") != first  # another text, same request
    assert await check("Cheaper than Expedia", uuid7()) != first  # another request
    event_log = LocalLog(served.state_dir / "events")
    consumer = event_log.consumer("test-guardrail", [KIND_TOPICS["guardrail_decision"]])
    ids: list[str] = []

    def decisions_arrived() -> bool:
        for record in consumer.poll(100, 0.1):
            ids.append(
                events_pb2.EventEnvelope.FromString(record.value).guardrail_decision.event_id
            )
        return len(ids) >= 4

    try:
        await _eventually(decisions_arrived)
    finally:
        consumer.close()
        event_log.close()
    assert ids.count(first) == 2 and len(set(ids)) == 3


async def test_stream_limit_counts_utf8_bytes(served: Served) -> None:
    emoji = "\N{GRINNING FACE}" * 1024  # 4 KiB of UTF-8, 1,024 code points

    async def stream(chunks: list[str]) -> list[guardrail_pb2.CheckStreamResponse]:
        async def requests() -> AsyncIterator[guardrail_pb2.CheckStreamRequest]:
            yield guardrail_pb2.CheckStreamRequest(
                config=guardrail_pb2.CheckStreamConfig(direction=OUT)
            )
            for chunk in chunks:
                yield guardrail_pb2.CheckStreamRequest(chunk=chunk)

        return [r async for r in served.check.CheckStream(requests(), timeout=30)]

    at_limit = await stream([emoji] * 16)  # exactly 65,536 bytes
    assert at_limit[-1].final and at_limit[-1].released_until == 16 * 1024
    assert "".join(r.released_text for r in at_limit) == emoji * 16
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream([emoji] * 16 + ["!"])  # one byte over (16,385 code points)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "65536 bytes of UTF-8" in (info.value.details() or "")


async def test_check_batch_over_grpc(served: Served) -> None:
    def batch(texts: list[str], policy: str = "") -> guardrail_pb2.CheckBatchRequest:
        return guardrail_pb2.CheckBatchRequest(direction=OUT, policy=policy, texts=texts)

    reply = await served.check.CheckBatch(batch(["Fine.", "Cheaper than Expedia"]), timeout=5)
    assert [r.verdict for r in reply.results] == [
        common_pb2.VERDICT_ALLOW, common_pb2.VERDICT_REDACT,
    ]  # fmt: skip
    assert not reply.results[0].decision_id and reply.results[1].decision_id
    assert reply.results[1].redacted_text != "Cheaper than Expedia" and reply.latency_us > 0
    for request, code, detail in [
        (batch([]), grpc.StatusCode.INVALID_ARGUMENT, "texts"),
        (batch(["ok", "\N{GRINNING FACE}" * 16_385]), grpc.StatusCode.INVALID_ARGUMENT,
         "texts[1]"),
        (batch(["ok"], policy="no-such-policy"), grpc.StatusCode.NOT_FOUND, "no-such-policy"),
    ]:  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.check.CheckBatch(request, timeout=5)
        assert info.value.code() is code
        assert detail in (info.value.details() or "")
