"""The embedded backend: chdb (the ClickHouse 26.x engine in-process) behind ClickHouseStore.

chdb allows one data path per process, so the caller hands in the process's session (in
embedded mode every service shares it) and several stores may wrap one session. Statements
run under a per-session lock with ``USE <database>`` first, so unqualified table names
resolve in this store's database whatever other users of the session did. A statement made
while an RPC is served waits for the lock no longer than the caller's deadline
(ClickHouseUnavailable) and runs with ``max_execution_time`` set from it (+0.4 ms for the two
``SET`` statements), so a query nobody waits for stops instead of holding the session and
every sink behind it.

Inserts go columnar through Arrow: the columns become a ``pyarrow.Table`` typed from the
target table's schema (looked up once per table), and ``INSERT INTO t (...) SELECT ... FROM
Python(frame)`` reads it zero-copy, as one block. Measured on 2 cores (chdb 4.4), 1 M rows
of a 6-column table: 0.16 s via Arrow, 0.18 s via a pandas DataFrame, 0.3 s through an
``ArrowStream`` streaming insert; the full ``predictions`` rate is in ``llmops bench
clickhouse``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa  # type: ignore[import-untyped]

from llmops.callcontext import remaining_time
from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseUnavailable
from llmops.clickhouse.protobuf_rows import MESSAGE, SCHEMA_FILE, ProtobufBlock, insert_sql
from llmops.clickhouse.sql import column_list, identifier, quote_string, render
from llmops.clickhouse.values import convert_rows, split_args

_INSERT_SETTINGS = (
    "async_insert = 0, max_block_size = {rows}, "
    "min_insert_block_size_rows = 0, min_insert_block_size_bytes = 0, "
    "min_insert_block_size_rows_for_materialized_views = 1048576, "
    "min_insert_block_size_bytes_for_materialized_views = 268435456, "
    "deduplicate_blocks_in_dependent_materialized_views = 1, "
    "parallel_view_processing = 1"
)
"""One source block of all rows, no re-squashing (the batch is already one block); the
rollup views' output squashed again (their GROUP BY hands over one block per bucket: with
squashing off, 50,000 predictions made ~13-28 parts in ``prediction_stages_1h`` per insert,
and the insert ran 3x slower); the rollup views of one insert side by side (see
:meth:`ChdbStore.insert`)."""
_FORMAT_SCHEMA = f"format_schema = {quote_string(f'{SCHEMA_FILE}:{MESSAGE}')}"
"""The setting naming the message every protobuf block is parsed as."""
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
"""Where protobuf blocks are written for chdb to read: memory, where the system has it."""


def _scratch_files(pieces: Sequence[bytes]) -> str:
    """``pieces`` as files ``0.pb``, ``1.pb``, ... of a new scratch directory (the caller
    deletes it): in ``/dev/shm`` unless it is missing or full (containers often give it
    64 MiB), then in the temporary directory."""
    for directory in (_SCRATCH, None) if _SCRATCH else (None,):
        scratch = tempfile.mkdtemp(prefix="llmops-sink-", dir=directory)
        try:
            for k, data in enumerate(pieces):
                fd = os.open(os.path.join(scratch, f"{k}.pb"), os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            if directory is None:
                raise
            continue
        return scratch
    raise AssertionError("unreachable")


def _protobuf_source(scratch: str, block: ProtobufBlock) -> str:
    """``file(...)`` over the block's pieces in ``scratch`` (a glob when there are several:
    ClickHouse then parses them in parallel)."""
    n = len(block.pieces)
    name = "0.pb" if n == 1 else "{" + ",".join(str(k) for k in range(n)) + "}.pb"
    path = os.path.join(scratch, name)
    return f"file({quote_string(path)}, 'Protobuf', {quote_string(block.structure)})"


_SESSION_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_CODE = re.compile(r"Code: (\d+)\.")


def _session_lock(session: Any) -> threading.RLock:
    with _LOCKS_GUARD:
        return _SESSION_LOCKS.setdefault(id(session), threading.RLock())


def _error(exc: Exception, sql: str) -> ClickHouseQueryError:
    text = str(exc)
    match = _CODE.search(text)
    return ClickHouseQueryError(f"{text} [sql: {sql[:300]}]", int(match.group(1)) if match else 0)


class ChdbStore:
    """ClickHouseStore on a chdb ``session.Session`` (not owned: ``close`` leaves it open)."""

    name = "chdb"

    def __init__(self, session: Any, *, database: str = "default") -> None:
        self.database = identifier(database)
        self._session = session
        self._lock = _session_lock(session)
        self._schemas: dict[str, pa.Schema] = {}
        self._zone: tzinfo = UTC  # until the session's zone is known (just below)
        with self._lock:
            self._raw(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self._zone = self._session_zone()

    # -- statements -----------------------------------------------------------------------

    def _raw(self, sql: str, fmt: str = "CSV") -> Any:
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:  # chdb raises its own ChdbError/RuntimeError types
            raise _error(exc, sql) from exc

    def _run(self, sql: str, fmt: str = "CSV") -> Any:
        left = remaining_time()
        if left is None:  # not serving an RPC (sinks, schedules): no deadline
            with self._lock:
                self._raw(f"USE {self.database}")
                return self._raw(sql, fmt)
        # Serving an RPC: wait for the session no longer than the caller does, and make the
        # engine stop the statement when the caller has given up (it would otherwise keep
        # running and hold the session — and every sink — behind it).
        if not self._lock.acquire(timeout=max(left, 0.0)):
            raise ClickHouseUnavailable(
                "the embedded ClickHouse (chdb) stayed busy with other statements past the "
                "caller's deadline"
            )
        try:
            self._raw(f"USE {self.database}")
            self._raw(f"SET max_execution_time = {max(1, math.ceil(left))}")
            try:
                return self._raw(sql, fmt)
            finally:
                self._raw("SET max_execution_time = 0")
        finally:
            self._lock.release()

    def _session_zone(self) -> tzinfo:
        name = self.query("SELECT timezone() AS tz")[0]["tz"]
        return UTC if name in ("UTC", "Etc/UTC") else ZoneInfo(name)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(render(sql, params))

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raw = self._run(render(sql, params), "JSONCompact").bytes()
        if not raw.strip():
            return []
        doc = orjson.loads(raw)
        names = [m["name"] for m in doc["meta"]]
        types = [m["type"] for m in doc["meta"]]
        return convert_rows(names, types, doc["data"], self._zone)

    def query_columns(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, list[Any]]:
        """Through Arrow: the result comes as an Arrow stream read zero-copy from chdb's
        buffer, each column turned into a list by pyarrow (100k rows of (UInt64, String,
        String) on 2 cores: ~1.3 M rows/s for the conversion, vs ~0.2 M rows/s for the
        JSON rows of :meth:`query`)."""
        result = self._run(render(sql, params), "ArrowStream")
        if not result.size():
            return {}
        table = pa.ipc.open_stream(pa.py_buffer(result.get_memview().view())).read_all()
        return {name: _column_list(name, table.column(name)) for name in table.column_names}

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table | None:
        """A SELECT as one Arrow table, copied out of chdb's buffer (None when it returns no
        block): the bulk path of exports, no Python object per value. chdb only."""
        result = self._run(render(sql, params), "ArrowStream")
        if not result.size():
            return None
        data = bytes(result.get_memview().view())  # a copy: chdb frees it with ``result``
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()

    def query_text(self, sql: str, params: Mapping[str, Any] | None, fmt: str) -> bytes:
        """A SELECT in one of ClickHouse's text output formats (e.g. ``JSONEachRow``), as the
        bytes ClickHouse wrote. chdb only."""
        return bytes(self._run(render(sql, params), fmt).bytes())

    # -- inserts --------------------------------------------------------------------------

    def insert(
        self,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> int:
        """Insert one block through Arrow. With ``dedup_token`` the insert carries
        ``insert_deduplication_token`` (the tables set ``non_replicated_deduplication_window``
        so it works on plain MergeTree, and materialized views dedupe with it too)."""
        names = list(columns)
        rows = _row_count(columns)
        if rows == 0:
            return 0
        frame = self._arrow_table(table, columns)  # noqa: F841  (read by Python(frame))
        # One source block of all rows, no re-squashing: the batch is already one block.
        # Measured 1M prediction rows: 1.1 s with these, ~4 s with the defaults.
        # parallel_view_processing: the materialized views of one insert run side by side
        # instead of one after another (100k predictions with the 3 rollup MVs, 2 vCPU:
        # ~200k -> ~250k rows/s).
        settings = _INSERT_SETTINGS.format(rows=max(rows, 65536))
        if dedup_token is not None:
            settings += f", insert_deduplication_token = {quote_string(dedup_token)}"
        cols = column_list(names)
        sql = (
            f"INSERT INTO {self.database}.{identifier(table)} ({cols}) "
            f"SETTINGS {settings} SELECT {cols} FROM Python(frame)"
        )
        with self._lock:
            # Python(frame) resolves ``frame`` in this very frame: keep the call here.
            try:
                self._session.query(sql, "CSV")
            except Exception as exc:
                self._schemas.pop(table, None)
                raise _error(exc, sql) from exc
        return rows

    def insert_protobuf(
        self, table: str, block: ProtobufBlock, *, dedup_token: str | None = None
    ) -> int:
        """Insert one block that ClickHouse parses from length-delimited protobuf messages
        (:mod:`llmops.clickhouse.protobuf_rows`). chdb reads them from a file: written to
        memory-backed ``/dev/shm`` where there is one, deleted after the insert."""
        if block.rows == 0:
            return 0
        settings = _INSERT_SETTINGS.format(rows=max(block.rows, 65536))
        if len(block.pieces) > 1:
            # Pieces parsed side by side, squashed back into one block of every row (one
            # part: the insert stays atomic, and its token names it).
            settings += (
                f", min_insert_block_size_rows = {block.rows}, min_insert_block_size_bytes = 0"
                ", max_insert_threads = 1"
            )
        settings += f", {_FORMAT_SCHEMA}"
        if dedup_token is not None:
            settings += f", insert_deduplication_token = {quote_string(dedup_token)}"
        qualified = f"{self.database}.{identifier(table)}"
        self._over_pieces(block, lambda source: insert_sql(qualified, block, source, settings))
        return block.rows

    def query_protobuf(self, block: ProtobufBlock) -> pa.Table:
        """``block.select`` over the block's messages (nothing inserted), as one Arrow
        table with a column per name in ``block.columns``."""
        order = f" ORDER BY {block.order_by}" if block.order_by else ""
        data = self._over_pieces(
            block,
            lambda source: f"{block.select} FROM {source}{order} SETTINGS {_FORMAT_SCHEMA}",
            "ArrowStream",
        )
        if not data:
            return pa.table({name: pa.array([]) for name in block.columns})
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()

    def _over_pieces(
        self, block: ProtobufBlock, statement: Callable[[str], str], fmt: str = "CSV"
    ) -> bytes:
        """Run ``statement(source)``, ``source`` reading the block's pieces from scratch files
        (deleted after), under the session lock; the result's bytes (a copy: chdb frees
        its buffer with the result)."""
        scratch = _scratch_files(block.pieces)
        try:
            sql = statement(_protobuf_source(scratch, block))
            with self._lock:
                try:
                    result = self._session.query(sql, fmt)
                except Exception as exc:
                    raise _error(exc, sql) from exc
                return bytes(result.get_memview().view()) if result.size() else b""
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _arrow_table(self, table: str, columns: Mapping[str, Sequence[Any]]) -> pa.Table:
        schema = self._schema(table)
        if any(name not in schema.names for name in columns):  # altered since cached?
            self._schemas.pop(table, None)
            schema = self._schema(table)
        arrays, fields = [], []
        for name, values in columns.items():
            try:
                arrow_type = schema.field(name).type
            except KeyError:
                raise ClickHouseQueryError(f"{table} has no column {name!r}", 16) from None
            arrays.append(_to_arrow(values, arrow_type))
            fields.append(pa.field(name, arrow_type, nullable=False))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def _schema(self, table: str) -> pa.Schema:
        cached = self._schemas.get(table)
        if cached is None:
            rows = self.query(
                "SELECT name, type FROM system.columns WHERE database = %(db)s "
                "AND table = %(table)s ORDER BY position",
                {"db": self.database, "table": table},
            )
            if not rows:
                raise ClickHouseQueryError(f"unknown table {self.database}.{table}", 60)
            cached = pa.schema([pa.field(r["name"], arrow_type(r["type"])) for r in rows])
            self._schemas[table] = cached
        return cached

    def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""


def _column_list(name: str, column: pa.ChunkedArray) -> list[Any]:
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary())
    elif not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        raise ClickHouseQueryError(
            f"query_columns reads numbers and strings only: column {name!r} is {kind} "
            "(cast it in SQL, e.g. toString)",
            0,
        )
    values: list[Any] = column.to_pylist()
    return values


def _row_count(columns: Mapping[str, Sequence[Any]]) -> int:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    return lengths.pop() if lengths else 0


def _to_arrow(values: Sequence[Any], arrow_type: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == arrow_type else values.cast(arrow_type)
    if pa.types.is_map(arrow_type) and not isinstance(values, pa.Array):
        values = [list(m.items()) if isinstance(m, dict) else m for m in values]
    return pa.array(values, type=arrow_type, from_pandas=False)


_SIMPLE_ARROW: dict[str, pa.DataType] = {
    "String": pa.string(),
    "UUID": pa.string(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Bool": pa.bool_(),
    "Date": pa.date32(),
    "Date32": pa.date32(),
    "DateTime": pa.timestamp("s"),
    "IPv4": pa.string(),
    "IPv6": pa.string(),
}


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type that chdb's ``Python()`` reads into ClickHouse type ``type_name``.

    UUID travels as its text form and Enum as its name (ClickHouse converts them on insert);
    DateTime64(p) as ``timestamp`` in ms/us/ns (UTC epoch); FixedString as binary.
    """
    t = type_name.strip()
    if t in _SIMPLE_ARROW:
        return _SIMPLE_ARROW[t]
    head, _, rest = t.partition("(")
    args = split_args(rest[:-1]) if rest else []
    if head in ("LowCardinality", "Nullable"):
        return arrow_type(args[0])
    if head == "DateTime":
        return pa.timestamp("s")
    if head == "DateTime64":
        return pa.timestamp({3: "ms", 6: "us"}.get(int(args[0]), "ns"))
    if head == "Array":
        return pa.list_(pa.field("item", arrow_type(args[0]), nullable=False))
    if head == "Map":
        return pa.map_(arrow_type(args[0]), arrow_type(args[1]))
    if head == "FixedString":
        return pa.binary()
    if head.startswith("Enum"):
        return pa.string()
    if head.startswith("Decimal"):
        return pa.float64()
    raise ValueError(f"no Arrow mapping for ClickHouse type {type_name}")
