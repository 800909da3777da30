"""Wiring of the experiment service: stores, the domain's parts, servicers and tasks."""

from __future__ import annotations

from llmops.scheduler import Background
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from services.experiment.assignment import Assigner
from services.experiment.catalog import Catalog
from services.experiment.demo import seed_if_empty
from services.experiment.lifecycle import Lifecycle
from services.experiment.plugin import ExperimentSettings
from services.experiment.results import Analysis
from services.experiment.results_store import ClickHouseResults
from services.experiment.scheduling import Schedule
from services.experiment.servicer import ExperimentAdminServicer, ExperimentServicer
from services.experiment.sticky import MemoryStickyStore, RedisStickyStore, StickyStore
from services.experiment.store import ConfigStore, FileConfigStore, RedisConfigStore


def open_stores(ctx: ServiceContext[ExperimentSettings]) -> tuple[ConfigStore, StickyStore]:
    settings = ctx.settings
    if settings.store_backend(ctx.mode) == "redis":
        return (
            RedisConfigStore(ctx.backends.redis_url, settings.namespace),
            RedisStickyStore(ctx.backends.redis_url, settings.namespace),
        )
    state = ctx.backends.state_dir
    return (
        FileConfigStore(state / "experiments.json"),
        MemoryStickyStore(state / "experiments" / "sticky.sqlite3"),
    )


def create(ctx: ServiceContext[ExperimentSettings]) -> ServiceDefinition:
    settings = ctx.settings
    store, sticky = open_stores(ctx)
    catalog = Catalog(store)
    assigner = Assigner(
        catalog,
        ctx.events,
        sticky,
        holdout_bps=settings.holdout_bps,
        dedup_window_s=settings.exposure_dedup_window_s,
    )
    lifecycle = Lifecycle(catalog, ctx.events, outbox_min_age_s=settings.audit_outbox_min_age_s)
    analysis = Analysis(catalog, ClickHouseResults(ctx.backends.clickhouse))
    schedule = Schedule(catalog, lifecycle, analysis.bandit_rewards)
    tasks = schedule.tasks(settings.reload_interval_s, settings.bandit_check_interval_s)
    tasks.append(lifecycle.outbox.task(settings.audit_outbox_interval_s))
    if settings.seeds_demo(ctx.mode):  # after SERVING: seeding must not delay the start

        async def seed() -> None:
            await seed_if_empty(catalog, lifecycle)

        tasks.append(Background("demo_data", seed))

    async def load() -> None:
        await catalog.refresh()

    async def close() -> None:
        await sticky.close()
        await store.close()

    return ServiceDefinition(
        bindings=[
            binding(
                experiment_pb2,
                experiment_pb2_grpc,
                "ExperimentService",
                ExperimentServicer(catalog, assigner, analysis),
            ),
            binding(
                experiment_pb2,
                experiment_pb2_grpc,
                "ExperimentAdminService",
                ExperimentAdminServicer(catalog, lifecycle),
            ),
        ],
        tasks=tasks,
        on_start=[load],
        on_stop=[close],
    )
