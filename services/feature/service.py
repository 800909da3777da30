"""Wiring of the feature service: registry, stores and servicers, built once at start."""

from __future__ import annotations

import asyncio

import structlog

from llmops.config import Mode
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import feature_pb2, feature_pb2_grpc
from services.feature.domain import FeatureMetrics, FeatureStore, RegistryHolder
from services.feature.offline import OfflineStore
from services.feature.online import EmbeddedOnlineStore, OnlineStore, RedisOnlineStore
from services.feature.registry import load_registry
from services.feature.reload import RegistryReloader
from services.feature.seed import seed_if_empty
from services.feature.servicer import FeatureAdminServicer, FeatureServicer

log = structlog.get_logger("llmops.feature")


def _report_seed(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("demo_data_failed", error=repr(task.exception()))


def open_online_store(ctx: ServiceContext) -> OnlineStore:
    cfg = ctx.config
    if cfg.online_store == "redis":
        return RedisOnlineStore(cfg.backends.redis.url, cfg.features.namespace)
    return EmbeddedOnlineStore(ctx.backends.state_dir / "features" / "online.sqlite3")


def create(ctx: ServiceContext) -> ServiceDefinition:
    cfg = ctx.config.features
    holder = RegistryHolder(load_registry(cfg.registry))  # a bad registry stops start-up
    online = open_online_store(ctx)
    store = FeatureStore(holder, online, FeatureMetrics(ctx.metrics), namespace=cfg.namespace)
    offline = OfflineStore(ctx.backends.clickhouse)
    reloader = RegistryReloader(holder, list(cfg.registry), cfg.reload_interval_s)

    seed = cfg.demo_data == "on" or (cfg.demo_data == "auto" and ctx.config.mode is Mode.EMBEDDED)
    background: set[asyncio.Task[bool]] = set()

    async def on_start() -> None:
        reloader.start()
        if seed:  # after SERVING: seeding must not delay the mesh's start
            task = asyncio.get_running_loop().create_task(seed_if_empty(store, offline))
            background.add(task)
            task.add_done_callback(_report_seed)
            task.add_done_callback(background.discard)

    async def on_stop() -> None:
        for task in background:
            task.cancel()
        await reloader.stop()
        await online.close()

    return ServiceDefinition(
        name="feature",
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
        on_start=[on_start],
        on_stop=[on_stop],
    )
