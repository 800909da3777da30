"""Redis started by deploy/local/redis.sh, driven through redis-py's asyncio client."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

pytestmark = pytest.mark.infra


async def test_hash_roundtrip_uses_hiredis(redis_url: str) -> None:
    assert HIREDIS_AVAILABLE, "install redis[hiredis]: the pure-Python parser is 3x slower"
    client = aioredis.from_url(redis_url, decode_responses=True)
    key = f"llmops:test:infra:{uuid.uuid4().hex}"
    try:
        # The pooled connection really parses replies with hiredis.
        conn = await client.connection_pool.get_connection()
        try:
            assert type(conn._parser).__name__ == "_AsyncHiredisParser"
        finally:
            await client.connection_pool.release(conn)

        fields = {f"feature_{i}": f"{i * 1.5}" for i in range(20)}
        assert await client.hset(key, mapping=fields) == 20
        assert await client.expire(key, 60)
        assert await client.hget(key, "feature_3") == "4.5"
        assert await client.hgetall(key) == fields
        assert await client.hmget(key, ["feature_0", "missing"]) == ["0.0", None]

        # Pipelined reads of many hashes, as the online feature store does.
        keys = [f"{key}:{n}" for n in range(50)]
        async with client.pipeline(transaction=False) as pipe:
            for n, k in enumerate(keys):
                pipe.hset(k, mapping={"n": n, "name": f"entity-{n}"})
                pipe.expire(k, 60)
            await pipe.execute()
        async with client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hgetall(k)
            rows = await pipe.execute()
        assert [int(r["n"]) for r in rows] == list(range(50))
        assert rows[7]["name"] == "entity-7"
        assert 0 < await client.ttl(keys[0]) <= 60

        # The generated config: AOF persistence on, bound to loopback.
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        assert (await client.config_get("bind"))["bind"].split()[0] == "127.0.0.1"
    finally:
        await client.delete(key, *[f"{key}:{n}" for n in range(50)])
        await client.aclose()
