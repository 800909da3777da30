"""The network backend: a ClickHouse server or cluster over the native protocol.

clickhouse-driver, two lazily connected clients per store: one for queries (Python rows) and
one with ``use_numpy`` for columnar inserts (numpy columns go to the wire without a Python
object per value; measured ~1.35 M rows/s vs ~0.64 M rows/s with lists on a 6-column table
against 18.16). Safe to share between threads: clickhouse-driver clients are not, so each
thread that uses the store gets clients (connections) of its own, made on first use — the
embedded mode's sinks and services share one store.

Deadlines: a query made while an RPC is served carries ``max_execution_time`` = the seconds
left of the caller's deadline (rounded up), so the server stops work nobody waits for.

Failures:

- Network errors and transient server errors (too many parts, timeouts, memory limit,
  read-only replica, ...) are retried with exponential back-off and jitter; when the
  attempts run out :class:`ClickHouseUnavailable` is raised.
- A statement that fails to *connect* never reached the server, so it is always retried.
- An INSERT that fails after the data was sent has an unknown outcome. It is retried only
  when the retry is safe: a dedup token (``insert_deduplication_token``, servers >= 22.2,
  on tables with ``non_replicated_deduplication_window`` or Replicated tables), or a
  Replicated table on any version (its replicas drop a block identical to one of the last
  ``replicated_deduplication_window`` they stored; the retry sends the very same block) —
  except after UNKNOWN_STATUS_OF_INSERT (the replica lost ZooKeeper mid-commit), which the
  caller gets as an unknown outcome.
  Otherwise :class:`ClickHouseUnavailable` is raised at once, and the caller (the sink)
  re-reads its high-water mark before deciding to insert again.
- On servers without the setting (e.g. Debian's 18.16) the token is not sent: 18.16 would
  reject it as an unknown setting. There a Replicated table (with deploy/local's ZooKeeper)
  or the sink's high-water mark protects against a replayed batch.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, tzinfo
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse
from zoneinfo import ZoneInfo

import numpy as np

from llmops.callcontext import remaining_time
from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseUnavailable
from llmops.clickhouse.sql import column_list, identifier, render
from llmops.clickhouse.values import convert_rows
from llmops.logging import get_logger

T = TypeVar("T")
_log = get_logger(__name__)

DEDUP_TOKEN_MIN_VERSION = (22, 2)
"""First ClickHouse release with the ``insert_deduplication_token`` setting."""

TRANSIENT_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY (e.g. replica lost its Keeper session)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER (the replica's Keeper session expired; a new one is being made)
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


_COLUMNAR_TYPES = re.compile(
    r"^(LowCardinality\()?(U?Int\d+|Float\d+|Bool|String|FixedString\(\d+\))\)?$"
)
"""Column types :meth:`ServerStore.query_columns` returns (numbers, strings as bytes)."""


class _NotSent(Exception):
    """Internal: the connection could not be opened, so nothing reached the server."""


def _driver() -> Any:
    try:
        import clickhouse_driver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the ClickHouse server backend needs clickhouse-driver: "
            "pip install 'llmops[clickhouse]'"
        ) from exc
    return clickhouse_driver


def _with_params(dsn: str, extra: Mapping[str, str], database: str | None = None) -> str:
    parts = urlparse(dsn)
    query = dict(parse_qsl(parts.query))
    query.update(extra)
    path = f"/{database}" if database is not None else parts.path
    return urlunparse(parts._replace(path=path, query=urlencode(query)))


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointed at ``database``."""
    return _with_params(dsn, {}, database=identifier(database))


