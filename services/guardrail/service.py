"""Wiring of the guardrail service: policies, engine, worker pool and servicers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import guardrail_pb2, guardrail_pb2_grpc
from services.guardrail.engine import Engine
from services.guardrail.plugin import GuardrailSettings
from services.guardrail.policy import PolicyError, load_policies, policy_files
from services.guardrail.servicer import GuardrailAdminServicer, GuardrailServicer, PolicyHolder

log = structlog.get_logger("llmops.guardrail")


def hmac_key(configured: str, state_dir: Path) -> bytes:
    """The configured key, or a random one created once in the state directory."""
    if configured:
        return configured.encode()
    path = state_dir / "guardrail.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(32).hex().encode())
        path.chmod(0o600)
    return path.read_bytes().strip()


def create(ctx: ServiceContext[GuardrailSettings]) -> ServiceDefinition:
    cfg = ctx.settings
    paths = list(cfg.policies)
    holder = PolicyHolder(load_policies(paths))  # a bad policy file stops start-up
    engine = Engine(hmac_key(cfg.hmac_key, ctx.backends.state_dir))
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="guardrail")

    publish = ctx.events.publish

    async def reload(dry_run: bool) -> guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse:
        fresh = await asyncio.to_thread(load_policies, paths)  # PolicyError -> INVALID_ARGUMENT
        previous = holder.policies.revision
        if not dry_run:
            holder.policies = fresh
            log.info("policies_reloaded", previous=previous, revision=fresh.revision)
        return guardrail_pb2.GuardrailAdminServiceReloadPoliciesResponse()

    def stamp() -> tuple[tuple[str, int], ...]:
        try:
            return tuple((str(f), f.stat().st_mtime_ns) for f in policy_files(paths))
        except (PolicyError, OSError):
            return ()

    tasks: list[asyncio.Task[None]] = []

    async def poll() -> None:
        last, reported = stamp(), ""
        while True:
            await asyncio.sleep(cfg.reload_interval_s)
            now = await asyncio.to_thread(stamp)
            if now == last:
                continue
            last = now
            try:
                await reload(False)
            except PolicyError as exc:
                if exc.message != reported:
                    reported = exc.message
                    log.error("policy_reload_failed", error=exc.message)

    async def on_start() -> None:
        if cfg.reload_interval_s > 0:
            tasks.append(asyncio.get_running_loop().create_task(poll()))

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool.shutdown(wait=False, cancel_futures=True)

    return ServiceDefinition(
        bindings=[
            binding(
                guardrail_pb2,
                guardrail_pb2_grpc,
                "GuardrailService",
                GuardrailServicer(holder, engine, publish, pool),
            ),
            binding(
                guardrail_pb2,
                guardrail_pb2_grpc,
                "GuardrailAdminService",
                GuardrailAdminServicer(holder, engine, reload),
            ),
        ],
        on_start=[on_start],
        on_stop=[on_stop],
    )
