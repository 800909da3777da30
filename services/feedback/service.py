"""Wiring of the feedback service: the signal registry (hot reload), idempotency keys, the
guardrail for typed text, the intake and the servicers."""

from __future__ import annotations

import asyncio
from typing import Any

from llmops.errors import FailedPrecondition
from llmops.scheduler import Background, Periodic
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import feedback_pb2, feedback_pb2_grpc
from llmops.yamlfiles import HotReload
from services.feedback.demo import seed_day
from services.feedback.export import Acceptance, Exporter, Exports
from services.feedback.idempotency import KeyStore, LocalKeyStore, RedisKeyStore
from services.feedback.intake import Intake
from services.feedback.label_store import SqlLabelStore
from services.feedback.labelling import ClickHouseCandidates, Labelling
from services.feedback.metrics import FeedbackMetrics
from services.feedback.plugin import FeedbackSettings
from services.feedback.ports import GovernanceDatasets, GuardrailTextGuard
from services.feedback.rollup import StatsRollup
from services.feedback.servicer import FeedbackAdminServicer, FeedbackServicer
from services.feedback.signals import SignalTable, load_signals, revision_of
from services.feedback.stats import ClickHouseStatsStore, RollupStatsStore


def open_keys(ctx: ServiceContext[FeedbackSettings]) -> KeyStore:
    settings = ctx.settings
    if settings.key_backend(ctx.mode) == "redis":
        return RedisKeyStore(ctx.backends.redis_url, settings.namespace, settings.key_ttl_s)
    path = ctx.backends.state_dir / "feedback" / "keys.sqlite3"
    return LocalKeyStore(path, settings.key_ttl_s, settings.local_max_keys)


def open_labels(ctx: ServiceContext[FeedbackSettings]) -> SqlLabelStore:
    settings = ctx.settings
    if settings.label_backend(ctx.mode) == "postgres":
        if not settings.labels_dsn:
            raise FailedPrecondition(
                "feedback.labels_dsn is required for the postgres label store "
                "(e.g. postgresql+psycopg://llmops@db:5432/llmops)"
            )
        return SqlLabelStore(settings.labels_dsn)
    return SqlLabelStore(f"sqlite:///{ctx.backends.state_dir / 'feedback' / 'labels.sqlite3'}")


def create(ctx: ServiceContext[FeedbackSettings]) -> ServiceDefinition:
    settings = ctx.settings
    paths = list(settings.signals)
    # The first load happens here: a bad registry file stops start-up.
    signals = HotReload[SignalTable](
        "feedback_signals",
        lambda: load_signals(paths),
        revision_of,
        watched=paths,
        audit=ctx.events,
        resource_type="feedback_registry",
    )
    keys = open_keys(ctx)
    guard = (
        GuardrailTextGuard(ctx.clients.stub, settings.text_policy) if settings.text_policy else None
    )
    intake = Intake(
        signals,
        keys,
        ctx.events,
        guard,
        FeedbackMetrics(ctx.metrics),
        durable_timeout_s=settings.durable_timeout_s,
        guard_timeout_s=settings.guard_timeout_s,
    )

    labels = open_labels(ctx)
    labelling = Labelling(
        signals,
        labels,
        ClickHouseCandidates(ctx.backends.clickhouse),
        intake,
        settle_s=settings.queue_settle_s,
    )
    tasks: list[Any] = [signals.watch(paths, settings.reload_interval_s), *signals.load_audit()]
    if settings.queue_fill_interval_s > 0:

        async def fill() -> None:
            await labelling.fill()

        tasks.append(Periodic("label_queue_fill", settings.queue_fill_interval_s, fill))

    servicer = FeedbackServicer(
        intake,
        Exports(Exporter(ctx.backends.clickhouse), GovernanceDatasets(ctx.clients.stub)),
        Acceptance(
            tuple(settings.sft_accept_labels),
            tuple(settings.sft_reject_labels),
            settings.sft_min_rating,
        ),
    )

    stats = (
        RollupStatsStore(ctx.backends.clickhouse)
        if settings.stats_rollup
        else ClickHouseStatsStore(ctx.backends.clickhouse)
    )
    if settings.stats_refresh_interval_s > 0:
        rollup = StatsRollup(ctx.backends.clickhouse)

        async def refresh() -> None:
            await asyncio.to_thread(rollup.refresh)

        tasks.append(Periodic("feedback_stats_rollup", settings.stats_refresh_interval_s, refresh))
    if settings.seeds_demo(ctx.mode):  # after SERVING: the guardrail may still be starting
        state_dir = ctx.backends.state_dir

        async def seed() -> None:
            await seed_day(state_dir, ctx.events.publish_durable, intake)

        tasks.append(Background("demo_day", seed))

    async def close() -> None:
        await keys.close()
        await labels.close()

    return ServiceDefinition(
        bindings=[
            binding(feedback_pb2, feedback_pb2_grpc, "FeedbackService", servicer),
            binding(
                feedback_pb2,
                feedback_pb2_grpc,
                "FeedbackAdminService",
                FeedbackAdminServicer(stats, labelling),
            ),
        ],
        tasks=tasks,
        on_stop=[close],
    )
