"""gRPC servicer of the governance registry: protobuf in, domain call, protobuf out.

Nothing is decided here: requests become domain inputs (:mod:`services.governance.model`,
:mod:`services.governance.policy_decisions`, :mod:`services.governance.audit_trail`) and
domain results become responses.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import json_format, struct_pb2

from llmops.errors import InvalidArgument
from llmops.policy.engine import PolicyBundle
from llmops.v1 import common_pb2, governance_pb2, governance_pb2_grpc
from services.governance.audit_trail import AuditQuery, AuditTrail, Verification
from services.governance.compliance import (
    Compliance,
    ComplianceReport,
    DriftStatus,
    ModelReport,
    Retention,
    aliases_at,
)
from services.governance.model import (
    AliasChange,
    AliasMove,
    Artifact,
    ArtifactQuery,
    Change,
    Decision,
    Details,
    Edge,
    Node,
    Ref,
    Registration,
    StateChange,
    Version,
    VersionQuery,
)
from services.governance.policy_decisions import Decision as PolicyDecision
from services.governance.policy_decisions import PolicyDecisions, PolicyReload
from services.governance.registry import Registry

# -- requests -> domain -------------------------------------------------------------------


def ref_of(ref: governance_pb2.ArtifactRef, where: str) -> Ref:
    return Ref(ref.kind, ref.name, ref.version, ref.alias, where)


def node_of(node: governance_pb2.LineageNode, where: str) -> Node:
    which = node.WhichOneof("node")
    if which == "artifact":
        return Node(artifact=ref_of(node.artifact, f"{where}.artifact"))
    if which == "route":
        return Node(route=node.route)
    if which == "uri":
        return Node(uri=node.uri)
    return Node()


def edge_of(edge: governance_pb2.LineageEdge, where: str) -> Edge:
    return Edge(
        upstream=node_of(edge.upstream, f"{where}.upstream"),
        downstream=node_of(edge.downstream, f"{where}.downstream"),
        relation=edge.relation,
    )


def details_of(message: Any) -> Details | None:
    which = message.WhichOneof("details")
    return getattr(message, which) if which else None


def registration(request: governance_pb2.RegisterRequest) -> Registration:
    return Registration(
        kind=request.kind,
        name=request.name,
        content_digest=request.content_digest,
        uri=request.uri,
        description=request.description,
        owner=request.owner,
        metadata=dict(request.metadata),
        details=details_of(request),
        lineage=tuple(edge_of(e, f"lineage[{i}]") for i, e in enumerate(request.lineage)),
    )


def change_of(context: common_pb2.RequestContext, reason: str = "") -> Change:
    return Change(tenant=context.tenant, reason=reason)


# -- domain -> responses ------------------------------------------------------------------


def artifact_ref(ref: Ref) -> governance_pb2.ArtifactRef:
    return governance_pb2.ArtifactRef(
        kind=ref.kind,  # type: ignore[arg-type]
        name=ref.name,
        version=ref.version,
        alias=ref.alias,
    )


def version_pb(version: Version) -> governance_pb2.ArtifactVersion:
    out = governance_pb2.ArtifactVersion(
        kind=version.kind,  # type: ignore[arg-type]
        name=version.name,
        version=version.version,
        uri=version.uri,
        content_digest=version.content_digest,
        state=version.state,  # type: ignore[arg-type]
        created_by=version.created_by,
        aliases=version.aliases,
    )
    for key, value in version.metadata.items():
        out.metadata[key].CopyFrom(value)
    details = version.details
    if isinstance(details, governance_pb2.ModelCard):
        out.model_card.CopyFrom(details)
    elif isinstance(details, governance_pb2.PromptTemplate):
        out.prompt.CopyFrom(details)
    elif isinstance(details, governance_pb2.DatasetInfo):
        out.dataset.CopyFrom(details)
    elif isinstance(details, governance_pb2.PolicyInfo):
        out.policy.CopyFrom(details)
    out.create_time.FromMicroseconds(version.create_time_us)
    return out


def artifact_pb(artifact: Artifact) -> governance_pb2.Artifact:
    out = governance_pb2.Artifact(
        kind=artifact.kind,  # type: ignore[arg-type]
        name=artifact.name,
        description=artifact.description,
        owner=artifact.owner,
        tags=artifact.tags,
        latest_version=artifact.latest_version,
        aliases=artifact.aliases,
    )
    out.create_time.FromMicroseconds(artifact.create_time_us)
    return out


def decision_pb(decision: Decision | None) -> governance_pb2.PolicyDecision | None:
    if decision is None:
        return None
    out = governance_pb2.PolicyDecision(
        decision_id=decision.decision_id,
        path=decision.path,
        bundle_revision=decision.bundle_revision,
        allowed=decision.allowed,
        reasons=decision.reasons,
        latency_us=decision.latency_us,
    )
    out.input.update(decision.input)
    out.result.CopyFrom(json_format.ParseDict(decision.result, struct_pb2.Value()))
    out.decide_time.FromMicroseconds(decision.decide_time_us)
    return out


def plain(value: struct_pb2.Value) -> Any:
    """A Struct ``Value`` as a plain JSON value (json_format.MessageToDict's result, ~1.5x
    faster: Evaluate's input)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: plain(child) for key, child in value.struct_value.fields.items()}
    if kind == "list_value":
        return [plain(child) for child in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def plain_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: plain(child) for key, child in struct.fields.items()}


def set_value(out: struct_pb2.Value, value: Any) -> None:
    """``out`` set to the JSON value ``value`` (json_format.ParseDict into a Value, without
    its generic machinery)."""
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, dict):
        out.struct_value.SetInParent()  # set even when empty
        out.struct_value.update(value)
    elif isinstance(value, list):
        out.list_value.SetInParent()
        out.list_value.extend(value)
    else:
        out.CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))  # its error


