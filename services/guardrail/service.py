"""Wiring of the guardrail service: policies in force (hot reload), engine, worker pool,
domain and servicers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from llmops.secret_files import create_secret_file
from llmops.server import ServiceContext, ServiceDefinition, binding
from llmops.v1 import guardrail_pb2, guardrail_pb2_grpc
from llmops.yamlfiles import HotReload
from services.guardrail.domain import Guardrail
from services.guardrail.engine import DecisionCache, Engine
from services.guardrail.plugin import GuardrailSettings
from services.guardrail.policy import PolicySet, load_policies
from services.guardrail.servicer import GuardrailAdminServicer, GuardrailServicer


def hmac_key(configured: str, state_dir: Path) -> bytes:
    """The configured key, or a random one created once in the state directory."""
    if configured:
        return configured.encode()
    return create_secret_file(state_dir / "guardrail.key", os.urandom(32).hex().encode()).strip()


def create(ctx: ServiceContext[GuardrailSettings]) -> ServiceDefinition:
    cfg = ctx.settings
    paths = list(cfg.policies)
    # The first load happens here: a bad policy file stops start-up.
    policies = HotReload[PolicySet](
        "policies",
        lambda: load_policies(paths),
        _revision,
        watched=paths,
        audit=ctx.events,
        resource_type="policy",
    )
    engine = Engine(hmac_key(cfg.hmac_key, ctx.backends.state_dir))
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="guardrail")
    decisions = DecisionCache(cfg.decision_cache_entries)
    ctx.metrics.register(_DecisionCacheCollector(decisions))
    guardrail = Guardrail(
        policies, engine, ctx.events, pool, hard_timeout_s=cfg.hard_timeout_s,
        decisions=decisions,
    )  # fmt: skip

    async def close_pool() -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    servicers = {
        "GuardrailService": GuardrailServicer(guardrail),
        "GuardrailAdminService": GuardrailAdminServicer(guardrail),
    }
    return ServiceDefinition(
        bindings=[
            binding(guardrail_pb2, guardrail_pb2_grpc, name, servicer)
            for name, servicer in servicers.items()
        ],
        tasks=[policies.watch(paths, cfg.reload_interval_s), *policies.load_audit()],
        on_stop=[close_pool],
    )


def _revision(policies: PolicySet) -> str:
    return policies.revision


class _DecisionCacheCollector(Collector):
    """``llmops_guardrail_decision_cache_total{result}``: checks answered from the decision
    cache (hit) or by the detectors (miss; only texts the cache would keep are counted)."""

    def __init__(self, cache: DecisionCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "llmops_guardrail_decision_cache",
            "Checks answered from the decision cache (hit) or by the detectors (miss).",
            labels=["result"],
        )
        family.add_metric(["hit"], self._cache.hits)
        family.add_metric(["miss"], self._cache.misses)
        yield family