class ServerStore:
    """ClickHouseStore over clickhouse-driver; ``dsn`` like
    ``clickhouse://user:password@host:9000/database`` (the database is created if missing)."""

    name = "server"

    def __init__(
        self,
        dsn: str,
        *,
        attempts: int = 6,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        send_receive_timeout_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        driver = _driver()
        self._errors = driver.errors
        self.database = identifier(urlparse(dsn).path.strip("/") or "default")
        timeouts = {
            "connect_timeout": str(connect_timeout_s),
            "send_receive_timeout": str(send_receive_timeout_s),
        }
        self._admin_url = _with_params(dsn, timeouts, database="default")
        self._url = _with_params(dsn, timeouts)
        self._np_url = _with_params(dsn, {**timeouts, "use_numpy": "1"})
        self._driver = driver
        self._local = threading.local()
        self._all_clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._server: tuple[tuple[int, int], tzinfo] | None = None
        self._database_ready = False
        self._replicated: dict[str, bool] = {}

    # -- per-thread clients ------------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any]:
        clients: tuple[Any, Any] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = (
                self._driver.Client.from_url(self._url),
                self._driver.Client.from_url(self._np_url),
            )
            self._local.clients = clients
            with self._clients_lock:
                self._all_clients.extend(clients)
        return clients

    @property
    def _client(self) -> Any:
        """This thread's client for queries and DDL."""
        return self._clients()[0]

    @property
    def _np_client(self) -> Any:
        """This thread's numpy client for columnar inserts."""
        return self._clients()[1]

    # -- public -----------------------------------------------------------------------------

    @property
    def dedup_tokens(self) -> bool:
        """Whether the server takes ``insert_deduplication_token`` (checked once)."""
        return self._server_info()[0] >= DEDUP_TOKEN_MIN_VERSION

    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the server, from the connection handshake."""
        return self._server_info()[0]

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run DDL/OPTIMIZE/INSERT...SELECT; retried on network errors like a query, so only
        use it for statements that are safe to repeat (our DDL is ``IF NOT EXISTS``)."""
        text = render(sql, params)
        self._retrying(self._client, lambda c: c.execute(text), idempotent=True)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        text = render(sql, params)
        settings = _deadline_settings()
        rows, types = self._retrying(
            self._client,
            lambda c: c.execute(text, with_column_types=True, settings=settings),
            idempotent=True,
        )
        zone = self._server_info()[1]
        return convert_rows([n for n, _ in types], [t for _, t in types], rows, zone)

    def query_columns(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, list[Any]]:
        """clickhouse-driver's columnar result with ``strings_as_bytes`` (no decoding)."""
        text = render(sql, params)
        columns, types = self._retrying(
            self._client,
            lambda c: c.execute(
                text,
                with_column_types=True,
                columnar=True,
                settings={"strings_as_bytes": True, **_deadline_settings()},
            ),
            idempotent=True,
        )
        out: dict[str, list[Any]] = {}
        for (name, kind), values in zip(types, columns or [[] for _ in types], strict=True):
            if not _COLUMNAR_TYPES.match(kind):
                raise ClickHouseQueryError(
                    f"query_columns reads numbers and strings only: column {name!r} is {kind} "
                    "(cast it in SQL, e.g. toString)"
                )
            out[name] = list(values)
        return out

    def insert(
        self,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> int:
        names = list(columns)
        data = [_numpy_column(columns[n]) for n in names]
        rows = len(data[0]) if data else 0
        if rows == 0:
            return 0
        if any(len(col) != rows for col in data):
            raise ValueError("columns differ in length")
        sql = f"INSERT INTO {self.database}.{identifier(table)} ({column_list(names)}) VALUES"
        settings: dict[str, Any] = {}
        tokens = dedup_token is not None and self.dedup_tokens
        if tokens:
            settings["insert_deduplication_token"] = dedup_token
            settings["deduplicate_blocks_in_dependent_materialized_views"] = 1
        safe_retry = tokens or self.replicated(table)
        self._retrying(
            self._np_client,
            lambda c: c.execute(sql, data, columnar=True, settings=settings),
            idempotent=safe_retry,
        )
        return rows

    def replicated(self, table: str) -> bool:
        """Whether ``table`` is a Replicated*MergeTree (read once per table and store: a
        table dropped and made again with another engine needs a new store)."""
        known = self._replicated.get(table)
        if known is None:
            rows = self.query(
                "SELECT engine FROM system.tables WHERE database = %(db)s AND name = %(table)s",
                {"db": self.database, "table": table},
            )
            known = bool(rows) and str(rows[0]["engine"]).startswith("Replicated")
            if rows:  # a table not made yet is asked about again
                self._replicated[table] = known
        return known

    def close(self) -> None:
        with self._clients_lock:
            clients, self._all_clients = self._all_clients, []
        for client in clients:
            client.disconnect()

    # -- internals --------------------------------------------------------------------------

    def _server_info(self) -> tuple[tuple[int, int], tzinfo]:
        if self._server is None:
            self._retrying(self._client, lambda c: None, idempotent=True)
            info = self._client.connection.server_info
            zone = info.timezone or "UTC"
            self._server = (
                (int(info.version_major), int(info.version_minor)),
                UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone),
            )
            if self._server[0] < DEDUP_TOKEN_MIN_VERSION:
                _log.warning(
                    "clickhouse.no_dedup_tokens",
                    server_version=f"{info.version_major}.{info.version_minor}",
                    detail="insert_deduplication_token unsupported; retried inserts rely on "
                    "the sink's high-water mark",
                )
        return self._server

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        with self._ready_lock:
            if self._database_ready:
                return
            admin = _driver().Client.from_url(self._admin_url)
            try:
                admin.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            finally:
                admin.disconnect()
            self._database_ready = True

    def _connect(self, client: Any, verify: bool) -> None:
        """Open the connection if needed. With ``verify`` (before an insert) an idle
        connection is pinged first, so a server restart shows up here, as "not sent",
        rather than mid-insert with an unknown outcome."""
        try:
            self._ensure_database()
            conn = client.connection
            if conn.connected and verify and not conn.ping():
                client.disconnect()
            if not conn.connected:
                conn.connect()
        except (self._errors.NetworkError, self._errors.SocketTimeoutError, OSError, EOFError) as e:
            client.disconnect()
            raise _NotSent(str(e)) from e

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, self._errors.ServerException):
            return int(getattr(exc, "code", 0)) in TRANSIENT_CODES
        return isinstance(
            exc,
            (
                self._errors.NetworkError,
                self._errors.SocketTimeoutError,
                self._errors.UnexpectedPacketFromServerError,
                OSError,
                EOFError,
            ),
        )

    def _retrying(self, client: Any, op: Callable[[Any], T], *, idempotent: bool) -> T:
        last: BaseException | None = None
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._delay(attempt))
            try:
                self._connect(client, verify=not idempotent)
                return op(client)
            except _NotSent as exc:
                last = exc
            except Exception as exc:
                if not self._transient(exc):
                    raise _query_error(exc) from exc
                client.disconnect()
                last = exc
                if not idempotent or _status_unknown(exc):
                    raise ClickHouseUnavailable(
                        f"ClickHouse insert failed after sending data, outcome unknown: {exc}"
                    ) from exc
            _log.info("clickhouse.retry", attempt=attempt + 1, error=str(last)[:200])
        raise ClickHouseUnavailable(
            f"ClickHouse unavailable after {self._attempts} attempts: {last}"
        ) from last

    def _delay(self, attempt: int) -> float:
        """Exponential back-off with full jitter in [base/2, base]: base doubles per retry."""
        base = min(self._max_backoff_s, self._backoff_s * float(2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)


def _status_unknown(exc: BaseException) -> bool:
    """UNKNOWN_STATUS_OF_INSERT (319): a replica lost ZooKeeper while committing the block.
    Never resent by the store, not even into a Replicated table: 18.16 was seen keeping
    such a part although ZooKeeper never recorded its block id, so the resend was stored as
    well (kill -9 of ZooKeeper under inserts). The caller checks what is stored (a sink, its
    high-water mark) before inserting again."""
    return int(getattr(exc, "code", 0) or 0) == 319


def _deadline_settings() -> dict[str, Any]:
    """``max_execution_time`` from the deadline of the RPC being served (none outside one)."""
    left = remaining_time()
    if left is None:
        return {}
    return {"max_execution_time": max(1, math.ceil(left))}


def _query_error(exc: BaseException) -> ClickHouseQueryError:
    return ClickHouseQueryError(str(exc), int(getattr(exc, "code", 0) or 0))


def _numpy_column(values: Sequence[Any]) -> Any:
    """numpy arrays pass through; other sequences become object arrays (strings, arrays,
    maps), which the driver's numpy writers accept for every type."""
    if isinstance(values, np.ndarray):
        return values
    if hasattr(values, "to_numpy"):  # pyarrow arrays (the bench's generator)
        return values.to_numpy(zero_copy_only=False)
    items = list(values)
    out = np.empty(len(items), dtype=object)
    if items and isinstance(items[0], (list, tuple, dict)):
        for i, item in enumerate(items):  # element-wise: numpy would broadcast nested lists
            out[i] = item
    else:
        out[:] = items
    return out
