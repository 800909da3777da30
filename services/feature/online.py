"""Online stores: Redis (production) and an in-process store persisted to disk (embedded).

Both keep the layout of :mod:`services.feature.codec` and the same semantics:

- :meth:`read` — for each record, the values of the asked fields (``None`` when missing),
  in one round trip whatever the number of records and views (one pipeline of HMGETs);
- :meth:`write` — per record, set the fields and the view's event time **only if** that
  time is not older than the stored one (atomic per record: a Lua script in Redis), and
  refresh the record's expiry; reports which writes were stale;
- :meth:`set_meta_max` / :meth:`read_meta` — per-view bookkeeping (newest event time, last
  push, materialization watermark) in one small record per view.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmops.errors import Unavailable
from llmops.redact import redact_url

log = structlog.get_logger("llmops.feature.online")


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One entity record's new values for one view."""

    record: str
    ts_field: bytes
    event_time_us: int
    values: Mapping[bytes, bytes]
    expire_s: int | None
    """Expiry of the whole record from now; None keeps it forever."""


class OnlineStore(Protocol):
    name: str

    async def read(self, records: Sequence[str], fields: Sequence[bytes]) -> list[list[Any]]:
        """Per record, the raw value of each field, or None."""
        ...

    async def write(self, writes: Sequence[RecordWrite]) -> list[bool]:
        """Apply the writes; per write, False if a newer event time was already stored."""
        ...

    async def set_meta_max(self, view: str, values: Mapping[str, int]) -> None:
        """Per view bookkeeping: raise each named counter to at least the given value."""
        ...

    async def read_meta(self, views: Sequence[str]) -> list[dict[str, int]]: ...

    async def close(self) -> None: ...


# -- Redis ------------------------------------------------------------------------------------

# KEYS[1] record; ARGV: ts field, event time µs, expire s (0 = none), then field, value, ...
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 4))
local expire = tonumber(ARGV[3])
if expire > 0 then redis.call('EXPIRE', KEYS[1], expire) end
return 1
"""

# KEYS[1] meta record; ARGV: name, value, name, value, ... (each raised to at least value)
_SET_MAX = """
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if not current or tonumber(current) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