def policy_decision_pb(
    decision: PolicyDecision, request_input: struct_pb2.Struct | None = None
) -> governance_pb2.PolicyDecision:
    """``request_input``: the request's Struct, copied as the decision's input when nothing
    was redacted from it (the same document: Struct numbers are doubles either way)."""
    out = governance_pb2.PolicyDecision(
        decision_id=decision.decision_id,
        path=decision.path,
        bundle_revision=decision.bundle_revision,
        allowed=decision.allowed,
        reasons=decision.reasons,
        latency_us=decision.latency_us,
    )
    if request_input is not None and not decision.redacted:
        out.input.CopyFrom(request_input)
    else:
        out.input.update(decision.input)
    set_value(out.result, decision.result)
    out.decide_time.FromNanoseconds(int(decision.decide_time * 1e9))
    return out


def reload_pb(
    reload: PolicyReload,
) -> governance_pb2.GovernanceAdminServiceReloadPoliciesResponse:
    return governance_pb2.GovernanceAdminServiceReloadPoliciesResponse(
        previous_revision=reload.previous_revision,
        revision=reload.revision,
        module_count=reload.module_count,
    )


def bundle_pb(bundle: PolicyBundle) -> governance_pb2.GetPolicyBundleResponse:
    out = governance_pb2.GetPolicyBundleResponse(
        revision=bundle.revision,
        source=bundle.source,
        modules=[
            governance_pb2.PolicyModule(
                path=m.path, package_name=m.package_name, sha256=m.sha256, source=m.source
            )
            for m in bundle.modules
        ],
        decision_paths=bundle.decision_paths,
    )
    out.load_time.FromNanoseconds(int(bundle.load_time * 1e9))
    return out


def node_pb(node: Node) -> governance_pb2.LineageNode:
    if node.artifact is not None:
        return governance_pb2.LineageNode(artifact=artifact_ref(node.artifact))
    if node.route:
        return governance_pb2.LineageNode(route=node.route)
    return governance_pb2.LineageNode(uri=node.uri)


def edge_pb(edge: Edge) -> governance_pb2.LineageEdge:
    out = governance_pb2.LineageEdge(
        upstream=node_pb(edge.upstream),
        downstream=node_pb(edge.downstream),
        relation=edge.relation,  # type: ignore[arg-type]
        created_by=edge.created_by,
    )
    out.create_time.FromMicroseconds(edge.create_time_us)
    return out


