"""Idempotency keys of accepted feedback: what a repeated key gets back.

A key (scoped by tenant) maps to the event id of the record accepted under it and a
fingerprint of that record's content, so a repeat can be told apart: the same content (a
client retry) is a duplicate; other content (a toggled thumb) is a duplicate or replaces the
record, as its signal says.

- :class:`LocalKeyStore` — embedded mode: the newest ``max_keys`` keys in memory (no I/O on
  the request path), written behind to SQLite in the state directory and read back at start.
- :class:`RedisKeyStore` — production: one string per key (``<namespace>:fb:<tenant>:<key>``)
  with a TTL, read with one MGET per batch and written with one pipeline.

A key is recorded only after its record is durable in the event log, so a crash in between
lets the client's retry through again. That, a key evicted from the window, or two replicas
racing on one key can put two events with one key in the log; statistics and exports count
only the newest record per key (``argMax`` over ``received_time`` in ClickHouse), so nothing
is double-counted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson
import structlog

from llmops.errors import Unavailable
from llmops.redact import redact_url

log = structlog.get_logger("llmops.feedback")

_INSERT_JSON = (
    "INSERT OR REPLACE INTO keys SELECT json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]') "
    "FROM json_each(?)"
)
_DELETE_JSON = "DELETE FROM keys WHERE key IN (SELECT value FROM json_each(?))"
WRITE_BEHIND_S = 0.05
"""How long accepted keys may wait before they are written to SQLite together."""
WRITE_BEHIND_ROWS = 1000
"""...or how many: a 1,000-record batch is written at once."""


class KeyEntry(NamedTuple):  # a tuple: a batch makes a thousand
    event_id: str
    fingerprint: str


class KeyStore(Protocol):
    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyEntry]:
        """The entries of those of ``keys`` seen within the window."""
        ...

    async def put_many(self, entries: Mapping[str, KeyEntry]) -> None:
        """Record (or replace) entries."""
        ...

    async def close(self) -> None: ...


class LocalKeyStore:
    """The newest ``max_keys`` keys younger than ``ttl_s``, in memory, persisted behind."""

    def __init__(self, path: Path | None, ttl_s: float, max_keys: int) -> None:
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._keys: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._wake = threading.Condition()
        self._pending: list[tuple[str, list[Any]]] = []
        """Writes not yet in SQLite, in order: ("put", rows) and ("evict", keys)."""
        self._pending_rows = 0
        self._stopping = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, "
                "fingerprint TEXT NOT NULL, at REAL NOT NULL) WITHOUT ROWID"
            )
            oldest = time.time() - ttl_s
            self._db.execute("DELETE FROM keys WHERE at < ?", (oldest,))
            rows = self._db.execute(
                "SELECT key, event_id, fingerprint, at FROM keys ORDER BY at DESC LIMIT ?",
                (max_keys,),
            ).fetchall()
            for key, event_id, fingerprint, at in reversed(rows):
                self._keys[key] = (event_id, fingerprint, at)
            self._writer = threading.Thread(
                target=self._write_behind, name="feedback-keys", daemon=True
            )
            self._writer.start()

    def __len__(self) -> int:
        return len(self._keys)

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyEntry]:
        oldest = time.time() - self._ttl_s
        found: dict[str, KeyEntry] = {}
        for key in keys:
            hit = self._keys.get(key)
            if hit is not None and hit[2] >= oldest:
                found[key] = KeyEntry(hit[0], hit[1])
        return found

    async def put_many(self, entries: Mapping[str, KeyEntry]) -> None:
        now = time.time()
        keys = self._keys
        known = [key for key in entries if key in keys]  # moved to the end below
        keys.update((key, (entry[0], entry[1], now)) for key, entry in entries.items())
        for key in known:
            keys.move_to_end(key)
        evicted: list[str] = []
        while len(self._keys) > self._max_keys:
            evicted.append(self._keys.popitem(last=False)[0])
        if self._writer is not None:
            rows = [(k, e.event_id, e.fingerprint, now) for k, e in entries.items()]
            with self._wake:
                self._pending.append(("put", rows))
                if evicted:
                    self._pending.append(("evict", evicted))
                self._pending_rows += len(rows)
                if self._pending_rows >= WRITE_BEHIND_ROWS:
                    self._wake.notify()

    def _write_behind(self) -> None:
        """The writer thread: what is pending every ``WRITE_BEHIND_S`` (or as soon as
        ``WRITE_BEHIND_ROWS`` keys wait), in one transaction. Coalesced so that a stream of
        single Submits does not hand every call's key to a thread of its own."""
        while True:
            with self._wake:
                if not self._pending and not self._stopping:
                    self._wake.wait(WRITE_BEHIND_S)
                work, self._pending, self._pending_rows = self._pending, [], 0
                stopping = self._stopping
            if work:
                try:
                    self._persist(work)
                except sqlite3.Error as exc:  # the keys stay in memory; a restart forgets them
                    log.error("feedback_keys_not_persisted", keys=len(work), error=str(exc))
            if stopping:
                return

    def _persist(self, work: list[tuple[str, list[Any]]]) -> None:
        # Each step as one JSON parameter, unpacked by SQLite (json_each): one statement that
        # runs without the GIL, where executemany took and released it once per row and
        # slowed the event loop's thread by ~2.6 ms per 1,000 keys.
        assert self._db is not None
        self._db.execute("BEGIN")
        try:
            for step, items in work:
                sql = _INSERT_JSON if step == "put" else _DELETE_JSON
                self._db.execute(sql, (orjson.dumps(items),))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def close(self) -> None:
        if self._writer is not None:
            with self._wake:
                self._stopping = True
                self._wake.notify()
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._db is not None:
            self._db.close()
            self._db = None


class RedisKeyStore:
    def __init__(self, url: str, namespace: str, ttl_s: float) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=2.0)
        self._prefix = f"{namespace}:fb:"
        self._ttl_s = max(1, int(ttl_s))
        self._url = redact_url(url)  # for messages: never the password

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyEntry]:
        if not keys:
            return {}
        from redis.exceptions import RedisError

        try:
            values: list[bytes | None] = await self._redis.mget([self._prefix + k for k in keys])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"feedback idempotency keys (Redis at {self._url}): {exc}") from None
        found: dict[str, KeyEntry] = {}
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                event_id, _, fingerprint = value.decode().partition(" ")
                found[key] = KeyEntry(event_id, fingerprint)
        return found

    async def put_many(self, entries: Mapping[str, KeyEntry]) -> None:
        if not entries:
            return
        from redis.exceptions import RedisError

        pipe = self._redis.pipeline(transaction=False)
        for key, entry in entries.items():
            pipe.set(self._prefix + key, f"{entry.event_id} {entry.fingerprint}", ex=self._ttl_s)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            # The records are durable already: failing the call would make the client
            # resend them. Only a retry's duplicate answer is weakened (ClickHouse counts
            # the newest record per key either way).
            log.warning("feedback_keys_not_recorded", keys=len(entries), error=str(exc))

    async def close(self) -> None:
        await self._redis.aclose()
