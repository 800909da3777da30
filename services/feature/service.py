"""Wiring of the feature service: registry, stores, domain and servicers, built once at
start; the registry watch and the demo seeding run as runtime tasks."""

from __future__ import annotations

from llmops.scheduler import Background, Task
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import feature_pb2, feature_pb2_grpc
from services.feature.domain import FeatureMetrics, FeatureStore
from services.feature.offline import OfflineStore
from services.feature.online import EmbeddedOnlineStore, OnlineStore, RedisOnlineStore
from services.feature.plugin import FeatureSettings
from services.feature.registry import hot_registry
from services.feature.seed import seed_if_empty
from services.feature.servicer import FeatureAdminServicer, FeatureServicer


def open_online_store(ctx: ServiceContext[FeatureSettings]) -> OnlineStore:
    if ctx.settings.online_backend(ctx.mode) == "redis":
        return RedisOnlineStore(ctx.backends.redis_url, ctx.settings.namespace)
    return EmbeddedOnlineStore(ctx.backends.state_dir / "features" / "online.sqlite3")


def create(ctx: ServiceContext[FeatureSettings]) -> ServiceDefinition:
    cfg = ctx.settings
    registry = hot_registry(cfg.registry, audit=ctx.events)  # a bad registry stops start-up
    online = open_online_store(ctx)
    offline = OfflineStore(ctx.backends.clickhouse)  # opened on the first offline call
    store = FeatureStore(
        registry, online, offline, FeatureMetrics(ctx.metrics), namespace=cfg.namespace
    )

    async def seed() -> None:
        await seed_if_empty(store)

    tasks: list[Task] = [registry.watch(cfg.registry, cfg.reload_interval_s)]
    tasks += registry.load_audit()
    if cfg.seeds_demo(ctx.mode):  # after SERVING: seeding must not delay the mesh's start
        tasks.append(Background("demo_data", seed))

    async def on_stop() -> None:
        await online.close()

    return ServiceDefinition(
        bindings=[
            binding(feature_pb2, feature_pb2_grpc, "FeatureService", FeatureServicer(store)),
            binding(
                feature_pb2, feature_pb2_grpc, "FeatureAdminService", FeatureAdminServicer(store)
            ),
        ],
        tasks=tasks,
        on_stop=[on_stop],
    )
