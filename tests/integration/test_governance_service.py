"""The governance registry through its real wiring: ``services.governance.service:create``
served in-process by ``llmops.server.serve`` (embedded SQLite in a tmp state directory, the
local event log), called over gRPC. Status codes for bad input, the contract's response
fields, audit records in the event log with the caller as the actor, the RPCs still
pending, and the demo data ``llmops up`` registers."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmops.config import load_config
from llmops.events.local_log import LocalLog
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2, governance_pb2, governance_pb2_grpc
from tests.support import mesh_env

pytestmark = pytest.mark.timeout(120)

MODEL = governance_pb2.ARTIFACT_KIND_MODEL
DATASET = governance_pb2.ARTIFACT_KIND_DATASET
APPROVED = governance_pb2.VERSION_STATE_APPROVED
CALLER = "unauthenticated:127.0.0.1"


def digest(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode()).hexdigest()


@dataclass
class Served:
    state_dir: Path
    gov: governance_pb2_grpc.GovernanceServiceStub
    admin: governance_pb2_grpc.GovernanceAdminServiceStub

    def audits(self, at_least: int) -> list[events_pb2.AuditEvent]:
        log = LocalLog(self.state_dir / "events")
        consumer = log.consumer(f"test-governance-{time.monotonic_ns()}", [KIND_TOPICS["audit"]])
        found: list[events_pb2.AuditEvent] = []
        deadline = time.monotonic() + 10
        try:
            while len(found) < at_least and time.monotonic() < deadline:
                found.extend(
                    events_pb2.EventEnvelope.FromString(r.value).audit
                    for r in consumer.poll(100, 0.1)
                )
            found.extend(
                events_pb2.EventEnvelope.FromString(r.value).audit for r in consumer.poll(100, 0.2)
            )
        finally:
            consumer.close()
            log.close()
        return found


@asynccontextmanager
async def serving(tmp_path: Path, demo_data: str) -> AsyncIterator[Served]:
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path)
    env["LLMOPS__SINK__EMBEDDED"] = "false"  # in-process: this pytest process's chdb is taken
    env["LLMOPS__EVENTS__BACKEND"] = "local"
    env["LLMOPS__EVENTS__LINGER_MS"] = "1"
    env["LLMOPS__GOVERNANCE__DEMO_DATA"] = demo_data
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["governance"], ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['governance']}") as channel:
            yield Served(
                Path(env["LLMOPS__STATE_DIR"]),
                governance_pb2_grpc.GovernanceServiceStub(channel),
                governance_pb2_grpc.GovernanceAdminServiceStub(channel),
            )
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path, "off") as s:
        yield s


async def _fails(call: object, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() is code, err.value.details()
    details = err.value.details() or ""
    for needle in needles:
        assert needle in details
    return details


def card(**fields: object) -> governance_pb2.ModelCard:
    base = governance_pb2.ModelCard(
        intended_use="Summarize guest reviews",
        risk_tier=governance_pb2.RISK_TIER_HIGH,
        risk_tier_rationale="test",
        limitations=["short reviews"],
        evaluations=[governance_pb2.EvaluationResult(metric="rougeL", value=0.4)],
        human_oversight_contact="oncall@example.com",
    )
    for key, value in fields.items():
        setattr(base, key, value)
    return base


async def test_registry_rpcs_status_codes_and_audit_records(served: Served) -> None:
    gov = served.gov
    data = await gov.Register(
        governance_pb2.RegisterRequest(
            kind=DATASET, name="reviews", content_digest=digest("d"), uri="s3://d/1/",
            dataset=governance_pb2.DatasetInfo(row_count=10),
        ),
        timeout=10,
    )  # fmt: skip
    request = governance_pb2.RegisterRequest(
        kind=MODEL, name="summary-llm", content_digest=digest("w1"), uri="s3://m/1/",
        description="summarizer", owner="content-team", model_card=card(),
        lineage=[governance_pb2.LineageEdge(
            upstream=governance_pb2.LineageNode(
                artifact=governance_pb2.ArtifactRef(kind=DATASET, name="reviews")),
            relation=governance_pb2.LINEAGE_RELATION_TRAINED_ON)],
    )  # fmt: skip
    request.metadata["parameters"].int64_value = 8_000_000_000
    registered = await gov.Register(request, timeout=10)
    v = registered.version
    assert (v.name, v.version, v.state, v.created_by) == ("summary-llm", 1, 1, CALLER)
    assert v.model_card.human_oversight_contact == "oncall@example.com"
    assert v.metadata["parameters"].int64_value == 8_000_000_000
    assert v.create_time.seconds > 0 and registered.audit_event_id
    assert registered.decision.allowed and registered.decision.decision_id
    assert registered.decision.path == "llmops/registry/register/allow"
    again = await gov.Register(request, timeout=10)
    assert again.already_exists and again.version == registered.version

    await _fails(
        gov.GetArtifact(governance_pb2.GetArtifactRequest(
            ref=governance_pb2.ArtifactRef(kind=MODEL, name="nope")), timeout=5),
        grpc.StatusCode.NOT_FOUND, "ref.name", "model nope not found",
    )  # fmt: skip
    bad = governance_pb2.RegisterRequest()
    bad.CopyFrom(request)
    bad.content_digest = digest("w2")
    bad.model_card.human_oversight_contact = ""
    await _fails(gov.Register(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                 "model_card.human_oversight_contact")  # fmt: skip
    await _fails(
        gov.Transition(governance_pb2.TransitionRequest(
            ref=governance_pb2.ArtifactRef(kind=MODEL, name="summary-llm", version=1),
            target_state=governance_pb2.VERSION_STATE_ARCHIVED), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION, "may move to APPROVED or REJECTED",
    )  # fmt: skip
    moved = await gov.Transition(
        governance_pb2.TransitionRequest(
            ref=governance_pb2.ArtifactRef(kind=MODEL, name="summary-llm", alias="latest"),
            target_state=APPROVED, reason="looks good",
        ),
        timeout=5,
    )  # fmt: skip
    assert moved.previous_state == governance_pb2.VERSION_STATE_REGISTERED
    assert moved.version.state == APPROVED and moved.audit_event_id
    # the same caller registered and approved: no serving alias (four eyes)
    details = await _fails(
        gov.SetAlias(governance_pb2.SetAliasRequest(
            kind=MODEL, name="summary-llm", alias="champion", version=1), timeout=5),
        grpc.StatusCode.PERMISSION_DENIED, "approved by another person", "decision_id=",
    )  # fmt: skip
    canary = governance_pb2.SetAliasRequest(
        kind=MODEL, name="summary-llm", alias="canary", version=1, expected_version=0,
        reason="canary",
    )  # fmt: skip
    set_ = await gov.SetAlias(canary, timeout=5)
    assert (set_.previous_version, set_.version) == (0, 1) and set_.decision.allowed
    await _fails(gov.SetAlias(canary, timeout=5), grpc.StatusCode.ABORTED, "expected_version")

    got = await gov.GetArtifact(
        governance_pb2.GetArtifactRequest(
            ref=governance_pb2.ArtifactRef(kind=MODEL, name="summary-llm", alias="canary")
        ),
        timeout=5,
    )
    assert got.artifact.aliases == {"canary": 1} and got.artifact.latest_version == 1
    assert got.artifact.owner == "content-team" and list(got.version.aliases) == ["canary"]
    listed = await gov.ListArtifacts(governance_pb2.ListArtifactsRequest(), timeout=5)
    assert [a.name for a in listed.artifacts] == ["reviews", "summary-llm"]
    versions = await gov.ListArtifacts(
        governance_pb2.ListArtifactsRequest(kind=MODEL, name="summary-llm", states=[APPROVED]),
        timeout=5,
    )
    assert [x.version for x in versions.versions] == [1] and not versions.artifacts
    await _fails(gov.ListArtifacts(governance_pb2.ListArtifactsRequest(page_size=-1), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "page_size")  # fmt: skip

    route = governance_pb2.LineageNode(route="summary-small")
    added = await gov.AddLineage(
        governance_pb2.AddLineageRequest(edges=[governance_pb2.LineageEdge(
            upstream=governance_pb2.LineageNode(
                artifact=governance_pb2.ArtifactRef(kind=MODEL, name="summary-llm")),
            downstream=route, relation=governance_pb2.LINEAGE_RELATION_SERVED_BY)]),
        timeout=5,
    )  # fmt: skip
    assert added.added_count == 1
    lineage = await gov.GetLineage(
        governance_pb2.GetLineageRequest(
            node=route, direction=governance_pb2.LINEAGE_DIRECTION_UPSTREAM, depth=2
        ),
        timeout=5,
    )
    assert [(e.upstream.artifact.name, e.upstream.artifact.version) for e in lineage.edges] == [
        ("summary-llm", 1), ("reviews", 1),
    ]  # fmt: skip
    assert lineage.edges[0].created_by == CALLER and lineage.edges[0].create_time.seconds > 0
    await _fails(gov.GetLineage(governance_pb2.GetLineageRequest(node=route, depth=11), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "depth")  # fmt: skip
    await _fails(
        gov.Evaluate(governance_pb2.EvaluateRequest(path="x"), timeout=5),
        grpc.StatusCode.UNIMPLEMENTED, "GovernanceService.Evaluate is not implemented yet",
        "issue #11",
    )  # fmt: skip
    await _fails(
        served.admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5),
        grpc.StatusCode.UNIMPLEMENTED, "issue #11",
    )  # fmt: skip

    audits = sorted(served.audits(at_least=6), key=lambda a: a.event_id)  # UUIDv7: time order
    assert [(a.action, a.outcome) for a in audits] == [
        ("artifact.register", events_pb2.AUDIT_OUTCOME_SUCCESS),  # the dataset
        ("artifact.register", events_pb2.AUDIT_OUTCOME_SUCCESS),  # the model (not again)
        ("artifact.transition", events_pb2.AUDIT_OUTCOME_SUCCESS),
        ("alias.set", events_pb2.AUDIT_OUTCOME_DENIED),
        ("alias.set", events_pb2.AUDIT_OUTCOME_SUCCESS),
        ("lineage.add", events_pb2.AUDIT_OUTCOME_SUCCESS),
    ]
    assert {a.actor.id for a in audits} == {CALLER}
    assert audits[0].event_id == data.audit_event_id
    assert audits[1].event_id == registered.audit_event_id
    assert audits[2].reason == "looks good" and audits[2].after["state"] == "APPROVED"
    assert audits[3].policy_decision_id in details
    assert (audits[4].resource.type, audits[4].resource.name) == ("model", "summary-llm")


async def test_demo_data_gives_the_storefront_a_lineage_once(tmp_path: Path) -> None:
    async def lineage(served: Served) -> list[str]:
        deadline = time.monotonic() + 20
        request = governance_pb2.GetLineageRequest(
            node=governance_pb2.LineageNode(route="summary-small"),
            direction=governance_pb2.LINEAGE_DIRECTION_UPSTREAM,
            depth=3,
        )
        while True:
            edges = (await served.gov.GetLineage(request, timeout=5)).edges
            if len(edges) >= 6 or time.monotonic() > deadline:
                return sorted(
                    f"{e.upstream.artifact.name}>{e.downstream.artifact.name or e.downstream.route}"
                    for e in edges
                )
            await asyncio.sleep(0.1)

    async with serving(tmp_path, "on") as served:
        first = await lineage(served)
        assert "guest-reviews>property-summary-llm" in first
        assert "property-summary>summary-small" in first
        champion = await served.gov.GetArtifact(
            governance_pb2.GetArtifactRequest(
                ref=governance_pb2.ArtifactRef(
                    kind=governance_pb2.ARTIFACT_KIND_PROMPT,
                    name="property-summary",
                    alias="champion",
                )
            ),
            timeout=5,
        )
        assert champion.version.version == 3
        assert champion.artifact.aliases == {"champion": 3, "challenger": 4}
        count = len(
            (await served.gov.ListArtifacts(governance_pb2.ListArtifactsRequest())).artifacts
        )
    async with serving(tmp_path, "on") as served:  # restart: the registry persists, no re-seed
        await asyncio.sleep(0.5)
        assert await lineage(served) == first
        again = await served.gov.ListArtifacts(governance_pb2.ListArtifactsRequest(), timeout=5)
        assert len(again.artifacts) == count == 7
