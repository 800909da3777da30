"""How entity keys, feature names and values are written to the online store.

Layout (both online stores; the Redis one is documented in the service README):

- one record (a Redis hash) per entity key: ``<namespace>:<entity>:<key text>``, where the
  key text is the join-key values in declared order, joined by ``:`` — INT64 in decimal,
  STRING with ``\\`` and ``:`` backslash-escaped, BYTES in hex, BOOL as 0/1. E.g.
  ``llmops:feat:property:4242``. Every command touches one key, so any key layout is safe
  for Redis Cluster slots; no hash tags are needed.
- one field per feature: the 4-byte BLAKE2b of ``<view>:<feature>`` (Feast hashes field
  names the same way, with murmur3: 20 names of ~25 characters per record cost 500 bytes;
  4-byte ids cost 80). Collisions within an entity are rejected when a plan is built.
- one field per view: the 4-byte BLAKE2b of ``_ts:<view>``, the view's event time in
  microseconds since the epoch, as decimal text.
- values: the serialized ``llmops.v1.Value`` (type-tagged and compact; parsed straight into
  the response).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2
from services.feature.registry import EntityDef, FeatureDef

TYPE_KINDS: dict[str, str] = {
    "INT64": "int64_value",
    "DOUBLE": "double_value",
    "STRING": "string_value",
    "BOOL": "bool_value",
    "BYTES": "bytes_value",
    "INT64_LIST": "int64_list_value",
    "DOUBLE_LIST": "double_list_value",
    "STRING_LIST": "string_list_value",
    "BOOL_LIST": "bool_list_value",
    "FLOAT_VECTOR": "float_vector_value",
    "TIMESTAMP": "timestamp_value",
}
"""Registry type -> the ``Value.kind`` field that carries it."""

KIND_TYPES = {kind: name for name, kind in TYPE_KINDS.items()}


@lru_cache(maxsize=65536)
def field_id(view: str, feature: str) -> bytes:
    """The online-store field of one feature."""
    return hashlib.blake2b(f"{view}:{feature}".encode(), digest_size=4).digest()


@lru_cache(maxsize=4096)
def ts_field(view: str) -> bytes:
    """The online-store field holding a view's event time (µs)."""
    return hashlib.blake2b(f"_ts:{view}".encode(), digest_size=4).digest()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def key_text(entity: EntityDef, key: common_pb2.EntityKey, where: str) -> str:
    """The join-key values of ``key`` as text; validates them against ``entity``.

    ``where`` is the request path of ``key`` for error messages (``entity_keys[3]``).
    """
    if key.entity != entity.name:
        raise InvalidArgument(
            f"{where}.entity",
            f"is {key.entity!r}; the requested views are keyed by {entity.name!r}",
        )
    columns = key.columns
    joins = entity.join_keys
    if len(columns) != len(joins):
        expected = ", ".join(j.name for j in joins)
        raise InvalidArgument(f"{where}.columns", f"{entity.name} has join keys ({expected})")
    parts: list[str] = []
    for i, (column, join) in enumerate(zip(columns, joins, strict=True)):
        if column.name != join.name:
            raise InvalidArgument(
                f"{where}.columns[{i}].name", f"is {column.name!r}, expected {join.name!r}"
            )
        value = column.value
        kind = value.WhichOneof("kind")
        if kind != TYPE_KINDS[join.type]:
            got = KIND_TYPES.get(kind or "", kind or "unset")
            raise InvalidArgument(
                f"{where}.columns[{i}].value", f"{join.name} is {join.type}, got {got}"
            )
        if kind == "int64_value":
            parts.append(str(value.int64_value))
        elif kind == "string_value":
            parts.append(_escape(value.string_value))
        elif kind == "bytes_value":
            parts.append(value.bytes_value.hex())
        else:
            parts.append("1" if value.bool_value else "0")
    return ":".join(parts)


def check_value(feature: FeatureDef, value: common_pb2.Value, where: str) -> None:
    """Raise INVALID_ARGUMENT naming ``where`` unless ``value`` fits ``feature``'s type.

    An explicit ``null_value`` fits every type (the feature is known to have no value).
    """
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        return
    if kind != TYPE_KINDS[feature.type]:
        got = KIND_TYPES.get(kind or "", kind or "no value")
        raise InvalidArgument(where, f"{feature.name} is {feature.type}, got {got}")
    if feature.dimension is not None:
        size = len(value.float_vector_value.values)
        if size != feature.dimension:
            raise InvalidArgument(
                where, f"{feature.name} is a FLOAT_VECTOR of {feature.dimension}, got {size}"
            )


def check_unique_fields(entity: str, fields: Sequence[tuple[str, bytes]]) -> None:
    """Fail loudly if two names of one entity hash to the same 4-byte field id."""
    seen: dict[bytes, str] = {}
    for name, fid in fields:
        other = seen.setdefault(fid, name)
        if other != name:
            raise InvalidArgument(
                "registry", f"{other} and {name} of entity {entity} share a field id; rename one"
            )
