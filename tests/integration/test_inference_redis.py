"""The inference service's shared state on a real Redis (deploy/local/redis.sh): the response
cache, and tenant budgets whose check-and-reserve is one Lua script — concurrent replicas
never both take the last tokens."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from llmops.errors import ResourceExhausted
from services.inference.state import Limit, RedisState

pytestmark = pytest.mark.infra


async def test_the_cache_round_trips_and_expires(redis_url: str) -> None:
    state = RedisState(redis_url, namespace=f"llmops:test:{uuid.uuid4().hex}")
    try:
        await state.put("k1", b'{"text": "hi"}', ttl_s=0.2)
        assert await state.get("k1") == b'{"text": "hi"}'
        assert await state.get("k2") is None
        await asyncio.sleep(0.3)
        assert await state.get("k1") is None
    finally:
        await state.close()


async def test_concurrent_reservations_never_overspend(redis_url: str) -> None:
    namespace = f"llmops:test:{uuid.uuid4().hex}"
    replicas = [RedisState(redis_url, namespace=namespace) for _ in range(4)]  # 4 "replicas"
    limit = Limit(tokens=100)
    try:

        async def one(state: RedisState) -> bool:
            try:
                await state.reserve("acme", limit, 10, 0)
            except ResourceExhausted as exc:
                assert exc.field == "budget" and "tenant 'acme'" in str(exc)
                return False
            return True

        results = await asyncio.gather(*(one(replicas[i % 4]) for i in range(40)))
        assert sum(results) == 10  # exactly 100 tokens' worth, whatever the interleaving
        assert await replicas[0].used("acme") == (100, 0)
        reservation = await replicas[1].reserve("beta", Limit(cost_nanos=5_000), 0, 3_000)
        await replicas[2].settle(reservation, 42, 1_000)  # actual usage replaces the estimate
        assert await replicas[3].used("beta") == (42, 1_000)
        with pytest.raises(ResourceExhausted, match="cost"):
            await replicas[0].reserve("beta", Limit(cost_nanos=5_000), 0, 4_001)
    finally:
        for state in replicas:
            await state.close()
