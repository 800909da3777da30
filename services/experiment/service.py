"""Wiring of the experiment service: config store, domain and servicers, built once."""

from __future__ import annotations

from llmops.server import Binding, ServiceContext, ServiceDefinition
from llmops.v1 import events_pb2, experiment_pb2, experiment_pb2_grpc
from services.experiment.domain import Experiments
from services.experiment.servicer import ExperimentAdminServicer, ExperimentServicer
from services.experiment.store import ConfigStore, FileConfigStore, RedisConfigStore


def _binding(name: str, servicer: object) -> Binding:
    return Binding(
        descriptor=experiment_pb2.DESCRIPTOR.services_by_name[name],
        add_to_server=getattr(experiment_pb2_grpc, f"add_{name}Servicer_to_server"),
        servicer=servicer,
    )


def create(ctx: ServiceContext) -> ServiceDefinition:
    cfg = ctx.config
    store: ConfigStore
    if cfg.experiment_store == "redis":
        store = RedisConfigStore(cfg.backends.redis.url, cfg.experiments.namespace)
    else:
        store = FileConfigStore(ctx.backends.state_dir / "experiments.json")

    def publish(envelope: events_pb2.EventEnvelope) -> None:
        ctx.backends.publisher().publish(envelope)

    experiments = Experiments(
        store,
        publish,
        holdout_bps=cfg.experiments.holdout_bps,
        dedup_window_s=cfg.experiments.exposure_dedup_window_s,
        clickhouse=ctx.backends.clickhouse,
    )

    async def on_start() -> None:
        await experiments.refresh()
        experiments.start_polling(cfg.experiments.reload_interval_s)

    async def on_stop() -> None:
        await experiments.stop_polling()
        await store.close()

    return ServiceDefinition(
        name="experiment",
        bindings=[
            _binding("ExperimentService", ExperimentServicer(experiments)),
            _binding("ExperimentAdminService", ExperimentAdminServicer(experiments)),
        ],
        on_start=[on_start],
        on_stop=[on_stop],
    )
