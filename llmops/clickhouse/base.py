"""The ClickHouse store interface: one protocol, two backends with the same DDL and queries.

``chdb`` runs the modern ClickHouse engine in-process (the embedded default and the
reference for the schema); ``server`` speaks the native protocol to a ClickHouse server or
cluster through clickhouse-driver. Callers pass SQL with ``%(name)s`` placeholders and the
values in ``params``; both backends render them as escaped literals with
:func:`llmops.clickhouse.sql.render` (never string formatting of user values). Columnar
inserts are a mapping of column name to a sequence or numpy array. Unqualified table names
resolve in the store's ``database``. Results come back in Python types: int, float, str,
Decimal, UUID, date, timezone-aware UTC datetime, list, dict (Map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llmops.errors import LLMOpsError, Unavailable

if TYPE_CHECKING:
    from llmops.clickhouse.protobuf_rows import ProtobufBlock


class ClickHouseUnavailable(Unavailable):
    """The server cannot be reached or refused the operation for a transient reason."""


class ClickHouseQueryError(LLMOpsError):
    """ClickHouse rejected a statement for a non-transient reason (syntax, unknown table,
    type mismatch). ``ch_code`` is ClickHouse's numeric error code (0 when unknown)."""

    code = "INTERNAL"

    def __init__(self, message: str, ch_code: int = 0) -> None:
        super().__init__(message)
        self.ch_code = ch_code


class ClickHouseStore(Protocol):
    name: str
    """``chdb`` or ``server``."""
    database: str
    """Database that unqualified table names resolve in."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT, OPTIMIZE)."""
        ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts, in result order, values in Python types."""
        ...

    def query_columns(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, list[Any]]:
        """The columns of a SELECT by name, each a list in result order: the bulk-read path
        (no dict per row; VerifyAudit reads its batches this way). Numbers come as int/float,
        ``String`` and ``FixedString`` as **bytes** (undecoded, as ClickHouse stores them).
        Only those are portable: cast other types in SQL (the server backend refuses them
        with :class:`ClickHouseQueryError`; chdb refuses arrays, maps and timestamps but
        hands DateTime over as its epoch seconds, as Arrow carries it). An empty result has
        every column, empty (``{}`` only if a backend sends no schema)."""
        ...

    def insert(
        self,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> int:
        """Insert one block of rows given column-wise (all columns the same length); return
        the row count. The block is atomic. With ``dedup_token``, a repeated insert of the
        same token is ignored (ClickHouse insert deduplication), so a retry after an unclear
        failure cannot double-insert."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ProtobufInsertStore(Protocol):
    """A store that can hand ClickHouse the records' bytes to parse (its ``Protobuf`` input
    format; :mod:`llmops.clickhouse.protobuf_rows`)."""

    def insert_protobuf(
        self, table: str, block: ProtobufBlock, *, dedup_token: str | None = None
    ) -> int:
        """Insert the block's rows atomically, as :meth:`ClickHouseStore.insert` does."""
        ...

    def query_protobuf(self, block: ProtobufBlock) -> Any:
        """``block.select`` over the block's messages, nothing inserted: a ``pyarrow.Table``
        with a column per name in ``block.columns`` (a sink's screen of a batch)."""
        ...
