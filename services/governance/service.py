"""Wiring of the governance service: the registry store, the domain, servicers and tasks."""

from __future__ import annotations

import structlog

from llmops.errors import FailedPrecondition
from llmops.scheduler import Background, Task
from llmops.server import ServiceContext, ServiceDefinition, binding, pending_binding
from llmops.v1 import governance_pb2, governance_pb2_grpc
from services.governance.demo import seed_if_empty
from services.governance.guard import BuiltinRules
from services.governance.plugin import GovernanceSettings
from services.governance.registry import Registry
from services.governance.servicer import PENDING_POLICY, GovernanceServicer
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


def create(ctx: ServiceContext[GovernanceSettings]) -> ServiceDefinition:
    settings = ctx.settings
    store = open_store(ctx)
    registry = Registry(store, ctx.events, BuiltinRules(settings.serving_aliases))
    tasks: list[Task] = []
    if settings.seeds_demo(ctx.mode):  # after SERVING: seeding must not delay the start

        async def seed() -> None:
            await seed_if_empty(registry)

        tasks.append(Background("demo_data", seed))

    async def start() -> None:
        await store.open()
        log.info("registry_store_open", store=store.description)

    return ServiceDefinition(
        bindings=[
            binding(
                governance_pb2,
                governance_pb2_grpc,
                "GovernanceService",
                GovernanceServicer(registry),
            ),
            pending_binding(
                governance_pb2, governance_pb2_grpc, "GovernanceAdminService", PENDING_POLICY
            ),
        ],
        tasks=tasks,
        on_start=[start],
        on_stop=[store.close],
    )
