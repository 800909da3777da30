"""Result values in Python types, the same from both backends.

chdb answers in JSONCompact (values as JSON plus the ClickHouse type of each column);
clickhouse-driver answers in Python objects with the column types. Both go through a
converter built once per type string: DateTime/DateTime64 become timezone-aware ``datetime``
in UTC, Date ``date``, UUID ``uuid.UUID``, Decimal ``Decimal``, Map ``dict``, Array ``list``,
Tuple ``tuple`` (a named tuple from chdb's JSON becomes a tuple of its values too),
Enum the name as ``str``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

Converter = Callable[[Any], Any]

_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}"
)


def request_uuid(request_id: str) -> str:
    """The UUID under which ``predictions.request_id`` stores a request id, as text.

    A UUID (canonical, or 32 hex digits) is itself, lowercased; any other id is the UUID of
    the first 16 bytes of its SHA-256 (in SQL: ``toUUID(UUIDNumToString(toFixedString(
    substring(SHA256(id), 1, 16), 16)))``, used by migration 0003), so a caller's own id
    still finds its rows. The empty id maps to the hash of '' like any other.
    """
    if _UUID_TEXT.fullmatch(request_id):
        return str(uuid.UUID(request_id)) if len(request_id) == 32 else request_id.lower()
    return str(uuid.UUID(bytes=hashlib.sha256(request_id.encode()).digest()[:16]))


def _identity(value: Any) -> Any:
    return value


def split_args(inner: str) -> list[str]:
    """Top-level comma-separated arguments of a type, e.g. ``String, Array(UInt8)``."""
    args: list[str] = []
    depth, start, quoted = 0, 0, False
    for i, ch in enumerate(inner):
        if ch == "'" and (i == 0 or inner[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return [a for a in args if a]


def _outer(type_name: str) -> tuple[str, str]:
    """``Array(UInt8)`` -> (``Array``, ``UInt8``); ``String`` -> (``String``, ``""``)."""
    if "(" not in type_name or not type_name.endswith(")"):
        return type_name, ""
    head, _, rest = type_name.partition("(")
    return head.strip(), rest[:-1]


def _zone(args: list[str], default: tzinfo) -> tzinfo:
    for arg in args:
        if arg.startswith("'"):
            name = arg.strip("'")
            return UTC if name in ("UTC", "Etc/UTC") else ZoneInfo(name)
    return default


def _text_datetime(zone: tzinfo) -> Converter:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, datetime):  # the driver's objects
            aware = value if value.tzinfo else value.replace(tzinfo=zone)
            return aware.astimezone(UTC)
        return datetime.fromisoformat(value).replace(tzinfo=zone).astimezone(UTC)

    return convert


def _date(value: Any) -> Any:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)


def _uuid(value: Any) -> Any:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(value)


def _decimal(value: Any) -> Any:
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def _array(item: Converter) -> Converter:
    if item is _identity:
        return lambda v: None if v is None else list(v)
    return lambda v: None if v is None else [item(x) for x in v]


def _map(key: Converter, val: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        pairs = value.items() if isinstance(value, dict) else value
        return {key(k): val(v) for k, v in pairs}

    return convert


def _tuple(items: list[Converter]) -> Converter:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        values = value.values() if isinstance(value, dict) else value
        return tuple(c(v) for c, v in zip(items, values, strict=True))

    return convert


def _tuple_element(arg: str) -> str:
    """The type of a (possibly named) tuple element: ``a UInt8`` -> ``UInt8``."""
    head, _, tail = arg.partition(" ")
    if tail and "(" not in head and head[:1].islower() and not head.startswith("'"):
        return tail.strip()
    return arg


@lru_cache(maxsize=512)
def converter(type_name: str, default_zone: tzinfo = UTC) -> Converter:
    """A function turning one value of ClickHouse type ``type_name`` into its Python form.

    ``default_zone`` is the zone of DateTime values whose type names none (the server's or
    session's time zone).
    """
    head, inner = _outer(type_name.strip())
    args = split_args(inner) if inner else []
    if head in ("LowCardinality", "Nullable", "SimpleAggregateFunction"):
        return converter(args[-1], default_zone)
    if head in ("DateTime", "DateTime64"):
        return _text_datetime(_zone(args, default_zone))
    if head in ("Date", "Date32"):
        return _date
    if head == "UUID":
        return _uuid
    if head.startswith("Decimal"):
        return _decimal
    if head == "Array":
        return _array(converter(args[0], default_zone))
    if head == "Map":
        return _map(converter(args[0], default_zone), converter(args[1], default_zone))
    if head == "Tuple":
        return _tuple([converter(_tuple_element(a), default_zone) for a in args])
    return _identity


def convert_rows(
    names: list[str], types: list[str], rows: list[Any], default_zone: tzinfo = UTC
) -> list[dict[str, Any]]:
    """Rows (sequences in column order) to dicts of converted values."""
    convs = [converter(t, default_zone) for t in types]
    if all(c is _identity for c in convs):
        return [dict(zip(names, row, strict=True)) for row in rows]
    return [{n: c(v) for n, c, v in zip(names, convs, row, strict=True)} for row in rows]
