"""Shared serving state: the response cache and the per-tenant token/cost budgets.

Both have an in-process implementation (embedded mode: one process serves the mesh) and a
Redis one (production: every replica sees the same cache and spends the same budget), behind
one small protocol each; ``inference.state_backend`` picks (auto: by mode).

**Response cache.** A route with ``cache_ttl_s`` caches a completed, unblocked response under
a key over everything that decides the output (route, model and version, the messages or
prompt after guardrail redaction, the resolved sampling, the JSON schema). Only deterministic
calls are cached: greedy decoding (temperature 0) or a fixed seed. ``skip_cache`` reads
nothing but still writes. Values are small JSON documents; the key is a SHA-256, so no
prompt text is a Redis key.

**Budgets.** ``budgets:`` in a routes file gives a tenant a daily (UTC) limit of tokens and/or
cost. Before the model runs, the call *reserves* its worst case (an estimate of the prompt's
tokens plus ``max_tokens``, at the target's prices); the reservation fails with
RESOURCE_EXHAUSTED naming the budget when it does not fit. After the call the reservation is
*settled* to the actual usage. Reserve-then-settle is atomic per call: in-process under the
event loop (no awaits between check and add), in Redis by one Lua script — no two replicas can
both take the last tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from llmops.errors import ResourceExhausted, Unavailable
from llmops.redact import redact_url

NANOS = 1_000_000_000


def cache_key(parts: Mapping[str, Any]) -> str:
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryCache:
    """LRU with per-entry expiry, bounded by entries."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._items.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._items[key] = (self._clock() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Limit:
    tokens: int = 0
    """Per UTC day; 0 = no limit."""
    cost_nanos: int = 0
    """Per UTC day, in nano units of the accounting currency; 0 = no limit."""


@dataclass(frozen=True, slots=True)
class Reservation:
    tenant: str
    day: str
    tokens: int
    cost_nanos: int


class Budgets(Protocol):
    async def reserve(
        self, tenant: str, limit: Limit, tokens: int, cost_nanos: int
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, tokens: int, cost_nanos: int) -> None: ...

    async def used(self, tenant: str) -> tuple[int, int]: ...


def _day(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d")


def _exhausted(tenant: str, what: str, used: int, want: int, limit: int) -> ResourceExhausted:
    error = ResourceExhausted(
        f"budget: tenant {tenant!r} has used {used} of its {limit} {what} today; this call "
        f"needs up to {want} more"
    )
    error.field = "budget"
    error.reason = "BUDGET_EXHAUSTED"
    error.metadata = {"tenant": tenant, "budget": what}
    return error


class MemoryBudgets:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._used: dict[tuple[str, str], list[int]] = {}

    async def reserve(self, tenant: str, limit: Limit, tokens: int, cost_nanos: int) -> Reservation:
        day = _day(self._clock)
        used = self._used.setdefault((tenant, day), [0, 0])
        # no await between the check and the add: atomic on the event loop
        if limit.tokens and used[0] + tokens > limit.tokens:
            raise _exhausted(tenant, "tokens", used[0], tokens, limit.tokens)
        if limit.cost_nanos and used[1] + cost_nanos > limit.cost_nanos:
            raise _exhausted(tenant, "cost (nano units)", used[1], cost_nanos, limit.cost_nanos)
        used[0] += tokens
        used[1] += cost_nanos
        return Reservation(tenant, day, tokens, cost_nanos)

    async def settle(self, reservation: Reservation, tokens: int, cost_nanos: int) -> None:
        used = self._used.setdefault((reservation.tenant, reservation.day), [0, 0])
        used[0] += tokens - reservation.tokens
        used[1] += cost_nanos - reservation.cost_nanos

    async def used(self, tenant: str) -> tuple[int, int]:
        found = self._used.get((tenant, _day(self._clock)), [0, 0])
        return found[0], found[1]


RESERVE_LUA = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost') or '0')
local want_tokens, want_cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit_tokens, limit_cost = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit_tokens > 0 and tokens + want_tokens > limit_tokens then
  return {0, 'tokens', tokens}
end
if limit_cost > 0 and cost + want_cost > limit_cost then
  return {0, 'cost', cost}
end
redis.call('HINCRBY', KEYS[1], 'tokens', want_tokens)
redis.call('HINCRBY', KEYS[1], 'cost', want_cost)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {1, 'ok', 0}
"""
"""Check and add in one step: Redis runs a script atomically, so replicas never both pass."""


class RedisState:
    """The cache and the budgets in Redis (one client; keys under ``<namespace>:``)."""

    def __init__(
        self, url: str, namespace: str = "llmops:inference", clock: Callable[[], float] = time.time
    ) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=2.0)
        self._url = redact_url(url)  # for messages: never the password
        self._ns = namespace
        self._clock = clock
        self._reserve = self._redis.register_script(RESERVE_LUA)

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"inference state (Redis at {self._url}): {exc}")

    async def get(self, key: str) -> bytes | None:
        from redis.exceptions import RedisError

        try:
            value: bytes | None = await self._redis.get(f"{self._ns}:cache:{key}")
        except (RedisError, OSError):
            return None  # a cache outage is a miss, never an error
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(f"{self._ns}:cache:{key}", value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError):
            return

    def _budget_key(self, tenant: str, day: str) -> str:
        return f"{self._ns}:budget:{day}:{tenant}"

    async def reserve(self, tenant: str, limit: Limit, tokens: int, cost_nanos: int) -> Reservation:
        from redis.exceptions import RedisError

        day = _day(self._clock)
        try:
            ok, what, used = await self._reserve(
                keys=[self._budget_key(tenant, day)],
                args=[tokens, cost_nanos, limit.tokens, limit.cost_nanos, 2 * 86_400],
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        if not int(ok):
            kind = what.decode() if isinstance(what, bytes) else str(what)
            if kind == "tokens":
                raise _exhausted(tenant, "tokens", int(used), tokens, limit.tokens)
            raise _exhausted(tenant, "cost (nano units)", int(used), cost_nanos, limit.cost_nanos)
        return Reservation(tenant, day, tokens, cost_nanos)

    async def settle(self, reservation: Reservation, tokens: int, cost_nanos: int) -> None:
        from redis.exceptions import RedisError

        key = self._budget_key(reservation.tenant, reservation.day)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(key, "tokens", tokens - reservation.tokens)
        pipe.hincrby(key, "cost", cost_nanos - reservation.cost_nanos)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def used(self, tenant: str) -> tuple[int, int]:
        raw = await self._redis.hmget(self._budget_key(tenant, _day(self._clock)), "tokens", "cost")
        return int(raw[0] or 0), int(raw[1] or 0)

    async def close(self) -> None:
        await self._redis.aclose()
