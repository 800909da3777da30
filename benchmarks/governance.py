"""``llmops bench governance``: policy decisions, the embedded Wasm engine in-process vs the
OPA server's REST API, on the same policy (llmops/registry/alias/decision) and the same inputs.

Cases, each sequential from one caller after a warm-up (and OPA also with 16 concurrent
requests, its best throughput from one Python process):
  alias_allow  the SetAlias gate allowing a documented model (no host builtin call)
  alias_deny5  the same gate denying for 5 reasons (5 host ``sprintf`` calls from Wasm)
  domain_*     PolicyDecisions.evaluate over the Wasm engine: input checks, secrets
               stripped, UUIDv7, the AuditEvent built and buffered (into a list here)
Systems: ``llmops`` (WasmPolicyEngine.evaluate_now), ``opa-rest`` (OpaServerEngine: the
pooled aiohttp session of opa-python-client, POST /v1/data/...?provenance=true).

The OPA server is the deploy/local one (LLMOPS_OPA_PORT, default 18181): reused when it
answers, else started here and stopped at the end. Prints the BENCH.md JSON line last on
stdout (target ``governance``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.events.port import ServiceEvents
from services.governance.policy_decisions import PolicyDecisions
from services.governance.policy_opa import OpaConnection, OpaServerEngine
from services.governance.policy_wasm import WasmPolicyEngine

PATH = "llmops/registry/alias/decision"
CARD: dict[str, Any] = {
    "intended_use": "Summarize guest reviews on property pages",
    "risk_tier": "limited",
    "limitations": ["English and Dutch reviews only"],
    "evaluations": [{"metric": "rougeL", "value": 0.41}],
    "license": "Apache-2.0",
}
ALLOW: dict[str, Any] = {
    "alias": "champion",
    "artifact": {
        "kind": "model",
        "name": "property-summary-llm",
        "version": 7,
        "state": "approved",
        "created_by": "user:alice",
        "card": CARD,
    },
    "approvals": [{"by": "user:bob"}],
    "markets": ["NL", "FR"],
}
DENY5: dict[str, Any] = {
    **ALLOW,
    "artifact": {**ALLOW["artifact"], "card": {**CARD, "risk_tier": "high"}},
    "approvals": [{"by": "user:alice"}],
    "markets": ["NL", "FR", "XX"],
}
INPUTS = {"alias_allow": ALLOW, "alias_deny5": DENY5}


class ListEvents:
    """An event publisher that keeps what it is given (the domain's publish cost only)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def has_room(self, count: int) -> bool:
        return True

    def publish(self, envelope: Any) -> None:
        self.events.append(envelope)


def sync_case(name: str, call: Callable[[], object], n: int) -> Case:
    for _ in range(min(n // 10, 2000)):
        call()
    lat = []
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        t = clock()
        call()
        lat.append(clock() - t)
    return Case(name, "llmops", lat, clock() - start)


async def async_case(
    name: str, system: str, call: Callable[[], Awaitable[object]], n: int, concurrency: int
) -> Case:
    for _ in range(min(n // 10, 500)):
        await call()
    lat: list[float] = []
    clock = time.perf_counter

    async def worker(count: int) -> None:
        for _ in range(count):
            t = clock()
            await call()
            lat.append(clock() - t)

    start = clock()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return Case(name, system, lat, clock() - start, concurrency)


def main(*, quick: bool) -> None:
    with servers.opa() as url:
        asyncio.run(_run(url, quick))


async def _run(url: str, quick: bool) -> None:
    n_wasm, n_opa = (5_000, 1_000) if quick else (50_000, 10_000)
    connection = OpaConnection(url, timeout_s=5)
    try:
        wasm = WasmPolicyEngine()
        opa = OpaServerEngine(connection)
        assert opa.bundle.revision == wasm.bundle.revision, "OPA serves another bundle"
        domain = PolicyDecisions(
            lambda: wasm,
            ServiceEvents("bench", lambda: ListEvents()),  # type: ignore[arg-type,return-value]
        )
        cases: list[Case] = []
        for name, doc in INPUTS.items():
            assert (await opa.evaluate(PATH, doc)).result == wasm.evaluate_now(PATH, doc).result
            cases.append(sync_case(name, partial(wasm.evaluate_now, PATH, doc), n_wasm))
            cases.append(
                await async_case(
                    f"domain_{name.removeprefix('alias_')}",
                    "llmops",
                    partial(domain.evaluate, PATH, doc),
                    n_wasm,
                    1,
                )
            )
            for concurrency in (1, 16):
                cases.append(
                    await async_case(
                        name,
                        "opa-rest",
                        partial(opa.evaluate, PATH, doc),
                        n_opa,
                        concurrency,
                    )
                )
    finally:
        await connection.close()
    rows = [c.summary() for c in cases]
    ratios = {}
    for name in INPUTS:
        ours = next(r for r in rows if r["case"] == name and r["system"] == "llmops")
        best_opa = max(r["rps"] for r in rows if r["case"] == name and r["system"] == "opa-rest")
        ratios[f"{name}.rps.llmops/opa-rest"] = round(ours["rps"] / best_opa, 2)
    emit("governance", rows, ratios)
