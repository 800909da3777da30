"""Wiring of the governance service: the registry store, the policy engine, the domain,
servicers and tasks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import structlog

from llmops.errors import FailedPrecondition
from llmops.policy.engine import PolicyEngine
from llmops.policy.wasm import WasmPolicyEngine
from llmops.scheduler import Background, Periodic, Task
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.settings import switched_on
from llmops.v1 import governance_pb2, governance_pb2_grpc
from services.governance.audit_store import ClickHouseAuditRecords, SqlAnchorStore
from services.governance.audit_trail import AuditTrail
from services.governance.audit_writer import AuditWriter
from services.governance.compliance import ClickHouseComplianceLogs, Compliance
from services.governance.demo import seed_if_empty
from services.governance.drift import Thresholds
from services.governance.drift_job import DriftConfig, DriftJob
from services.governance.guard import BuiltinRules, RegoGate
from services.governance.plugin import GovernanceSettings
from services.governance.policy_decisions import PolicyDecisions
from services.governance.policy_opa import OpaConnection, opa_engine_loader
from services.governance.registry import Registry
from services.governance.servicer import GovernanceAdminServicer, GovernanceServicer
from services.governance.store_sql import SqlRegistryStore

log = structlog.get_logger("llmops.governance")


def open_store(ctx: ServiceContext[GovernanceSettings]) -> SqlRegistryStore:
    """SQLite in the state directory (embedded default) or PostgreSQL (production)."""
    settings = ctx.settings
    if settings.store_backend(ctx.mode) == "sqlite":
        if settings.dsn:
            return SqlRegistryStore.from_url(settings.dsn)
        return SqlRegistryStore.sqlite(ctx.backends.state_dir / "governance" / "registry.sqlite3")
    if not settings.dsn:
        raise FailedPrecondition(
            "governance.store is postgres but governance.dsn is empty: set it to "
            "postgresql+psycopg://user@host:5432/db (LLMOPS__GOVERNANCE__DSN)"
        )
    return SqlRegistryStore.from_url(
        settings.dsn, settings.pool_size, settings.pool_max_overflow, settings.pool_timeout_s
    )


def open_policies(ctx: ServiceContext[GovernanceSettings]) -> tuple[PolicyDecisions, list[Task]]:
    """The policy decisions over the configured engine, and the task that reloads it.

    The first load happens here, so a bundle that does not load (or an OPA server that does
    not answer) stops start-up. wasm: the bundle file is watched and reloaded when it
    changes; opa: the server's bundle is re-read periodically (its revision and module
    digests decide whether the engine is swapped)."""
    settings = ctx.settings
    interval = settings.policy_reload_interval_s
    load: Callable[[], PolicyEngine]
    if settings.policy_backend(ctx.mode) == "wasm":
        bundle: Path = settings.policy_bundle

        def load() -> PolicyEngine:
            return WasmPolicyEngine(bundle)

        decisions = PolicyDecisions(load, ctx.events, watched=[bundle])
        tasks: list[Task] = [decisions.watch(interval)] if interval > 0 else []
    else:
        load = opa_engine_loader(OpaConnection(ctx.backends.opa_url))
        decisions = PolicyDecisions(load, ctx.events)

        async def reload() -> None:
            await decisions.reload()

        tasks = [Periodic("policy_reload", interval, reload)] if interval > 0 else []
    tasks += decisions.load_audit()
    bundle_in_force = decisions.bundle()
    log.info(
        "policy_bundle_loaded",
        engine=settings.policy_backend(ctx.mode),
        revision=bundle_in_force.revision,
        source=bundle_in_force.source,
    )
    return decisions, tasks


def drift_job(ctx: ServiceContext[GovernanceSettings]) -> DriftJob:
    """The drift job over the prediction log in ClickHouse (see drift_job.py)."""
    settings = ctx.settings
    config = DriftConfig(
        reference_window=timedelta(seconds=settings.drift_reference_window_s),
        latest_window=timedelta(seconds=settings.drift_latest_window_s),
        thresholds=Thresholds(psi=settings.drift_psi_threshold, ks=settings.drift_ks_threshold),
        bins=settings.drift_bins,
        min_samples=settings.drift_min_samples,
    )
    return DriftJob(ctx.backends.clickhouse, ctx.events, config)


def create(ctx: ServiceContext[GovernanceSettings]) -> ServiceDefinition:
    settings = ctx.settings
    store = open_store(ctx)
    decisions, tasks = open_policies(ctx)
    registry = Registry(
        store,
        ctx.events,
        BuiltinRules(settings.serving_aliases),
        gate=RegoGate(decisions),
        outbox_min_age_s=settings.audit_outbox_min_age_s,
    )
    tasks.append(registry.outbox.task(settings.audit_outbox_interval_s))
    if settings.seeds_demo(ctx.mode):  # after SERVING: seeding must not delay the start

        async def seed() -> None:
            await seed_if_empty(registry)

        tasks.append(Background("demo_data", seed))
    anchors = SqlAnchorStore(store.engine)
    audit = AuditTrail(
        ClickHouseAuditRecords(ctx.backends.clickhouse),
        anchors,
        in_store=settings.audit_verify_in_store,
    )
    if switched_on(settings.audit_writer, auto=True):  # a task: starts after the migration
        writer = AuditWriter(
            ctx.backends.event_log(),
            anchors,
            batch=settings.audit_batch,
            poll_timeout_s=settings.audit_poll_timeout_s,
            linger_s=settings.audit_linger_s,
        )
        tasks.append(writer.task())

    if settings.drift_interval_s > 0:
        tasks.append(drift_job(ctx).task(settings.drift_interval_s))

    async def start() -> None:
        await store.open()
        log.info("registry_store_open", store=store.description)

    return ServiceDefinition(
        bindings=[
            binding(
                governance_pb2,
                governance_pb2_grpc,
                "GovernanceService",
                GovernanceServicer(
                    registry,
                    decisions,
                    audit,
                    Compliance(registry, ClickHouseComplianceLogs(ctx.backends.clickhouse)),
                ),
            ),
            binding(
                governance_pb2,
                governance_pb2_grpc,
                "GovernanceAdminService",
                GovernanceAdminServicer(decisions),
            ),
        ],
        tasks=tasks,
        on_start=[start],
        on_stop=[store.close, decisions.close],
    )
