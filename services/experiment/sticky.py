"""Sticky assignments: a unit keeps the variant it first got when a bandit's weights move.

A bandit changes its variant weights while it runs; recomputing a unit's variant from the
new weights would move units that already saw one arm to another mid-experiment. As in
GrowthBook's sticky bucketing, the first assignment of a unit to a sticky experiment is
recorded, keyed by the experiment and its *bucket version* (here the experiment's salt:
changing the salt is the deliberate way to reshuffle everyone), and reused afterwards.

A-B experiments need none of this: their weights cannot change while they run, so the
hash alone is sticky.

- :class:`MemoryStickyStore` — embedded mode: a dict (no I/O on the assignment path),
  written through to SQLite on a writer thread so records survive restarts.
- :class:`RedisStickyStore` — production: one hash per unit
  (``<namespace>:sticky:<unit_type>:<unit_id>``, field ``<experiment>:<salt>``), read with
  one HGETALL only when the unit falls into a sticky experiment, written behind the response.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from llmops.errors import Unavailable
from llmops.redact import redact_url

STICKY_TTL_S = 180 * 86_400
"""How long a sticky record lives without being refreshed (well past any experiment)."""


class StickyStore(Protocol):
    async def get(self, unit: str) -> dict[str, str]:
        """``{"<experiment>:<salt>": variant key}`` of one unit (``<unit_type>:<unit_id>``)."""
        ...

    def put(self, unit: str, field: str, variant: str) -> None:
        """Record a first assignment; never blocks the caller (written behind)."""
        ...

    async def close(self) -> None: ...


class MemoryStickyStore:
    def __init__(self, path: Path | None = None) -> None:
        self._docs: dict[str, dict[str, str]] = {}
        self._db: sqlite3.Connection | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sticky (unit TEXT NOT NULL, field TEXT NOT NULL, "
                "variant TEXT NOT NULL, PRIMARY KEY (unit, field)) WITHOUT ROWID"
            )
            for unit, field, variant in self._db.execute("SELECT unit, field, variant FROM sticky"):
                self._docs.setdefault(unit, {})[field] = variant
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sticky-writer")

    async def get(self, unit: str) -> dict[str, str]:
        return self._docs.get(unit, {})

    def put(self, unit: str, field: str, variant: str) -> None:
        self._docs.setdefault(unit, {})[field] = variant
        if self._writer is not None:
            self._writer.submit(self._persist, unit, field, variant)

    def _persist(self, unit: str, field: str, variant: str) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sticky (unit, field, variant) VALUES (?, ?, ?)",
                (unit, field, variant),
            )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._db is not None:
            with self._lock:
                self._db.close()


class RedisStickyStore:
    def __init__(self, url: str, namespace: str) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=2.0)
        self._prefix = f"{namespace}:sticky:"
        self._url = redact_url(url)  # for messages: never the password
        self._pending: set[asyncio.Task[None]] = set()

    async def get(self, unit: str) -> dict[str, str]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            raw: dict[bytes, bytes] = await self._redis.hgetall(self._prefix + unit)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"sticky assignments (Redis at {self._url}): {exc}") from None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def put(self, unit: str, field: str, variant: str) -> None:
        task = asyncio.get_running_loop().create_task(self._put(unit, field, variant))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, unit: str, field: str, variant: str) -> None:
        key = self._prefix + unit
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(key, field, variant)  # a concurrent first assignment keeps the first
        pipe.expire(key, STICKY_TTL_S)
        try:
            await pipe.execute()
        except Exception:  # best effort: the next assignment records it again
            return

    async def _flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self._flush()
        await self._redis.aclose()