class RedisOnlineStore:
    """redis-py's asyncio client (hiredis parser), one connection pool per process."""

    name = "redis"

    def __init__(self, url: str, namespace: str, *, max_connections: int = 64) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(
            url, max_connections=max_connections, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self._url = redact_url(url)  # for messages: never the password
        self._meta_prefix = f"{namespace}:_meta:"
        self._scripts = {
            hashlib.sha1(body.encode()).hexdigest(): body for body in (_WRITE_IF_NEWER, _SET_MAX)
        }
        self._write_sha, self._set_max_sha = self._scripts

    async def _run(self, build: Callable[[Any], None]) -> list[Any]:
        """Queue commands with ``build`` on a fresh pipeline and execute it (one round trip).

        Scripts go by EVALSHA; a Redis that does not know them (restarted, or new) answers
        NOSCRIPT, and the pipeline is loaded and run again: every script here is idempotent.
        """
        from redis.exceptions import NoScriptError

        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            build(pipe)
            try:
                result: list[Any] = await pipe.execute()
                return result
            except NoScriptError:
                if attempt:
                    raise
                for body in self._scripts.values():
                    await self._redis.script_load(body)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise Unavailable(
                    f"online store (Redis at {self._url}) unreachable: {exc}"
                ) from None
        raise AssertionError("unreachable")

    async def read(self, records: Sequence[str], fields: Sequence[bytes]) -> list[list[Any]]:
        if len(records) == 1:  # one command needs no pipeline object (~30 µs less CPU)
            try:
                return [await self._redis.hmget(records[0], fields)]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise Unavailable(
                    f"online store (Redis at {self._url}) unreachable: {exc}"
                ) from None

        def build(pipe: Any) -> None:
            for record in records:
                pipe.hmget(record, fields)

        return await self._run(build)

    async def write(self, writes: Sequence[RecordWrite]) -> list[bool]:
        if not writes:
            return []

        def build(pipe: Any) -> None:
            for w in writes:
                args: list[Any] = [w.ts_field, w.event_time_us, w.expire_s or 0]
                for fid, raw in w.values.items():
                    args += (fid, raw)
                pipe.evalsha(self._write_sha, 1, w.record, *args)

        return [bool(r) for r in await self._run(build)]

    async def set_meta_max(self, view: str, values: Mapping[str, int]) -> None:
        args: list[Any] = []
        for name, value in values.items():
            args += (name, value)
        await self._run(
            lambda pipe: pipe.evalsha(self._set_max_sha, 1, self._meta_prefix + view, *args)
        )

    async def read_meta(self, views: Sequence[str]) -> list[dict[str, int]]:
        def build(pipe: Any) -> None:
            for view in views:
                pipe.hgetall(self._meta_prefix + view)

        rows = await self._run(build)
        return [{k.decode(): int(v) for k, v in row.items()} for row in rows]

    async def ping(self) -> None:
        await self._run(lambda pipe: pipe.ping())

    async def close(self) -> None:
        await self._redis.aclose()


# -- embedded -----------------------------------------------------------------------------


class EmbeddedOnlineStore:
    """Records in a dict, written through to SQLite (WAL) so they survive restarts.

    Reads never touch the disk. A write is applied in memory on the event loop (so
    concurrent writers see each other at once, like one Redis) and returns after SQLite has
    it, on one writer thread (the order of writes is kept; no blocking I/O on the loop).
    """

    name = "embedded"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable across a process crash
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS fields (record TEXT NOT NULL, field BLOB NOT NULL, "
            "value BLOB NOT NULL, PRIMARY KEY (record, field)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS expiry (record TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (view TEXT NOT NULL, name TEXT NOT NULL, "
            "value INTEGER NOT NULL, PRIMARY KEY (view, name)) WITHOUT ROWID"
        )
        self._records: dict[str, dict[bytes, bytes]] = {}
        self._expiry: dict[str, float] = {}
        self._meta: dict[str, dict[str, int]] = {}
        self._load()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="feature-store-writer")
        self._db_lock = threading.Lock()

    def _load(self) -> None:
        now = time.time()
        for record, at in self._db.execute("SELECT record, at FROM expiry"):
            self._expiry[record] = at
        expired = {r for r, at in self._expiry.items() if at <= now}
        for record, fid, value in self._db.execute("SELECT record, field, value FROM fields"):
            if record not in expired:
                self._records.setdefault(record, {})[bytes(fid)] = bytes(value)
        for view, name, value in self._db.execute("SELECT view, name, value FROM meta"):
            self._meta.setdefault(view, {})[name] = int(value)
        for record in expired:
            self._expiry.pop(record, None)
        if expired:
            self._persist_deletes(sorted(expired))
        log.info("embedded_online_store_loaded", path=str(self._path), records=len(self._records))

    def _live(self, record: str, now: float) -> dict[bytes, bytes] | None:
        fields = self._records.get(record)
        if fields is None:
            return None
        at = self._expiry.get(record)
        if at is not None and at <= now:
            del self._records[record]
            del self._expiry[record]
            self._writer.submit(self._persist_deletes, [record])
            return None
        return fields

    async def read(self, records: Sequence[str], fields: Sequence[bytes]) -> list[list[Any]]:
        now = time.time()
        out: list[list[Any]] = []
        for record in records:
            stored = self._live(record, now)
            out.append([None] * len(fields) if stored is None else [stored.get(f) for f in fields])
        return out

    async def write(self, writes: Sequence[RecordWrite]) -> list[bool]:
        now = time.time()
        applied: list[bool] = []
        changed: list[tuple[str, list[tuple[bytes, bytes]], float | None]] = []
        for w in writes:
            stored = self._live(w.record, now)
            if stored is None:
                stored = self._records[w.record] = {}
            current = stored.get(w.ts_field)
            if current is not None and int(current) > w.event_time_us:
                applied.append(False)
                continue
            pairs = [(w.ts_field, str(w.event_time_us).encode()), *w.values.items()]
            stored.update(pairs)
            at = None
            if w.expire_s:
                at = self._expiry[w.record] = now + w.expire_s
            changed.append((w.record, pairs, at))
            applied.append(True)
        if changed:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._persist, changed)
        return applied

    def _persist(self, changed: list[tuple[str, list[tuple[bytes, bytes]], float | None]]) -> None:
        with self._db_lock:
            self._db.execute("BEGIN")
            try:
                for record, pairs, at in changed:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO fields (record, field, value) VALUES (?, ?, ?)",
                        [(record, f, v) for f, v in pairs],
                    )
                    if at is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO expiry (record, at) VALUES (?, ?)", (record, at)
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _persist_deletes(self, records: list[str]) -> None:
        with self._db_lock:
            self._db.executemany("DELETE FROM fields WHERE record = ?", [(r,) for r in records])
            self._db.executemany("DELETE FROM expiry WHERE record = ?", [(r,) for r in records])

    async def set_meta_max(self, view: str, values: Mapping[str, int]) -> None:
        meta = self._meta.setdefault(view, {})
        raised = {k: v for k, v in values.items() if meta.get(k, -(2**63)) < v}
        if not raised:
            return
        meta.update(raised)
        await asyncio.get_running_loop().run_in_executor(
            self._writer, self._persist_meta, view, raised
        )

    def _persist_meta(self, view: str, values: Mapping[str, int]) -> None:
        with self._db_lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (view, name, value) VALUES (?, ?, ?)",
                [(view, k, v) for k, v in values.items()],
            )

    async def read_meta(self, views: Sequence[str]) -> list[dict[str, int]]:
        return [dict(self._meta.get(v, {})) for v in views]

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._db_lock:
            self._db.close()
