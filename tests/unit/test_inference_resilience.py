"""Production behaviour of Generate: retries within a budget, a circuit breaker per engine,
fallback, the response cache and per-tenant budgets (in-process implementations; the Redis
ones run against a real Redis in tests/integration/test_inference_redis.py). The model is real
HTTP: an OpenAI-compatible upstream whose failures the test injects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.openai_upstream import Upstream, start_upstream
from llmops.errors import ResourceExhausted, Unavailable
from llmops.v1 import common_pb2
from services.inference.engine import ChatTurn
from services.inference.generation import GenerateCall, Generated, Generation, StreamText
from services.inference.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryBudget
from services.inference.state import Limit, MemoryBudgets, MemoryCache
from tests.inference_support import (  # close_engines: an autouse fixture
    Events,
    close_engines,  # noqa: F401
    generation,
    serving,
)

ROUTES = """
engines:
  flaky: {{backend: openai, base_url: "{url}"}}
  steady: {{backend: openai, base_url: "{url}"}}
routes:
  - name: main
    targets:
      - {{model: a, version: 1, engine: flaky, served_model: upstream, timeout_s: 2,
         price_per_million: {{prompt: 1000, completion: 2000}}}}
      - {{model: b, version: 2, engine: steady, served_model: upstream}}
    sampling: {{max_tokens: 4, temperature: 0}}
    cache_ttl_s: 60
budgets:
  small-shop: {{tokens_per_day: 40}}
  "*": {{cost_per_day: 1.0}}
"""


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await start_upstream(reply_tokens=4)
    yield up
    await up.close()


def build(tmp_path: Path, upstream: Upstream) -> tuple[Generation, Events]:
    (tmp_path / "routes.yaml").write_text(ROUTES.format(url=upstream.base_url))
    built, _, events = generation(
        serving([tmp_path / "routes.yaml"]), breaker_failures=3, breaker_cooldown_s=60,
        cache=MemoryCache(), budgets=MemoryBudgets(),
    )  # fmt: skip
    return built, events


def fail_flaky(generation: Generation, status: str) -> None:
    """Make the first target's engine send the upstream's failure header (before its HTTP
    session opens: the session takes the headers when it does)."""
    engine = generation.engines.get("flaky", generation.serving.current.routes.engines["flaky"])
    engine._headers["x-upstream-fail"] = status  # type: ignore[attr-defined]


def call(text: str = "hello there", tenant: str = "acme", **kw: object) -> GenerateCall:
    return GenerateCall(
        route="main",
        messages=(ChatTurn("user", text),),
        context=common_pb2.RequestContext(tenant=tenant),
        **kw,  # type: ignore[arg-type]
    )


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker("e", failures=2, cooldown_s=10, clock=lambda: now[0])
    breaker.before()
    breaker.failure()
    breaker.before()
    breaker.failure()
    assert breaker.state == OPEN
    with pytest.raises(Unavailable, match="circuit open"):
        breaker.before()
    now[0] = 11
    breaker.before()  # the one trial call
    assert breaker.state == HALF_OPEN
    with pytest.raises(Unavailable, match="trial call in flight"):
        breaker.before()
    breaker.failure()
    assert breaker.state == OPEN
    now[0] = 22
    breaker.before()
    breaker.success()
    assert breaker.state == CLOSED


def test_the_retry_budget_is_a_share_of_the_successes() -> None:
    budget = RetryBudget(ratio=0.1, cap=10, tokens=3)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(10):
        budget.earn()
    assert budget.spend() and not budget.spend()


async def test_a_failing_target_is_retried_then_falls_back_then_its_breaker_opens(
    tmp_path: Path, upstream: Upstream
) -> None:
    generation, _ = build(tmp_path, upstream)
    fail_flaky(generation, "503")
    first = await generation.generate(call("one", skip_cache=True))
    assert first.target_index == 1  # after one retry of target 0
    assert upstream.requests == 3  # try, retry, fallback
    await generation.generate(call("two", skip_cache=True))  # 3rd failure: the breaker opens
    assert generation.breaker("flaky").state == OPEN
    before = upstream.requests
    third = await generation.generate(call("three", skip_cache=True))
    assert third.target_index == 1 and upstream.requests == before + 1  # no call to target 0


async def test_overload_does_not_open_the_breaker(tmp_path: Path, upstream: Upstream) -> None:
    generation, _ = build(tmp_path, upstream)
    fail_flaky(generation, "429")
    for i in range(5):
        assert (await generation.generate(call(f"q{i}", skip_cache=True))).target_index == 1
    assert generation.breaker("flaky").state == CLOSED


async def test_deterministic_answers_are_cached_and_skip_cache_still_writes(
    tmp_path: Path, upstream: Upstream
) -> None:
    generation, events = build(tmp_path, upstream)
    first = await generation.generate(call("sea view"))
    assert not first.cache_hit and upstream.requests == 1
    again = await generation.generate(call("sea view"))
    assert again.cache_hit and again.text == first.text and upstream.requests == 1
    assert again.usage.cost.units == again.usage.cost.nanos == 0  # no model spent
    skipped = await generation.generate(call("sea view", skip_cache=True))
    assert not skipped.cache_hit and upstream.requests == 2
    items = [i async for i in generation.stream(call("sea view"))]
    assert "".join(i.text for i in items if isinstance(i, StreamText)) == first.text
    last = items[-1]
    assert isinstance(last, Generated) and last.cache_hit and upstream.requests == 2
    sampled = call("sea view", sampling={"temperature": 0.7})  # not deterministic: no cache
    await generation.generate(sampled)
    await generation.generate(sampled)
    assert upstream.requests == 4
    assert [e.prediction.cache_hit for e in events.published] == [
        False, True, False, True, False, False,
    ]  # fmt: skip


async def test_a_tenant_budget_is_reserved_then_settled(tmp_path: Path, upstream: Upstream) -> None:
    generation, _ = build(tmp_path, upstream)
    budgets = generation.budgets
    assert isinstance(budgets, MemoryBudgets)
    done = await generation.generate(call("a b c d e f", tenant="small-shop", skip_cache=True))
    used, _ = await budgets.used("small-shop")
    assert used == done.usage.prompt_tokens + done.usage.completion_tokens  # settled to actual
    while True:  # 40 tokens a day: each call reserves ~6 and spends ~10
        try:
            await generation.generate(call("a b c d e f", tenant="small-shop", skip_cache=True))
        except ResourceExhausted as exc:
            assert exc.field == "budget" and exc.reason == "BUDGET_EXHAUSTED"
            assert "tenant 'small-shop'" in str(exc) and "tokens" in str(exc)
            break
    used, _ = await budgets.used("small-shop")
    assert used <= 40 + 10  # one call's overrun past its estimate at most
    # cost: "*" allows 1.0 a day; target 0's prices make one call cost ~0.02
    reservation = await budgets.reserve("other", Limit(cost_nanos=10**9), 1, 999_000_000)
    with pytest.raises(ResourceExhausted, match="cost"):
        await generation.generate(call("x", tenant="other", skip_cache=True))
    await budgets.settle(reservation, 0, 0)
    await generation.generate(call("x", tenant="other", skip_cache=True))
