"""Wiring of the feature service: registry, stores and servicers, built once at start."""

from __future__ import annotations

import structlog

from llmops.scheduler import Background, Task
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import feature_pb2, feature_pb2_grpc
from services.feature.domain import FeatureMetrics, FeatureStore, RegistryHolder
from services.feature.offline import OfflineStore
from services.feature.online import EmbeddedOnlineStore, OnlineStore, RedisOnlineStore
from services.feature.plugin import FeatureSettings
from services.feature.registry import load_registry
from services.feature.reload import RegistryReloader
from services.feature.seed import seed_if_empty
from services.feature.servicer import FeatureAdminServicer, FeatureServicer

log = structlog.get_logger("llmops.feature")


def open_online_store(ctx: ServiceContext[FeatureSettings]) -> OnlineStore:
    if ctx.settings.online_backend(ctx.mode) == "redis":
        return RedisOnlineStore(ctx.backends.redis_url, ctx.settings.namespace)
    return EmbeddedOnlineStore(ctx.backends.state_dir / "features" / "online.sqlite3")


def create(ctx: ServiceContext[FeatureSettings]) -> ServiceDefinition:
    cfg = ctx.settings
    holder = RegistryHolder(load_registry(cfg.registry))  # a bad registry stops start-up
    online = open_online_store(ctx)
    store = FeatureStore(holder, online, FeatureMetrics(ctx.metrics), namespace=cfg.namespace)
    offline = OfflineStore(ctx.backends.clickhouse)
    reloader = RegistryReloader(holder, list(cfg.registry), cfg.reload_interval_s)

    async def seed() -> None:
        await seed_if_empty(store, offline)

    tasks: list[Task] = []
    if cfg.seeds_demo(ctx.mode):  # after SERVING: seeding must not delay the mesh's start
        tasks.append(Background("demo_data", seed))

    async def on_start() -> None:
        reloader.start()

    async def on_stop() -> None:
        await reloader.stop()
        await online.close()

    return ServiceDefinition(
        bindings=[
            binding(
                feature_pb2, feature_pb2_grpc, "FeatureService", FeatureServicer(store, offline)
            ),
            binding(
                feature_pb2,
                feature_pb2_grpc,
                "FeatureAdminService",
                FeatureAdminServicer(store, reloader),
            ),
        ],
        tasks=tasks,
        on_start=[on_start],
        on_stop=[on_stop],
    )
