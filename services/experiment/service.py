"""Wiring of the experiment service: config store, domain and servicers, built once."""

from __future__ import annotations

import asyncio

import structlog

from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from services.experiment import results
from services.experiment.domain import Experiments
from services.experiment.plugin import ExperimentSettings
from services.experiment.servicer import ExperimentAdminServicer, ExperimentServicer
from services.experiment.sticky import MemoryStickyStore, RedisStickyStore, StickyStore
from services.experiment.store import ConfigStore, FileConfigStore, RedisConfigStore

log = structlog.get_logger("llmops.experiment")


def create(ctx: ServiceContext[ExperimentSettings]) -> ServiceDefinition:
    settings = ctx.settings
    store: ConfigStore
    sticky: StickyStore
    if settings.store_backend(ctx.mode) == "redis":
        store = RedisConfigStore(ctx.backends.redis_url, settings.namespace)
        sticky = RedisStickyStore(ctx.backends.redis_url, settings.namespace)
    else:
        store = FileConfigStore(ctx.backends.state_dir / "experiments.json")
        sticky = MemoryStickyStore(ctx.backends.state_dir / "experiments" / "sticky.sqlite3")

    publish = ctx.events.publish

    experiments = Experiments(
        store,
        publish,
        holdout_bps=settings.holdout_bps,
        dedup_window_s=settings.exposure_dedup_window_s,
        clickhouse=ctx.backends.clickhouse,
        sticky=sticky,
    )

    async def rewards(exp: experiment_pb2.Experiment) -> tuple[dict[str, int], dict[str, int]]:
        return await asyncio.to_thread(results.bandit_rewards, ctx.backends.clickhouse(), exp)

    async def maintenance_loop() -> None:
        while True:  # end_time stops; bandits re-weighted when their update_interval passed
            await asyncio.sleep(settings.bandit_check_interval_s)
            try:
                stopped = await experiments.stop_expired()
                if stopped:
                    log.info("experiments_ended", experiments=stopped)
                updated = await experiments.update_bandits(rewards)
                if updated:
                    log.info("bandits_reweighted", experiments=updated)
            except Exception as exc:  # ClickHouse or the store down: try again next round
                log.warning("experiment_maintenance_failed", error=str(exc))

    tasks: list[asyncio.Task[None]] = []

    async def on_start() -> None:
        await experiments.refresh()
        experiments.start_polling(settings.reload_interval_s)
        if settings.bandit_check_interval_s > 0:
            tasks.append(asyncio.get_running_loop().create_task(maintenance_loop()))

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
        await experiments.stop_polling()
        await sticky.close()
        await store.close()

    return ServiceDefinition(
        bindings=[
            binding(
                experiment_pb2,
                experiment_pb2_grpc,
                "ExperimentService",
                ExperimentServicer(experiments),
            ),
            binding(
                experiment_pb2,
                experiment_pb2_grpc,
                "ExperimentAdminService",
                ExperimentAdminServicer(experiments),
            ),
        ],
        on_start=[on_start],
        on_stop=[on_stop],
    )
