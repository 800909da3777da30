"""Safe SQL text for both backends: literals, identifiers and ``%(name)s`` parameters.

Every user value reaches ClickHouse as a literal rendered here, never through an f-string:
strings are quoted with backslash escapes (ClickHouse's own string-literal syntax), numbers
are validated, times must carry a time zone. The same rendering is used by the chdb and the
server backend, so a query behaves the same on both. Only ``%(name)s`` tokens are
placeholders; any other ``%`` (``LIKE 'a%'``) is left alone.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
}
_ESCAPE_RE = re.compile("[\\\\'\0\b\f\r\n\t]")


def quote_string(value: str) -> str:
    """A ClickHouse string literal for ``value``."""
    return "'" + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value) + "'"


def quote_bytes(value: bytes) -> str:
    """A string literal holding exactly these bytes (``\\xNN`` for every byte)."""
    return "'" + "".join(f"\\x{b:02x}" for b in value) + "'"


def identifier(name: str) -> str:
    """A validated plain identifier (table, column, database); raises ValueError otherwise.

    Only ``[A-Za-z_][A-Za-z0-9_]*``: no quoting games, so it reads the same on 18.16 and 26.x.
    """
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain ClickHouse identifier: {name!r}")
    return name


def _datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if utc.microsecond:
        return f"toDateTime64('{text}.{utc.microsecond:06d}', 6, 'UTC')"
    return f"toDateTime('{text}', 'UTC')"


def literal(value: Any) -> str:
    """Render one Python value as a ClickHouse literal.

    None -> NULL; bool -> 1/0 (18.16 has no true/false); int, float (nan/inf allowed),
    Decimal; str; bytes; aware datetime -> ``toDateTime('...', 'UTC')`` (or
    ``toDateTime64(..., 6, 'UTC')`` with microseconds); date; timedelta -> seconds as a
    number; UUID; list -> array ``[...]``; tuple/set/frozenset -> tuple ``(...)`` (for IN).
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"non-finite Decimal {value}")
        return str(value)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return quote_bytes(bytes(value))
    return _structured(value)


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _structured(value: Any) -> str:
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, date):
        return f"toDate('{value.isoformat()}')"
    if isinstance(value, timedelta):
        return _float(value.total_seconds())
    if isinstance(value, uuid.UUID):
        return f"toUUID('{value}')"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, (tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        inner = ", ".join(literal(v) for v in items)
        return f"({inner},)" if len(items) == 1 else f"({inner})"
    raise TypeError(f"cannot render {type(value).__name__} as a ClickHouse literal")


def render(sql: str, params: Mapping[str, Any] | None) -> str:
    """Substitute ``%(name)s`` placeholders with literals; KeyError names a missing one.

    Without ``params`` the text is returned unchanged (placeholders included, which then
    fail in ClickHouse as a syntax error rather than silently becoming something else).
    """
    if not params:
        return sql
    return _PLACEHOLDER.sub(lambda m: literal(params[m.group(1)]), sql)


def column_list(names: Sequence[str]) -> str:
    """``a, b, c`` with every name validated as an identifier."""
    return ", ".join(identifier(n) for n in names)


def split_statements(text: str) -> list[str]:
    """Split a migration file into statements at lines holding only ``;``, or at a ``;``
    that ends a line. ``--`` comment lines are dropped; empty statements are skipped.

    Statements must not contain ``;`` at a line end inside string literals (migrations are
    written by us, not users).
    """
    statements: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("--"):
            continue
        if line.endswith(";"):
            current.append(line[:-1])
            statements.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current).strip())
    return [s for s in statements if s]