def audit_query(request: governance_pb2.QueryAuditRequest) -> AuditQuery:
    window = request.window
    return AuditQuery(
        chain=request.chain,
        start=window.start_time.ToDatetime(UTC) if window.HasField("start_time") else None,
        end=window.end_time.ToDatetime(UTC) if window.HasField("end_time") else None,
        actor_id=request.actor_id,
        action_prefix=request.action_prefix,
        resource_type=request.resource_type,
        resource_name=request.resource_name,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def verification_pb(v: Verification) -> governance_pb2.VerifyAuditResponse:
    return governance_pb2.VerifyAuditResponse(
        valid=v.valid,
        records_checked=v.records_checked,
        first_invalid_sequence=v.first_invalid_sequence,
        expected_hash=v.expected_hash,
        actual_hash=v.actual_hash,
        head_sequence=v.head_sequence,
        head_hash=v.head_hash,
        message=v.message,
    )


def alias_change_pb(change: AliasChange) -> governance_pb2.AliasChange:
    out = governance_pb2.AliasChange(
        alias=change.alias,
        previous_version=change.previous_version,
        version=change.version,
        actor_id=change.actor,
        reason=change.reason,
    )
    out.change_time.FromMicroseconds(change.time_us)
    return out


def state_change_pb(change: StateChange) -> governance_pb2.StateChange:
    out = governance_pb2.StateChange(
        version=change.version,
        previous_state=change.previous_state,  # type: ignore[arg-type]
        state=change.state,  # type: ignore[arg-type]
        actor_id=change.actor,
        reason=change.reason,
    )
    out.change_time.FromMicroseconds(change.time_us)
    return out


def retention_pb(r: Retention) -> governance_pb2.RetentionRule:
    return governance_pb2.RetentionRule(
        table=r.table,
        purpose=r.purpose,
        ttl_days=r.ttl_days,
        required_log=r.required_log,
        meets_minimum=r.meets_minimum,
    )


def drift_pb(d: DriftStatus) -> governance_pb2.DriftStatus:
    out = governance_pb2.DriftStatus(
        route=d.route,
        model_name=d.model_name,
        metric=d.metric,
        psi=d.psi,
        ks=d.ks,
        drifted=d.drifted,
        reference_count=d.reference_count,
        latest_count=d.latest_count,
    )
    out.report_time.FromMicroseconds(d.report_time_us)
    return out


def model_compliance_pb(m: ModelReport) -> governance_pb2.ModelCompliance:
    return governance_pb2.ModelCompliance(
        version=version_pb(m.version),
        risk_tier=m.risk_tier,  # type: ignore[arg-type]
        card=governance_pb2.CardCompleteness(
            complete=not m.card_missing, missing=m.card_missing, required_count=m.card_required
        ),
        approvals=[state_change_pb(c) for c in m.approvals],
        four_eyes=m.four_eyes,
        alias_history=[alias_change_pb(c) for c in m.alias_history],
        last_evaluations=m.last_evaluations,
        routes=m.routes,
        drift=[drift_pb(d) for d in m.drift],
        findings=m.findings,
    )


def compliance_pb(report: ComplianceReport) -> governance_pb2.GetComplianceReportResponse:
    out = governance_pb2.GetComplianceReportResponse(
        route=report.route,
        served=[artifact_ref(r) for r in report.served],
        models=[model_compliance_pb(m) for m in report.models],
        retention=[retention_pb(r) for r in report.retention],
        minimum_retention_days=report.minimum_retention_days,
        route_drift=[drift_pb(d) for d in report.route_drift],
        findings=report.findings,
    )
    out.generate_time.FromMicroseconds(report.generate_time_us)
    return out


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    def __init__(
        self,
        registry: Registry,
        decisions: PolicyDecisions,
        audit: AuditTrail,
        compliance: Compliance,
    ) -> None:
        self.registry = registry
        self.decisions = decisions
        self.audit = audit
        self.compliance = compliance

    async def Register(
        self, request: governance_pb2.RegisterRequest, context: Any
    ) -> governance_pb2.RegisterResponse:
        done = await self.registry.register(registration(request), change_of(request.context))
        return governance_pb2.RegisterResponse(
            version=version_pb(done.version),
            already_exists=done.already_exists,
            decision=decision_pb(done.decision),
            audit_event_id=done.audit_event_id,
        )

    async def GetArtifact(
        self, request: governance_pb2.GetArtifactRequest, context: Any
    ) -> governance_pb2.GetArtifactResponse:
        artifact, version = await self.registry.get(ref_of(request.ref, "ref"))
        return governance_pb2.GetArtifactResponse(
            artifact=artifact_pb(artifact), version=version_pb(version)
        )

    async def ListArtifacts(
        self, request: governance_pb2.ListArtifactsRequest, context: Any
    ) -> governance_pb2.ListArtifactsResponse:
        if request.name:
            versions = await self.registry.list_versions(
                VersionQuery(
                    kind=request.kind,
                    name=request.name,
                    states=tuple(request.states),
                    page_size=request.page_size,
                    page_token=request.page_token,
                )
            )
            return governance_pb2.ListArtifactsResponse(
                versions=[version_pb(v) for v in versions.items],
                next_page_token=versions.next_page_token,
            )
        artifacts = await self.registry.list_artifacts(
            ArtifactQuery(
                kind=request.kind,
                name_prefix=request.name_prefix,
                states=tuple(request.states),
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return governance_pb2.ListArtifactsResponse(
            artifacts=[artifact_pb(a) for a in artifacts.items],
            next_page_token=artifacts.next_page_token,
        )

    async def SetAlias(
        self, request: governance_pb2.SetAliasRequest, context: Any
    ) -> governance_pb2.SetAliasResponse:
        move = AliasMove(
            kind=request.kind,
            name=request.name,
            alias=request.alias,
            version=request.version,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
        )
        done = await self.registry.set_alias(move, change_of(request.context, request.reason))
        return governance_pb2.SetAliasResponse(
            previous_version=done.previous_version,
            version=done.version,
            decision=decision_pb(done.decision),
            audit_event_id=done.audit_event_id,
        )

    async def Transition(
        self, request: governance_pb2.TransitionRequest, context: Any
    ) -> governance_pb2.TransitionResponse:
        done = await self.registry.transition(
            ref_of(request.ref, "ref"),
            request.target_state,
            change_of(request.context, request.reason),
        )
        return governance_pb2.TransitionResponse(
            version=version_pb(done.version),
            previous_state=done.previous_state,  # type: ignore[arg-type]
            decision=decision_pb(done.decision),
            audit_event_id=done.audit_event_id,
        )

    async def AddLineage(
        self, request: governance_pb2.AddLineageRequest, context: Any
    ) -> governance_pb2.AddLineageResponse:
        edges = [edge_of(e, f"edges[{i}]") for i, e in enumerate(request.edges)]
        added = await self.registry.add_lineage(edges, change_of(request.context))
        return governance_pb2.AddLineageResponse(added_count=added)

    async def GetLineage(
        self, request: governance_pb2.GetLineageRequest, context: Any
    ) -> governance_pb2.GetLineageResponse:
        edges = await self.registry.lineage(
            node_of(request.node, "node"), request.direction, request.depth
        )
        return governance_pb2.GetLineageResponse(edges=[edge_pb(e) for e in edges])

    async def Evaluate(
        self, request: governance_pb2.EvaluateRequest, context: Any
    ) -> governance_pb2.EvaluateResponse:
        decided = await self.decisions.evaluate(
            request.path,
            plain_struct(request.input) if request.HasField("input") else None,
            tenant=request.context.tenant,
        )
        return governance_pb2.EvaluateResponse(
            decision=policy_decision_pb(
                decided, request.input if request.HasField("input") else None
            )
        )

    async def QueryAudit(
        self, request: governance_pb2.QueryAuditRequest, context: Any
    ) -> governance_pb2.QueryAuditResponse:
        page = await self.audit.query(audit_query(request))
        return governance_pb2.QueryAuditResponse(
            records=page.records, next_page_token=page.next_page_token
        )

    async def VerifyAudit(
        self, request: governance_pb2.VerifyAuditRequest, context: Any
    ) -> governance_pb2.VerifyAuditResponse:
        verified = await self.audit.verify(
            request.chain, request.from_sequence, request.to_sequence
        )
        return verification_pb(verified)

    async def GetAliasHistory(
        self, request: governance_pb2.GetAliasHistoryRequest, context: Any
    ) -> governance_pb2.GetAliasHistoryResponse:
        changes = await self.registry.alias_history(
            request.kind, request.name, request.alias or None
        )
        out = governance_pb2.GetAliasHistoryResponse(changes=[alias_change_pb(c) for c in changes])
        if request.HasField("at_time"):
            out.aliases_at.update(aliases_at(changes, request.at_time.ToMicroseconds()))
        return out

    async def GetComplianceReport(
        self, request: governance_pb2.GetComplianceReportRequest, context: Any
    ) -> governance_pb2.GetComplianceReportResponse:
        which = request.WhichOneof("subject")
        if which == "model":
            report = await self.compliance.for_model(ref_of(request.model, "model"))
        elif which == "route":
            report = await self.compliance.for_route(request.route)
        else:
            raise InvalidArgument("subject", "set model or route")
        return compliance_pb(report)


class GovernanceAdminServicer(governance_pb2_grpc.GovernanceAdminServiceServicer):
    def __init__(self, decisions: PolicyDecisions) -> None:
        self.decisions = decisions

    async def ReloadPolicies(
        self, request: governance_pb2.GovernanceAdminServiceReloadPoliciesRequest, context: Any
    ) -> governance_pb2.GovernanceAdminServiceReloadPoliciesResponse:
        return reload_pb(await self.decisions.reload(dry_run=request.dry_run))

    async def GetPolicyBundle(
        self, request: governance_pb2.GetPolicyBundleRequest, context: Any
    ) -> governance_pb2.GetPolicyBundleResponse:
        return bundle_pb(self.decisions.bundle(include_source=request.include_source))
