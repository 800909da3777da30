"""What a task run asks of the other services, as one small protocol, and its gRPC
implementation through the runtime's typed clients (:class:`llmops.clients.MeshClient`:
deadline propagation, request ids, retries on UNAVAILABLE only).

The pipeline sees plain values: features as ``{name: python value}``, passages with their
text and metadata, a guardrail decision with its verdict, text and summary.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from llmops.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from llmops.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    feature_pb2,
    feature_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
    guardrail_pb2,
    guardrail_pb2_grpc,
)


@dataclass(frozen=True, slots=True)
class Variant:
    experiment_id: str
    variant: str
    route: str = ""
    prompt_name: str = ""
    prompt_version: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    version: int
    template: str
    variables: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: int
    """common_pb2.Verdict."""
    text: str
    """The text after redaction (the input when nothing was redacted)."""
    block_message: str
    summary: common_pb2.GuardrailSummary


@dataclass(frozen=True, slots=True)
class Released:
    """One answer of a streaming check: text cleared for the client; the last one also says
    how it ended."""

    text: str
    final: bool = False
    verdict: int = 0
    block_message: str = ""
    summary: common_pb2.GuardrailSummary | None = None


class StreamCheck(Protocol):
    """An open streaming check (GuardrailService.CheckStream)."""

    async def write(self, chunk: str) -> None: ...

    async def done(self) -> None: ...

    def released(self) -> AsyncIterator[Released]: ...

    def cancel(self) -> None: ...


class MeshPorts(Protocol):
    async def assign(
        self, context: common_pb2.RequestContext, unit_type: str, unit_id: str,
        experiment_id: str, timeout_s: float,
    ) -> Variant | None: ...  # fmt: skip

    async def features(
        self, service: str, refs: Sequence[str], entity: str, key: str, value: common_pb2.Value,
        timeout_s: float,
    ) -> dict[str, Any]: ...  # fmt: skip

    async def features_batch(
        self, service: str, entity: str, key: str, values: Sequence[common_pb2.Value],
        timeout_s: float,
    ) -> list[dict[str, Any]]: ...  # fmt: skip

    async def search(
        self, collection: str, text: str, k: int, equals: Mapping[str, str], text_field: str,
        timeout_s: float,
    ) -> list[Passage]: ...  # fmt: skip

    async def prompt(self, name: str, version: int, alias: str, timeout_s: float) -> Prompt: ...

    async def check(
        self, context: common_pb2.RequestContext, direction: int, policy: str, text: str,
        facts: Sequence[tuple[str, str]], route: str, task: str, timeout_s: float,
    ) -> Verdict: ...  # fmt: skip

    async def check_batch(
        self, context: common_pb2.RequestContext, direction: int, policy: str,
        texts: Sequence[str], route: str, task: str, timeout_s: float,
    ) -> list[Verdict]: ...  # fmt: skip

    async def stream_check(
        self, context: common_pb2.RequestContext, policy: str, route: str
    ) -> StreamCheck: ...


def python_value(v: common_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    raw = getattr(v, kind)
    if kind.endswith("_list_value") or kind == "float_vector_value":
        return list(raw.values)
    if kind == "timestamp_value":
        return raw.ToDatetime().isoformat()
    return raw


def _mapped(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    """A downstream failure as the platform's error (the step's failure policy decides)."""
    code = exc.code()
    detail = f"{what}: {code.name}: {(exc.details() or '')[:200]}"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(what, (exc.details() or "")[:200])
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(detail)
    return Unavailable(detail)


def _verdict(direction: int, text: str, reply: guardrail_pb2.CheckResponse) -> Verdict:
    summary = common_pb2.GuardrailSummary(
        direction=direction,  # type: ignore[arg-type]
        policy=reply.policy,
        policy_version=reply.policy_version,
        verdict=reply.verdict,
        finding_types=sorted({f.type for f in reply.findings}),
        latency_us=reply.latency_us,
        decision_id=reply.decision_id,
    )
    redacted = reply.redacted_text if reply.verdict == common_pb2.VERDICT_REDACT else text
    return Verdict(reply.verdict, redacted, reply.block_message, summary)


class GrpcPorts:
    """:class:`MeshPorts` over the mesh's typed clients."""

    def __init__(self, stub: Any) -> None:
        """``stub``: ``MeshClient.stub`` (builds one client per generated stub class)."""
        self._stub = stub

    async def assign(
        self, context: common_pb2.RequestContext, unit_type: str, unit_id: str,
        experiment_id: str, timeout_s: float,
    ) -> Variant | None:  # fmt: skip
        try:
            reply = await self._stub(experiment_pb2_grpc.ExperimentServiceStub).Assign(
                experiment_pb2.AssignRequest(
                    context=context, unit_type=unit_type, unit_id=unit_id,
                    experiment_ids=[experiment_id],
                ),
                timeout=timeout_s,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "experiment") from None
        for a in reply.assignments:
            if a.experiment_id == experiment_id:
                p = a.payload
                return Variant(
                    experiment_id=a.experiment_id,
                    variant=a.variant,
                    route=p.model_route,
                    prompt_name=p.prompt.name,
                    prompt_version=int(p.prompt.version),
                    params={k: python_value(v) for k, v in p.params.items()},
                )
        return None

    async def features(
        self, service: str, refs: Sequence[str], entity: str, key: str, value: common_pb2.Value,
        timeout_s: float,
    ) -> dict[str, Any]:  # fmt: skip
        request = feature_pb2.GetOnlineFeaturesRequest()
        if service:
            request.feature_service = service
        for ref in refs:
            view, _, name = ref.partition(":")
            request.feature_refs.refs.add(feature_view=view, name=name)
        request.entity_keys.add(entity=entity).columns.add(name=key, value=value)
        try:
            reply = await self._stub(feature_pb2_grpc.FeatureServiceStub).GetOnlineFeatures(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "features") from None
        if not reply.rows:
            return {}
        out: dict[str, Any] = {}
        for ref, fv in zip(reply.features, reply.rows[0].values, strict=False):
            if fv.status == feature_pb2.FEATURE_STATUS_PRESENT:
                out[ref.name] = python_value(fv.value)
        return out

    async def features_batch(
        self, service: str, entity: str, key: str, values: Sequence[common_pb2.Value],
        timeout_s: float,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """One row of ``view:name`` features per key value, in ONE call (a ranking page)."""
        request = feature_pb2.GetOnlineFeaturesRequest(feature_service=service)
        for value in values:
            request.entity_keys.add(entity=entity).columns.add(name=key, value=value)
        try:
            reply = await self._stub(feature_pb2_grpc.FeatureServiceStub).GetOnlineFeatures(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "features") from None
        refs = [f"{r.feature_view}:{r.name}" for r in reply.features]
        return [
            {
                ref: python_value(fv.value)
                for ref, fv in zip(refs, row.values, strict=False)
                if fv.status == feature_pb2.FEATURE_STATUS_PRESENT
            }
            for row in reply.rows
        ]

    async def search(
        self, collection: str, text: str, k: int, equals: Mapping[str, str], text_field: str,
        timeout_s: float,
    ) -> list[Passage]:  # fmt: skip
        request = embedding_pb2.SearchRequest(
            collection=collection, text=text, k=k, include_metadata=True
        )
        if equals:
            conditions = [
                common_pb2.Filter(
                    condition=common_pb2.FieldCondition(
                        field=name,
                        operator=common_pb2.FieldCondition.OPERATOR_EQ,
                        value=common_pb2.Value(string_value=value),
                    )
                )
                for name, value in equals.items()
            ]
            request.filter.all_of.filters.extend(conditions)
        try:
            reply = await self._stub(embedding_pb2_grpc.EmbeddingServiceStub).Search(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "retrieval") from None
        passages = []
        for h in reply.hits:
            metadata = {k: python_value(v) for k, v in h.metadata.items()}
            text_value = metadata.pop(text_field, "")
            passages.append(Passage(h.id, str(text_value or ""), h.score, metadata))
        return passages

    async def prompt(self, name: str, version: int, alias: str, timeout_s: float) -> Prompt:
        ref = governance_pb2.ArtifactRef(
            kind=governance_pb2.ARTIFACT_KIND_PROMPT, name=name, version=version,
            alias="" if version else alias,
        )  # fmt: skip
        try:
            reply = await self._stub(governance_pb2_grpc.GovernanceServiceStub).GetArtifact(
                governance_pb2.GetArtifactRequest(ref=ref), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, f"prompt {name}") from None
        template = reply.version.prompt
        return Prompt(
            name=name,
            version=int(reply.version.version),
            template=template.template,
            variables=tuple(sorted(template.variables)),
        )

    async def check(
        self, context: common_pb2.RequestContext, direction: int, policy: str, text: str,
        facts: Sequence[tuple[str, str]], route: str, task: str, timeout_s: float,
    ) -> Verdict:  # fmt: skip
        request = guardrail_pb2.CheckRequest(
            context=context, direction=direction, policy=policy, text=text,  # type: ignore[arg-type]
            facts=[guardrail_pb2.Fact(id=i, text=t) for i, t in facts], route=route, task=task,
        )  # fmt: skip
        try:
            reply = await self._stub(guardrail_pb2_grpc.GuardrailServiceStub).Check(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "guardrail") from None
        return _verdict(direction, text, reply)

    async def check_batch(
        self, context: common_pb2.RequestContext, direction: int, policy: str,
        texts: Sequence[str], route: str, task: str, timeout_s: float,
    ) -> list[Verdict]:  # fmt: skip
        """Every text in one ``CheckBatch`` (one hop, whatever the count)."""
        request = guardrail_pb2.CheckBatchRequest(
            context=context, direction=direction, policy=policy, texts=texts,  # type: ignore[arg-type]
            route=route, task=task,
        )  # fmt: skip
        try:
            reply = await self._stub(guardrail_pb2_grpc.GuardrailServiceStub).CheckBatch(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "guardrail") from None
        if len(reply.results) != len(texts):
            raise Unavailable(
                f"guardrail answered {len(reply.results)} results for {len(texts)} texts"
            )
        return [_verdict(direction, t, r) for t, r in zip(texts, reply.results, strict=True)]

    async def stream_check(
        self, context: common_pb2.RequestContext, policy: str, route: str
    ) -> StreamCheck:
        call = self._stub(guardrail_pb2_grpc.GuardrailServiceStub).CheckStream()
        config = guardrail_pb2.CheckStreamConfig(
            context=context, direction=common_pb2.DIRECTION_OUTPUT, policy=policy, route=route
        )
        try:
            await call.write(guardrail_pb2.CheckStreamRequest(config=config))
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "guardrail stream") from None
        return _GrpcStreamCheck(call)


class _GrpcStreamCheck:
    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, chunk: str) -> None:
        try:
            await self._call.write(guardrail_pb2.CheckStreamRequest(chunk=chunk))
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "guardrail stream") from None
        except grpc.aio.UsageError:  # the server ended the stream (a BLOCK): stop writing
            return

    async def done(self) -> None:
        with contextlib.suppress(grpc.aio.UsageError):
            await self._call.done_writing()

    async def released(self) -> AsyncIterator[Released]:
        try:
            async for r in self._call:
                summary = None
                if r.final:
                    summary = common_pb2.GuardrailSummary(
                        direction=common_pb2.DIRECTION_OUTPUT, policy=r.policy,
                        policy_version=r.policy_version, verdict=r.verdict,
                        finding_types=sorted({f.type for f in r.findings}),
                        latency_us=r.latency_us, decision_id=r.decision_id,
                    )  # fmt: skip
                yield Released(r.released_text, r.final, r.verdict, r.block_message, summary)
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, "guardrail stream") from None

    def cancel(self) -> None:
        self._call.cancel()
