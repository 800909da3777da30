"""gRPC servicers of the inference service: protobuf <-> :mod:`services.inference.generation`.

Nothing here decides: requests become :class:`GenerateCall`\\ s, results become responses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import duration_pb2, json_format

from llmops.errors import InvalidArgument, PermissionDenied
from llmops.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.admin import BACKENDS, RouteAdmin
from services.inference.engine import ChatTurn, Role
from services.inference.generation import (
    FINISH,
    GenerateCall,
    Generated,
    Generation,
    StreamStart,
    StreamText,
    money,
)
from services.inference.pipeline import Pipeline, RunCall
from services.inference.ports import python_value
from services.inference.routes import SamplingSpec

ROLES: dict[int, Role] = {
    inference_pb2.CHAT_ROLE_SYSTEM: "system",
    inference_pb2.CHAT_ROLE_USER: "user",
    inference_pb2.CHAT_ROLE_ASSISTANT: "assistant",
    inference_pb2.CHAT_ROLE_TOOL: "tool",
}
_OPTIONAL = (
    "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "beam_width", "length_penalty", "min_tokens",
)  # fmt: skip


def sampling_fields(p: inference_pb2.SamplingParams) -> dict[str, Any]:
    """The fields the caller set (proto3 ``optional``), under their contract names."""
    fields: dict[str, Any] = {n: getattr(p, n) for n in _OPTIONAL if p.HasField(n)}  # type: ignore[arg-type]
    if p.stop_words:
        fields["stop_words"] = list(p.stop_words)
    return fields


def sampling_proto(s: SamplingSpec) -> inference_pb2.SamplingParams:
    out = inference_pb2.SamplingParams(stop_words=s.stop)
    for name in _OPTIONAL:
        value = getattr(s, name, None)
        if value is not None:
            setattr(out, name, value)
    return out


def generate_call(
    m: inference_pb2.GenerateRequest | inference_pb2.GenerateStreamRequest,
) -> GenerateCall:
    kind = m.WhichOneof("input")
    messages: tuple[ChatTurn, ...] | None = None
    if kind == "messages":
        turns = []
        for i, message in enumerate(m.messages.messages):
            role = ROLES.get(message.role)
            if role is None:
                raise InvalidArgument(f"messages.messages[{i}].role", "must be set")
            turns.append(ChatTurn(role, message.content))
        messages = tuple(turns)
    schema = json_format.MessageToDict(m.response_schema) if m.HasField("response_schema") else None
    if m.guardrails.skip:
        raise PermissionDenied(
            "guardrails.skip: not allowed for this caller (no governance policy grants it)"
        )
    template = None
    if kind == "prompt_template":
        ref = m.prompt_template
        if not ref.name:
            raise InvalidArgument("prompt_template.name", "required")
        template = (ref.name, int(ref.version), ref.alias)
    return GenerateCall(
        route=m.route,
        template=template,
        variables={k: python_value(v) for k, v in m.variables.items()},
        prompt=m.prompt if kind == "prompt" else None,
        messages=messages,
        sampling=sampling_fields(m.sampling),
        context=m.context,
        response_schema=schema,
        skip_cache=m.skip_cache,
        input_policy=m.guardrails.input_policy,
        output_policy=m.guardrails.output_policy,
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, generation: Generation, pipeline: Pipeline) -> None:
        self.generation = generation
        self.pipeline = pipeline

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: Any
    ) -> inference_pb2.GenerateResponse:
        r = await self.generation.generate(generate_call(request))
        return inference_pb2.GenerateResponse(
            text=r.text,
            finish_reason=FINISH[r.finish],  # type: ignore[arg-type]
            usage=r.usage,
            model=r.model,
            route_target_index=r.target_index,
            stages=r.stages,
            request_id=r.request_id,
            ai_generated=True,
            guardrails=r.guardrails,
            block_message=r.block_message,
            cache_hit=r.cache_hit,
        )

    async def GenerateStream(
        self, request: inference_pb2.GenerateStreamRequest, context: Any
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        index = 0
        async for item in self.generation.stream(generate_call(request)):
            if isinstance(item, StreamStart):
                out = inference_pb2.GenerateStreamResponse(
                    index=index,
                    model=item.model,
                    request_id=item.request_id,
                    route_target_index=item.target_index,
                )
            elif isinstance(item, StreamText):
                out = inference_pb2.GenerateStreamResponse(index=index, delta=item.text)
            else:
                out = _last_chunk(index, item)
            yield out
            index += 1

    async def Run(
        self, request: inference_pb2.RunRequest, context: Any
    ) -> inference_pb2.RunResponse:
        r = await self.pipeline.run(
            RunCall(
                task=request.task,
                inputs=dict(request.inputs),
                context=request.context,
                debug=request.debug,
                skip_cache=request.skip_cache,
            )
        )
        state = r.state
        out = inference_pb2.RunResponse(
            task=r.task,
            experiment_id=state.variant.experiment_id if state.variant else "",
            variant=state.variant.variant if state.variant else "",
            model=state.model,
            route=state.route,
            guardrails=state.guardrails,
            stages=r.stages,
            total_latency_us=r.total_us,
            overhead_us=max(0, r.total_us - state.model_us),
            usage=state.usage,
            cache_hit=state.cache_hit,
            finish_reason=state.finish,  # type: ignore[arg-type]
            feature_vector_hash=r.feature_vector_hash,
            prediction_id=r.prediction_id,
            request_id=r.request_id,
            ai_generated=r.output is not None and state.generative,
            block_message=state.blocked or "",
        )
        if state.prompt is not None:
            out.prompt.name, out.prompt.version = state.prompt.name, state.prompt.version
        if r.output is not None:
            out.output.CopyFrom(r.output)
        if r.structured is not None:
            out.structured_output.update(r.structured)
        if r.debug is not None:
            out.debug.update(json.loads(json.dumps(r.debug, default=str)))
        return out


def _last_chunk(index: int, r: Generated) -> inference_pb2.GenerateStreamResponse:
    return inference_pb2.GenerateStreamResponse(
        index=index,
        finish_reason=FINISH[r.finish],  # type: ignore[arg-type]
        usage=r.usage,
        stages=r.stages,
        guardrails=r.guardrails,
        retract=r.retract,
        block_message=r.block_message,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class InferenceAdminServicer(inference_pb2_grpc.InferenceAdminServiceServicer):
    def __init__(self, admin: RouteAdmin) -> None:
        self.admin = admin

    def _route(self, name: str) -> inference_pb2.Route:
        table = self.admin.table
        spec = table.route(name, "name")
        route = inference_pb2.Route(
            name=spec.name,
            description=spec.description,
            default_sampling=sampling_proto(spec.sampling),
            input_policy=spec.input_policy,
            output_policy=spec.output_policy,
            cache_ttl=_duration(spec.cache_ttl_s),
            revision=self.admin.revision,
        )
        for t in spec.targets:
            engine = table.engines[t.engine]
            price = t.price_per_million
            route.targets.append(
                inference_pb2.RouteTarget(
                    model=common_pb2.ModelRef(name=t.model, version=t.version or 0, alias=t.alias),
                    backend=BACKENDS[engine.backend],
                    endpoint=engine.base_url,
                    timeout=_duration(t.timeout_s),
                    prompt_price_per_million=money(price.prompt, price.currency),
                    completion_price_per_million=money(price.completion, price.currency),
                )
            )
        return route

    async def ListRoutes(
        self, request: inference_pb2.ListRoutesRequest, context: Any
    ) -> inference_pb2.ListRoutesResponse:
        names, token = self.admin.page(
            sorted(self.admin.table.routes), request.page_size, request.page_token
        )
        return inference_pb2.ListRoutesResponse(
            routes=[self._route(n) for n in names], next_page_token=token
        )

    async def GetRoute(
        self, request: inference_pb2.GetRouteRequest, context: Any
    ) -> inference_pb2.GetRouteResponse:
        return inference_pb2.GetRouteResponse(route=self._route(request.name))

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Any
    ) -> inference_pb2.ListModelsResponse:
        models = await self.admin.models()
        page, token = self.admin.page(models, request.page_size, request.page_token)
        return inference_pb2.ListModelsResponse(models=page, next_page_token=token)

    async def ReloadRoutes(
        self, request: inference_pb2.ReloadRoutesRequest, context: Any
    ) -> inference_pb2.ReloadRoutesResponse:
        r = await self.admin.reload(dry_run=request.dry_run)
        return inference_pb2.ReloadRoutesResponse(
            previous_revision=r.previous_revision,
            revision=r.revision,
            route_count=r.route_count,
            task_count=r.task_count,
            changed_routes=r.changed,
        )
