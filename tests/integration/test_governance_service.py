"""The governance registry through its real wiring: ``services.governance.service:create``
served in-process by ``llmops.server.serve`` (embedded SQLite in a tmp state directory, the
local event log, the committed Wasm policy bundle), called over gRPC. Status codes for bad
input, the contract's response fields, audit records in the event log with the caller as
the actor, policy decisions (Evaluate, the Rego deploy gate of alias moves, their decision
records), policy reloads and the bundle in force, the audit writer's chained records, and
the demo data ``llmops up`` registers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import shutil
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_status import rpc_status

from llmops.config import load_config
from llmops.events.local_log import LocalLog
from llmops.events.topics import AUDIT_CHAINED_TOPIC, KIND_TOPICS
from llmops.policy.wasm import DEFAULT_WASM_BUNDLE
from llmops.v1 import common_pb2, events_pb2, governance_pb2, governance_pb2_grpc
from services.governance.audit_chain import hash_of
from tests.governance_policy_cases import ALIAS as ALIAS_GATE
from tests.governance_policy_cases import DECISION_PATHS, promote
from tests.support import mesh_env

pytestmark = pytest.mark.timeout(120)

MODEL = governance_pb2.ARTIFACT_KIND_MODEL
DATASET = governance_pb2.ARTIFACT_KIND_DATASET
APPROVED = governance_pb2.VERSION_STATE_APPROVED
CALLER = "unauthenticated:127.0.0.1"
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def digest(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode()).hexdigest()


@dataclass
class Served:
    state_dir: Path
    gov: governance_pb2_grpc.GovernanceServiceStub
    admin: governance_pb2_grpc.GovernanceAdminServiceStub

    async def audits(
        self, at_least: int, topic: str = KIND_TOPICS["audit"]
    ) -> list[events_pb2.AuditEvent]:
        """At least ``at_least`` records of ``topic`` (or what came within 10 s), read on a
        thread: the service runs on this event loop (its audit writer too)."""
        return await asyncio.to_thread(self._audits, at_least, topic)

    def _audits(self, at_least: int, topic: str) -> list[events_pb2.AuditEvent]:
        log = LocalLog(self.state_dir / "events")
        consumer = log.consumer(f"test-governance-{time.monotonic_ns()}", [topic])
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
async def serving(
    tmp_path: Path, demo_data: str, opa_url: str = "", **settings: str
) -> AsyncIterator[Served]:
    """The governance service; ``settings`` are governance settings (LLMOPS__GOVERNANCE__),
    ``opa_url`` the OPA server's (backends.opa.url)."""
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path, insecure=True)
    for key, value in settings.items():
        env[f"LLMOPS__GOVERNANCE__{key.upper()}"] = value
    if opa_url:
        env["LLMOPS__BACKENDS__OPA__URL"] = opa_url
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
    # the same caller registered and approved (four eyes), and the card has no licence: the
    # Rego deploy gate refuses with its reasons
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await gov.SetAlias(governance_pb2.SetAliasRequest(
            kind=MODEL, name="summary-llm", alias="champion", version=1), timeout=5)  # fmt: skip
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    details = denied.value.details() or ""
    for needle in (
        f"policy {ALIAS_GATE} denied",
        f'alias "champion" needs an approval by someone other than the registrant "{CALLER}"',
        'model card field "license" is missing (required for alias "champion")',
        "decision_id=",
    ):
        assert needle in details
    # the rich status carries the decision id as an llmops.v1.ErrorDetail (the contract's)
    status = rpc_status.from_call(denied.value)  # type: ignore[arg-type]
    assert status is not None
    detail = common_pb2.ErrorDetail()
    assert status.details[0].Unpack(detail) and detail.reason == "POLICY_DENIED"
    assert UUID7.match(detail.metadata["decision_id"])
    assert f"decision_id={detail.metadata['decision_id']}" in details
    canary = governance_pb2.SetAliasRequest(
        kind=MODEL, name="summary-llm", alias="canary", version=1, expected_version=0,
        reason="canary",
    )  # fmt: skip
    set_ = await gov.SetAlias(canary, timeout=5)
    assert (set_.previous_version, set_.version) == (0, 1) and set_.decision.allowed
    assert set_.decision.path == ALIAS_GATE and set_.decision.bundle_revision
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
    await _fails(gov.VerifyAudit(governance_pb2.VerifyAuditRequest(), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "chain")  # fmt: skip
    await _fails(
        gov.QueryAudit(governance_pb2.QueryAuditRequest(page_token="nope"), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "page_token",
    )  # fmt: skip

    found = await served.audits(at_least=9)  # with the start-up policy.load
    # the audit writer (a task of the service) chained every raw record, in one chain per
    # tenant, sequence 1, 2, 3 ... with each hash recomputing from the record
    chained = await served.audits(at_least=len(found), topic=AUDIT_CHAINED_TOPIC)
    assert {a.event_id for a in chained} == {a.event_id for a in found}
    for chain in {a.chain for a in chained}:
        links = sorted((a for a in chained if a.chain == chain), key=lambda a: a.sequence)
        assert [a.sequence for a in links] == list(range(1, len(links) + 1))
        assert all(a.hash == hash_of(a) for a in links)
        assert [a.prev_hash for a in links] == ["0" * 64] + [a.hash for a in links[:-1]]
    # UUIDv7 ids order records across milliseconds only: a gate decision and the denial it
    # caused can share one, so the decision records are matched by their decision id
    decided = {a.policy_decision_id: a for a in found if a.action == "policy.decide"}
    # the policy bundle the service started with is audited once, by the service itself
    assert [a.actor.id for a in found if a.action == "policy.load"] == ["system:policy"]
    audits = sorted(
        (a for a in found if a.action not in ("policy.decide", "policy.load")),
        key=lambda a: a.event_id,
    )
    assert [(a.action, a.outcome) for a in audits] == [
        ("artifact.register", events_pb2.AUDIT_OUTCOME_SUCCESS),  # the dataset
        ("artifact.register", events_pb2.AUDIT_OUTCOME_SUCCESS),  # the model (not again)
        ("artifact.transition", events_pb2.AUDIT_OUTCOME_SUCCESS),
        ("alias.set", events_pb2.AUDIT_OUTCOME_DENIED),
        ("alias.set", events_pb2.AUDIT_OUTCOME_SUCCESS),
        ("lineage.add", events_pb2.AUDIT_OUTCOME_SUCCESS),
    ]
    assert {a.actor.id for a in found if a.action != "policy.load"} == {CALLER}
    assert audits[0].event_id == data.audit_event_id
    assert audits[1].event_id == registered.audit_event_id
    assert audits[2].reason == "looks good" and audits[2].after["state"] == "APPROVED"
    assert audits[3].policy_decision_id in details
    assert (audits[4].resource.type, audits[4].resource.name) == ("model", "summary-llm")
    assert audits[4].policy_decision_id == set_.decision.decision_id
    # the deploy gate's two decisions (the ABORTED canary move was not decided)
    assert {k: (v.outcome, v.resource.type, v.resource.name) for k, v in decided.items()} == {
        audits[3].policy_decision_id: (events_pb2.AUDIT_OUTCOME_DENIED, "policy", ALIAS_GATE),
        audits[4].policy_decision_id: (events_pb2.AUDIT_OUTCOME_SUCCESS, "policy", ALIAS_GATE),
    }


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
        # the demo models passed the Rego deploy gate (four eyes, complete cards): another
        # serving alias is allowed by it too
        production = await served.gov.SetAlias(
            governance_pb2.SetAliasRequest(
                kind=MODEL, name="ranker-lgbm", alias="production", version=1
            ),
            timeout=5,
        )
        assert production.decision.allowed and production.decision.path == ALIAS_GATE
        assert production.decision.input["artifact"]["created_by"] == "system:governance-demo"
        count = len(
            (await served.gov.ListArtifacts(governance_pb2.ListArtifactsRequest())).artifacts
        )
    async with serving(tmp_path, "on") as served:  # restart: the registry persists, no re-seed
        await asyncio.sleep(0.5)
        assert await lineage(served) == first
        again = await served.gov.ListArtifacts(governance_pb2.ListArtifactsRequest(), timeout=5)
        assert len(again.artifacts) == count == 16  # 7, 4 task prompts, 2 models, 3 datasets


# -- policy decisions ------------------------------------------------------------------------


def struct(doc: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(doc)
    return out


def with_revision(source: Path, target: Path, revision: str) -> None:
    """``target``: the bundle ``source`` with its manifest's revision replaced (written to a
    temporary file first, then renamed: a watcher never reads half a bundle)."""
    with tarfile.open(source, "r:gz") as tar:
        files = {
            m.name: handle.read()
            for m in tar.getmembers()
            if (handle := tar.extractfile(m)) is not None
        }
    manifest_name = next(n for n in files if n.lstrip("/") == ".manifest")
    manifest = json.loads(files[manifest_name])
    manifest["revision"] = revision
    files[manifest_name] = json.dumps(manifest).encode()
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    partial.replace(target)


async def test_evaluate_decides_records_and_names_malformed_fields(served: Served) -> None:
    gov = served.gov
    bundle = await served.admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5)
    context = common_pb2.RequestContext(tenant="acme")
    doc = promote(headers={"authorization": "Bearer s3cret"})
    allowed = (
        await gov.Evaluate(
            governance_pb2.EvaluateRequest(context=context, path=ALIAS_GATE, input=struct(doc)),
            timeout=5,
        )
    ).decision
    assert UUID7.match(allowed.decision_id) and allowed.path == ALIAS_GATE
    assert allowed.bundle_revision == bundle.revision and allowed.allowed
    assert list(allowed.reasons) == [] and allowed.latency_us > 0
    assert json_format.MessageToDict(allowed.result) == {
        "allow": True, "reasons": [], "invalid": [],
    }  # fmt: skip
    recorded = json_format.MessageToDict(allowed.input)
    assert recorded["headers"] == {} and recorded["alias"] == "champion"  # the secret is gone
    assert recorded["artifact"]["version"] == 7
    assert abs(allowed.decide_time.ToMicroseconds() / 1e6 - time.time()) < 60

    denied = (
        await gov.Evaluate(
            governance_pb2.EvaluateRequest(
                context=context, path=ALIAS_GATE, input=struct(promote(approvals=[]))
            ),
            timeout=5,
        )
    ).decision
    assert not denied.allowed and list(denied.reasons) == [
        'alias "champion" needs an approval by someone other than the registrant "user:alice"'
    ]
    assert json_format.MessageToDict(denied.result)["allow"] is False

    await _fails(
        gov.Evaluate(governance_pb2.EvaluateRequest(path=ALIAS_GATE, input=struct(
            promote(artifact={"state": ""}))), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "input.artifact.state",
    )  # fmt: skip
    await _fails(
        gov.Evaluate(governance_pb2.EvaluateRequest(input=struct(promote())), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "path",
    )  # fmt: skip
    await _fails(
        gov.Evaluate(governance_pb2.EvaluateRequest(path="llmops/nope/decision"), timeout=5),
        grpc.StatusCode.NOT_FOUND, "llmops/nope/decision", ALIAS_GATE,
    )  # fmt: skip

    decisions = {
        a.policy_decision_id: a
        for a in await served.audits(at_least=2)
        if a.action == "policy.decide"
    }
    assert {k: a.outcome for k, a in decisions.items()} == {
        allowed.decision_id: events_pb2.AUDIT_OUTCOME_SUCCESS,
        denied.decision_id: events_pb2.AUDIT_OUTCOME_DENIED,
    }  # the malformed and unknown-path calls are not decisions
    first = decisions[allowed.decision_id]
    assert (first.resource.type, first.resource.name) == ("policy", ALIAS_GATE)
    assert first.resource.version == bundle.revision and first.tenant == "acme"
    assert first.actor.id == CALLER
    after = json_format.MessageToDict(first.after)
    assert after["redacted"] == ["input.headers.authorization"]
    assert "s3cret" not in str(first)


async def test_reload_policies_dry_run_then_real_and_the_bundle_in_force(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar.gz"
    shutil.copy(DEFAULT_WASM_BUNDLE, path)
    async with serving(
        tmp_path, "off", policy_bundle=str(path), policy_reload_interval_s="0"
    ) as served:
        admin = served.admin
        bundle = await admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5)
        old = bundle.revision
        assert old and bundle.source == path.resolve().as_uri()
        assert bundle.load_time.seconds > 0
        assert list(bundle.decision_paths) == sorted(DECISION_PATHS)
        assert {m.package_name for m in bundle.modules} >= {"llmops.registry.alias"}
        assert all(len(m.sha256) == 64 and m.source == "" for m in bundle.modules)
        full = await admin.GetPolicyBundle(
            governance_pb2.GetPolicyBundleRequest(include_source=True), timeout=5
        )
        assert all(m.source.lstrip().startswith(("#", "package")) for m in full.modules)
        assert [m.sha256 for m in full.modules] == [m.sha256 for m in bundle.modules]

        reload = governance_pb2.GovernanceAdminServiceReloadPoliciesRequest
        unchanged = await admin.ReloadPolicies(reload(), timeout=10)
        assert (unchanged.previous_revision, unchanged.revision) == (old, old)
        assert unchanged.module_count == len(bundle.modules)

        with_revision(DEFAULT_WASM_BUNDLE, path, "llmops-test-2")
        dry = await admin.ReloadPolicies(reload(dry_run=True), timeout=10)
        assert (dry.previous_revision, dry.revision) == (old, old)
        assert dry.module_count == len(bundle.modules)
        still = await admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5)
        assert still.revision == old

        real = await admin.ReloadPolicies(reload(), timeout=10)
        assert (real.previous_revision, real.revision) == (old, "llmops-test-2")
        assert real.module_count == len(bundle.modules)
        now = await admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5)
        assert now.revision == "llmops-test-2"
        decided = await served.gov.Evaluate(
            governance_pb2.EvaluateRequest(path=ALIAS_GATE, input=struct(promote())), timeout=5
        )
        assert decided.decision.bundle_revision == "llmops-test-2"

        path.write_bytes(b"not a bundle")
        for dry_run in (True, False):
            await _fails(admin.ReloadPolicies(reload(dry_run=dry_run), timeout=10),
                         grpc.StatusCode.INVALID_ARGUMENT, "bundle")  # fmt: skip
        kept = await admin.GetPolicyBundle(governance_pb2.GetPolicyBundleRequest(), timeout=5)
        assert kept.revision == "llmops-test-2"

        [record] = [a for a in await served.audits(at_least=2) if a.action == "policy.reload"]
        assert record.actor.id == CALLER
        assert record.before["revision"].startswith(old + "@")
        assert record.after["revision"].startswith("llmops-test-2@")


async def test_a_changed_bundle_file_is_reloaded_by_the_watch(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar.gz"
    shutil.copy(DEFAULT_WASM_BUNDLE, path)
    async with serving(
        tmp_path, "off", policy_bundle=str(path), policy_reload_interval_s="0.1"
    ) as served:
        with_revision(DEFAULT_WASM_BUNDLE, path, "llmops-watched")
        deadline = time.monotonic() + 20
        request = governance_pb2.GetPolicyBundleRequest()
        while (await served.admin.GetPolicyBundle(request, timeout=5)).revision != (
            "llmops-watched"
        ):
            assert time.monotonic() < deadline, "the bundle watch did not reload"
            await asyncio.sleep(0.1)
        [record] = [a for a in await served.audits(at_least=1) if a.action == "policy.reload"]
        assert record.actor.id == "system:policy"


@pytest.mark.infra
async def test_on_the_opa_server_the_same_decisions_and_gate(tmp_path: Path, opa_url: str) -> None:
    """Production's engine: the OPA server (deploy/local/opa.sh) behind the same RPCs."""
    async with serving(
        tmp_path, "off", opa_url, policy_engine="opa", policy_reload_interval_s="0"
    ) as served:
        bundle = await served.admin.GetPolicyBundle(
            governance_pb2.GetPolicyBundleRequest(), timeout=5
        )
        assert bundle.source == opa_url and list(bundle.decision_paths) == sorted(DECISION_PATHS)
        request = governance_pb2.EvaluateRequest(
            path=ALIAS_GATE, input=struct(promote(approvals=[]))
        )
        denied = (await served.gov.Evaluate(request, timeout=5)).decision
        assert not denied.allowed and denied.bundle_revision == bundle.revision
        assert list(denied.reasons) == [
            'alias "champion" needs an approval by someone other than the registrant "user:alice"'
        ]
        reloaded = await served.admin.ReloadPolicies(
            governance_pb2.GovernanceAdminServiceReloadPoliciesRequest(dry_run=True), timeout=10
        )
        assert reloaded.revision == reloaded.previous_revision == bundle.revision
        assert reloaded.module_count == len(bundle.modules)
