"""The feedback service's view of other services: the guardrail service (typed text redacted
before storage) and the governance registry (exports registered as datasets)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc
import structlog

from llmops.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from llmops.v1 import (
    common_pb2,
    governance_pb2,
    governance_pb2_grpc,
    guardrail_pb2,
    guardrail_pb2_grpc,
)
from services.feedback.export import DatasetVersion
from services.feedback.intake import REDACTED_BLOCK

log = structlog.get_logger("llmops.feedback")

VALUE_TYPES = {
    "string": common_pb2.VALUE_TYPE_STRING,
    "int64": common_pb2.VALUE_TYPE_INT64,
    "double": common_pb2.VALUE_TYPE_DOUBLE,
}
"""An export column's Arrow type name as the registry's ValueType."""


class GuardrailTextGuard:
    """:class:`services.feedback.intake.TextGuard` over ``GuardrailService.CheckBatch``."""

    def __init__(self, stub: Any, policy: str) -> None:
        """``stub``: ``MeshClient.stub``; ``policy``: the guardrail policy for typed text."""
        self._stub = stub
        self._policy = policy

    async def redact(
        self, context: common_pb2.RequestContext, texts: Sequence[str], timeout_s: float
    ) -> list[str]:
        request = guardrail_pb2.CheckBatchRequest(
            context=context, direction=common_pb2.DIRECTION_INPUT, policy=self._policy,
            texts=texts, task="feedback",
        )  # fmt: skip
        try:
            reply = await self._stub(guardrail_pb2_grpc.GuardrailServiceStub).CheckBatch(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"guardrail: {exc.code().name}: {(exc.details() or '')[:200]}"
            ) from None
        if len(reply.results) != len(texts):
            raise Unavailable(f"guardrail answered {len(reply.results)} of {len(texts)} texts")
        out: list[str] = []
        for text, result in zip(texts, reply.results, strict=True):
            if result.verdict == common_pb2.VERDICT_REDACT:
                out.append(result.redacted_text)
            elif result.verdict == common_pb2.VERDICT_BLOCK:
                out.append(REDACTED_BLOCK)
            else:
                out.append(text)
        return out


class GovernanceDatasets:
    """Registers exports as DATASET versions (``GovernanceService.Register``) with lineage
    from the routes and models their predictions came from (``AddLineage``)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    async def register(
        self, context: common_pb2.RequestContext, name: str, task: str, digest: str, rows: int,
        columns: Sequence[tuple[str, str]], window: tuple[datetime, datetime],
        produced_by: str, sources: Sequence[tuple[str, str, int]], timeout_s: float,
    ) -> DatasetVersion:  # fmt: skip
        """:class:`services.feedback.export.DatasetRegistry` over the governance service."""
        stub = self._stub(governance_pb2_grpc.GovernanceServiceStub)
        info = governance_pb2.DatasetInfo(row_count=rows, produced_by=produced_by)
        info.window.start_time.FromDatetime(window[0])
        info.window.end_time.FromDatetime(window[1])
        for column, type_name in columns:
            info.schema[column] = VALUE_TYPES[type_name]
        request = governance_pb2.RegisterRequest(
            context=context, kind=governance_pb2.ARTIFACT_KIND_DATASET, name=name,
            description=f"Feedback export: {produced_by}", owner="feedback-service",
            # the file went to the caller: the URI names the export, the digest its content
            uri=f"feedback-export://{task}/{digest}",
            content_digest=f"sha256:{digest}",
            dataset=info,
        )  # fmt: skip
        try:
            reply = await stub.Register(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "governance") from None
        version = DatasetVersion(reply.version.name or name, int(reply.version.version))
        dataset = governance_pb2.LineageNode(
            artifact=governance_pb2.ArtifactRef(
                kind=governance_pb2.ARTIFACT_KIND_DATASET,
                name=version.name,
                version=version.version,
            )
        )
        edges = []
        for route in sorted({r for r, _, _ in sources if r}):
            edges.append((governance_pb2.LineageNode(route=route), f"route {route}"))
        for model, model_version in sorted({(m, v) for _, m, v in sources if m and v}):
            node = governance_pb2.LineageNode(
                artifact=governance_pb2.ArtifactRef(
                    kind=governance_pb2.ARTIFACT_KIND_MODEL, name=model, version=model_version
                )
            )
            edges.append((node, f"model {model} v{model_version}"))
        for upstream, what in edges:  # one by one: a model missing from the registry is skipped
            edge = governance_pb2.LineageEdge(
                upstream=upstream, downstream=dataset,
                relation=governance_pb2.LINEAGE_RELATION_DERIVED_FROM,
            )  # fmt: skip
            try:
                await stub.AddLineage(
                    governance_pb2.AddLineageRequest(context=context, edges=[edge]),
                    timeout=timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("export_lineage_skipped", source=what, error=exc.code().name)
        return version


def _mapped(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    detail = f"{what}: {exc.code().name}: {(exc.details() or '')[:200]}"
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument("register_as", (exc.details() or "")[:200])
    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(detail)
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(detail)
    return Unavailable(detail)
