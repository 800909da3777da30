"""Wiring of the inference service: routes in force (hot reload), engines, the generation
domain and the servicers."""

from __future__ import annotations

import asyncio

import structlog

from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import governance_pb2_grpc, inference_pb2, inference_pb2_grpc
from llmops.yamlfiles import HotReload
from services.inference.admin import RouteAdmin
from services.inference.config import Serving, load_serving
from services.inference.engines.llama_cpp import LlamaCppEngine
from services.inference.engines.registry import EngineRegistry
from services.inference.generation import Generation
from services.inference.metrics import InferenceMetrics
from services.inference.models import ModelVersions
from services.inference.pipeline import Pipeline
from services.inference.plugin import InferenceSettings
from services.inference.ports import GrpcPorts
from services.inference.servicer import InferenceAdminServicer, InferenceServicer
from services.inference.state import (
    Budgets,
    MemoryBudgets,
    MemoryCache,
    RedisState,
    ResponseCache,
)

log = structlog.get_logger("llmops.inference")


def create(ctx: ServiceContext[InferenceSettings]) -> ServiceDefinition:
    settings = ctx.settings
    route_paths, task_paths = list(settings.routes), list(settings.tasks)
    paths = route_paths + task_paths
    # The first load happens here: a bad routes or tasks file stops start-up.
    serving = HotReload[Serving](
        "routes",
        lambda: load_serving(route_paths, task_paths),
        lambda s: s.revision,
        watched=paths,
        audit=ctx.events,
        resource_type="route",
    )
    engines = EngineRegistry()
    engines.update(serving.current.routes.engines)
    try:
        governance = ctx.clients.stub(governance_pb2_grpc.GovernanceServiceStub).GetArtifact
    except KeyError:  # no governance service in this mesh: versions come from pins only
        governance = None
    versions = ModelVersions(governance, settings.alias_cache_s)
    ports = GrpcPorts(ctx.clients.stub)
    cache: ResponseCache
    budgets: Budgets
    redis_state: RedisState | None = None
    if settings.state_backend(ctx.mode) == "redis":
        redis_state = RedisState(ctx.backends.redis_url)
        cache = budgets = redis_state
    else:
        cache, budgets = MemoryCache(settings.cache_max_entries), MemoryBudgets()
    metrics = InferenceMetrics(ctx.metrics)
    generation = Generation(
        serving,
        engines,
        versions,
        ctx.events,
        metrics,
        default_max_tokens=settings.default_max_tokens,
        log_payloads=settings.log_payloads,
        guard=ports,
        breaker_failures=settings.breaker_failures,
        breaker_cooldown_s=settings.breaker_cooldown_s,
        cache=cache,
        budgets=budgets,
    )
    admin = RouteAdmin(serving, engines, versions)
    pipeline = Pipeline(
        serving,
        generation,
        ports,
        ctx.events,
        prompt_cache_s=settings.prompt_cache_s,
        allow_debug=settings.debug_allowed(ctx.mode),
        metrics=metrics,
    )

    async def preload() -> None:
        if not settings.preloads():
            return
        for name, _, engine in engines.items():
            if isinstance(engine, LlamaCppEngine):
                try:
                    await asyncio.to_thread(engine.load)
                except Exception as exc:  # the route answers UNAVAILABLE and says why
                    log.error("engine_load_failed", engine=name, error=str(exc))

    async def close() -> None:
        await asyncio.gather(*(engine.close() for _, _, engine in engines.items()))
        if redis_state is not None:
            await redis_state.close()

    watch = serving.watch(paths, settings.reload_interval_s)
    return ServiceDefinition(
        bindings=[
            binding(
                inference_pb2,
                inference_pb2_grpc,
                "InferenceService",
                InferenceServicer(generation, pipeline),
            ),
            binding(
                inference_pb2,
                inference_pb2_grpc,
                "InferenceAdminService",
                InferenceAdminServicer(admin),
            ),
        ],
        tasks=[watch, *serving.load_audit()],
        on_start=[preload],
        on_stop=[close],
    )
