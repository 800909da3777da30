"""Metadata of vector collections: schema checks, Value conversion and compiled filters.

A collection declares a *metadata schema* (field name -> ``common_pb2.ValueType``). Items
carry metadata as a flat dict of plain Python values; declared fields must hold their
declared type and are the only ones a filter may use, undeclared keys are stored as they
come but are not filterable (``Collection.metadata_schema`` in the contract).

Plain values
    ``None`` (explicit null), ``bool``, ``int`` (int64 range), ``float``, ``str`` and
    homogeneous lists of bool / int / float / str. These are what ``values_to_metadata``
    makes from contract ``Value`` maps, what ``metadata_to_values`` turns back into them,
    and what survives the collection's JSON state unchanged. Value kinds without a plain
    form here (bytes, float vectors, timestamps) are refused with ``InvalidArgument``.

Schema types
    INT64, DOUBLE, STRING, BOOL, INT64_LIST, DOUBLE_LIST, STRING_LIST, BOOL_LIST. A declared
    field may hold null. An int given for a DOUBLE field (or in a DOUBLE_LIST) is stored as a
    float, so stored values always have the declared type.

Filter semantics (``compile_filter``)
    ``condition.field`` must be a declared field (used verbatim: metadata is flat).
    Operators per type: numbers (INT64, DOUBLE) EQ NE LT LTE GT GTE IN NOT_IN EXISTS; STRING
    the same plus CONTAINS (substring); BOOL EQ NE IN NOT_IN EXISTS; list types CONTAINS (an
    element equals the value) and EXISTS. The value must fit the field: a number (int64 or
    double) for number fields, a string for STRING, a bool for BOOL, a list kind of the same
    element type (or an empty list of any kind) for IN / NOT_IN, the element type for a
    list field's CONTAINS; EXISTS ignores it. EQ, IN, the orderings and CONTAINS need a
    present, non-null value; NE is exactly ``not EQ`` and NOT_IN exactly ``not IN`` (so items
    lacking the field match them); EXISTS is true when the key is present, even with null.
    NaN equals and orders nothing. ``all_of`` of nothing matches everything, ``any_of`` of
    nothing matches nothing; an empty Filter matches everything (``CompiledFilter.is_empty``
    tells the caller it was empty).

Fast matching (``MetadataIndex``)
    Per declared field, an inverted index: value (for list fields: each element) -> set of
    internal ids, plus the set of ids that have the field at all, plus the set of every live
    id (the universe that NE, NOT_IN and negate subtract from). EQ and IN are dict lookups,
    orderings bisect a lazily sorted list of the distinct values, CONTAINS on strings scans
    the distinct values; all_of / any_of / negate are set intersection / union / difference.
    A filter thus costs about the number of distinct values it touches plus the ids it
    yields, never a scan of every item's metadata.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2

__all__ = [
    "MATCH_ALL",
    "MAX_FIELD_NAME_BYTES",
    "MAX_FILTER_DEPTH",
    "SUPPORTED_TYPES",
    "CompiledFilter",
    "MetadataIndex",
    "compile_filter",
    "metadata_to_values",
    "python_to_value",
    "validate_metadata",
    "validate_schema",
    "value_to_python",
    "values_to_metadata",
]

VT = common_pb2.ValueType
_Op = common_pb2.FieldCondition

MAX_FILTER_DEPTH: Final = 32
"""Deepest allowed nesting of Filter messages; the root filter is level 1."""
MAX_FIELD_NAME_BYTES: Final = 256
"""Longest metadata key, in UTF-8 bytes."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_NUMBER_TYPES: Final = frozenset({VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_DOUBLE})
_LIST_TYPES: Final = frozenset(
    {
        VT.VALUE_TYPE_INT64_LIST,
        VT.VALUE_TYPE_DOUBLE_LIST,
        VT.VALUE_TYPE_STRING_LIST,
        VT.VALUE_TYPE_BOOL_LIST,
    }
)
SUPPORTED_TYPES: Final = frozenset(
    {VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_STRING, VT.VALUE_TYPE_BOOL}
    | _LIST_TYPES
)
"""Schema types a metadata field may be declared with."""

# List type -> the scalar type of its elements.
_ELEMENT_TYPE: Final[dict[int, int]] = {
    VT.VALUE_TYPE_INT64_LIST: VT.VALUE_TYPE_INT64,
    VT.VALUE_TYPE_DOUBLE_LIST: VT.VALUE_TYPE_DOUBLE,
    VT.VALUE_TYPE_STRING_LIST: VT.VALUE_TYPE_STRING,
    VT.VALUE_TYPE_BOOL_LIST: VT.VALUE_TYPE_BOOL,
}
_LIST_OF: Final[dict[int, int]] = {v: k for k, v in _ELEMENT_TYPE.items()}

_ORDERINGS: Final = frozenset(
    {_Op.OPERATOR_LT, _Op.OPERATOR_LTE, _Op.OPERATOR_GT, _Op.OPERATOR_GTE}
)
_SCALAR_OPS: Final = frozenset(
    {_Op.OPERATOR_EQ, _Op.OPERATOR_NE, _Op.OPERATOR_IN, _Op.OPERATOR_NOT_IN}
)
_OPS_BY_TYPE: Final[dict[int, frozenset[int]]] = {
    VT.VALUE_TYPE_INT64: _SCALAR_OPS | _ORDERINGS | {_Op.OPERATOR_EXISTS},
    VT.VALUE_TYPE_DOUBLE: _SCALAR_OPS | _ORDERINGS | {_Op.OPERATOR_EXISTS},
    VT.VALUE_TYPE_STRING: _SCALAR_OPS | _ORDERINGS | {_Op.OPERATOR_EXISTS, _Op.OPERATOR_CONTAINS},
    VT.VALUE_TYPE_BOOL: _SCALAR_OPS | {_Op.OPERATOR_EXISTS},
    **{t: frozenset({_Op.OPERATOR_CONTAINS, _Op.OPERATOR_EXISTS}) for t in _LIST_TYPES},
}


def _type_name(value_type: int) -> str:
    try:
        return VT.Name(value_type).removeprefix("VALUE_TYPE_")  # type: ignore[arg-type]
    except ValueError:
        return str(value_type)


def _op_name(op: int) -> str:
    return _Op.Operator.Name(op).removeprefix("OPERATOR_")  # type: ignore[arg-type]


def key_path(where: str, key: str) -> str:
    """``where["key"]``: the request path of one map entry (the key JSON-quoted)."""
    return f"{where}[{json.dumps(key, ensure_ascii=False)}]"


# --------------------------------------------------------------------------------------------
# Schema and values


def validate_schema(
    schema: Mapping[str, int], where: str = "collection.metadata_schema"
) -> dict[str, int]:
    """Check a metadata schema (non-empty field names, supported types); return a copy."""
    out: dict[str, int] = {}
    for name, value_type in schema.items():
        path = key_path(where, name)
        if not name:
            raise InvalidArgument(path, "field name must not be empty")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_FIELD_NAME_BYTES:
            raise InvalidArgument(path, f"field name is longer than {MAX_FIELD_NAME_BYTES} bytes")
        if value_type not in SUPPORTED_TYPES:
            supported = ", ".join(sorted(_type_name(t) for t in SUPPORTED_TYPES))
            raise InvalidArgument(
                path, f"type {_type_name(value_type)} is not supported (use one of {supported})"
            )
        out[name] = int(value_type)
    return out


def value_to_python(v: common_pb2.Value, where: str) -> Any:
    """A contract Value as a plain value (see the module doc); ``where`` names it in errors.

    An unset Value and ``null_value`` are ``None``.
    """
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind in ("int64_value", "double_value", "string_value", "bool_value"):
        return getattr(v, kind)
    if kind in ("int64_list_value", "double_list_value", "string_list_value", "bool_list_value"):
        return list(getattr(v, kind).values)
    raise InvalidArgument(where, f"{kind} is not supported in metadata")


def values_to_metadata(values: Mapping[str, common_pb2.Value], where: str) -> dict[str, Any]:
    """A contract ``map<string, Value>`` (e.g. ``Item.metadata``) as a dict of plain values.

    ``where`` is the map's request path, e.g. ``items[3].metadata``.
    """
    return {key: value_to_python(v, key_path(where, key)) for key, v in values.items()}


def python_to_value(x: Any, value_type: int | None = None) -> common_pb2.Value:
    """A plain value as a contract Value.

    ``value_type`` (the declared schema type, if any) picks the kind of an empty list and
    makes numbers of a DOUBLE field doubles; without it an empty list is a string list.
    """
    if x is None:
        return common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(x, bool):
        return common_pb2.Value(bool_value=x)
    if isinstance(x, int):
        if value_type == VT.VALUE_TYPE_DOUBLE:
            return common_pb2.Value(double_value=float(x))
        return common_pb2.Value(int64_value=x)
    if isinstance(x, float):
        return common_pb2.Value(double_value=x)
    if isinstance(x, str):
        return common_pb2.Value(string_value=x)
    if isinstance(x, list | tuple):
        list_type = value_type if value_type in _LIST_TYPES else _list_type_of(x)
        if list_type == VT.VALUE_TYPE_INT64_LIST:
            return common_pb2.Value(int64_list_value=common_pb2.Int64List(values=x))
        if list_type == VT.VALUE_TYPE_DOUBLE_LIST:
            floats = [float(e) for e in x]
            return common_pb2.Value(double_list_value=common_pb2.DoubleList(values=floats))
        if list_type == VT.VALUE_TYPE_BOOL_LIST:
            return common_pb2.Value(bool_list_value=common_pb2.BoolList(values=x))
        return common_pb2.Value(string_list_value=common_pb2.StringList(values=x))
    raise TypeError(f"not a plain metadata value: {type(x).__name__}")


def metadata_to_values(
    metadata: Mapping[str, Any], schema: Mapping[str, int]
) -> dict[str, common_pb2.Value]:
    """Stored metadata as contract Values (declared fields keep their declared kind)."""
    return {key: python_to_value(x, schema.get(key)) for key, x in metadata.items()}


def _list_type_of(xs: list[Any] | tuple[Any, ...]) -> int | None:
    """The list type of a homogeneous list (ints mixed with floats: DOUBLE_LIST); None if mixed.

    An empty list is a STRING_LIST (it has no elements to tell).
    """
    types = {_scalar_type_of(e) for e in xs}
    if not types:
        return VT.VALUE_TYPE_STRING_LIST
    if types == {VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_DOUBLE}:
        return VT.VALUE_TYPE_DOUBLE_LIST
    if len(types) == 1:
        (t,) = types
        return _LIST_OF.get(t) if t is not None else None
    return None


def _scalar_type_of(x: Any) -> int | None:
    if isinstance(x, bool):
        return VT.VALUE_TYPE_BOOL
    if isinstance(x, int):
        return VT.VALUE_TYPE_INT64 if _INT64_MIN <= x <= _INT64_MAX else None
    if isinstance(x, float):
        return VT.VALUE_TYPE_DOUBLE
    if isinstance(x, str):
        return VT.VALUE_TYPE_STRING
    return None


def validate_metadata(
    metadata: Mapping[str, Any], schema: Mapping[str, int], where: str
) -> dict[str, Any]:
    """Check one item's metadata against the schema; return a normalised copy.

    Declared fields must hold null or their declared type (an int is accepted for DOUBLE and
    stored as a float); undeclared keys may hold any plain value. Raises ``InvalidArgument``
    naming ``where["key"]``, e.g. ``items[2].metadata["price"]``.
    """
    out: dict[str, Any] = {}
    for key, x in metadata.items():
        path = key_path(where, key if isinstance(key, str) else repr(key))
        if not isinstance(key, str) or not key:
            raise InvalidArgument(path, "metadata keys must be non-empty strings")
        if len(key.encode("utf-8", "surrogatepass")) > MAX_FIELD_NAME_BYTES:
            raise InvalidArgument(path, f"metadata key is longer than {MAX_FIELD_NAME_BYTES} bytes")
        declared = schema.get(key)
        if x is None:
            out[key] = None
        elif declared is None:
            out[key] = _undeclared(x, path)
        elif declared in _LIST_TYPES:
            out[key] = _declared_list(x, declared, path)
        else:
            out[key] = _declared_scalar(x, declared, path)
    return out


def _undeclared(x: Any, path: str) -> Any:
    if isinstance(x, list | tuple):
        if _list_type_of(x) is None:
            raise InvalidArgument(
                path, "a list must hold only bools, only int64 numbers, or only strings"
            )
        return list(x)
    if _scalar_type_of(x) is None:
        raise InvalidArgument(path, f"unsupported metadata value of type {type(x).__name__}")
    return x


def _declared_scalar(x: Any, declared: int, path: str) -> Any:
    actual = _scalar_type_of(x)
    if actual == declared:
        return x
    if declared == VT.VALUE_TYPE_DOUBLE and actual == VT.VALUE_TYPE_INT64:
        return float(x)
    raise InvalidArgument(path, f"field is declared {_type_name(declared)}, got {_describe(x)}")


def _declared_list(x: Any, declared: int, path: str) -> list[Any]:
    if not isinstance(x, list | tuple):
        raise InvalidArgument(path, f"field is declared {_type_name(declared)}, got {_describe(x)}")
    element = _ELEMENT_TYPE[declared]
    out: list[Any] = []
    for i, e in enumerate(x):
        try:
            out.append(_declared_scalar(e, element, f"{path}[{i}]"))
        except InvalidArgument:
            raise InvalidArgument(
                path, f"field is declared {_type_name(declared)}, element {i} is {_describe(e)}"
            ) from None
    return out


def _describe(x: Any) -> str:
    t = _scalar_type_of(x)
    if t is not None:
        return _type_name(t)
    if isinstance(x, list | tuple):
        lt = _list_type_of(x)
        return _type_name(lt) if lt is not None else "a mixed list"
    return type(x).__name__


# --------------------------------------------------------------------------------------------
# The per-field inverted index


class _FieldPostings:
    """Inverted index of one declared field: value -> ids, and the ids that have the field."""

    __slots__ = ("_sorted", "postings", "present")

    def __init__(self) -> None:
        self.present: set[int] = set()
        self.postings: dict[Any, set[int]] = {}
        self._sorted: list[Any] | None = None

    def keys(self, value: Any) -> Iterable[Any]:
        """The index keys of one stored value: each element of a list, else the value."""
        items = value if isinstance(value, list) else (value,)
        # NaN is kept out: it equals and orders nothing, and would break the sorted keys.
        return {e for e in items if not (isinstance(e, float) and math.isnan(e))}

    def add(self, item_id: int, value: Any) -> None:
        self.present.add(item_id)
        if value is None:
            return
        for key in self.keys(value):
            ids = self.postings.get(key)
            if ids is None:
                self.postings[key] = {item_id}
                self._sorted = None
            else:
                ids.add(item_id)

    def remove(self, item_id: int, value: Any) -> None:
        self.present.discard(item_id)
        if value is None:
            return
        for key in self.keys(value):
            ids = self.postings.get(key)
            if ids is not None:
                ids.discard(item_id)
                if not ids:
                    del self.postings[key]
                    self._sorted = None

    def sorted_keys(self) -> list[Any]:
        """Distinct values in order, rebuilt only after a value appeared or disappeared."""
        if self._sorted is None:
            self._sorted = sorted(self.postings)
        return self._sorted


class MetadataIndex:
    """Every live id of a collection and an inverted index per declared metadata field.

    Not thread-safe by itself: the owning collection calls it under its lock. The id sets it
    hands out (``all_ids`` and, via filters, postings) are read-only views: never mutate them.
    """

    def __init__(self, schema: Mapping[str, int]) -> None:
        self.schema = dict(schema)
        self.all_ids: set[int] = set()
        self._fields = {name: _FieldPostings() for name in self.schema}

    def __len__(self) -> int:
        return len(self.all_ids)

    def add(self, item_id: int, metadata: Mapping[str, Any]) -> None:
        """Index a new item (its metadata already validated)."""
        self.all_ids.add(item_id)
        for name, field in self._fields.items():
            if name in metadata:
                field.add(item_id, metadata[name])

    def remove(self, item_id: int, metadata: Mapping[str, Any]) -> None:
        """Forget an item; ``metadata`` must be what it was added with."""
        self.all_ids.discard(item_id)
        for name, field in self._fields.items():
            if name in metadata:
                field.remove(item_id, metadata[name])

    def field(self, name: str) -> _FieldPostings:
        return self._fields[name]


# --------------------------------------------------------------------------------------------
# Compiled filters: a small tree; each node can test one metadata dict or yield its id set.

_IdSet = set[int] | frozenset[int]
_EMPTY: Final[frozenset[int]] = frozenset()


class _Node:
    def matches(self, metadata: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def ids(self, index: MetadataIndex) -> _IdSet:
        raise NotImplementedError


class _True(_Node):
    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return True

    def ids(self, index: MetadataIndex) -> _IdSet:
        return index.all_ids


class _False(_Node):
    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return False

    def ids(self, index: MetadataIndex) -> _IdSet:
        return _EMPTY


@dataclass(frozen=True, slots=True)
class _AllOf(_Node):
    children: tuple[_Node, ...]

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return all(c.matches(metadata) for c in self.children)

    def ids(self, index: MetadataIndex) -> _IdSet:
        sets = sorted((c.ids(index) for c in self.children), key=len)
        # Intersecting from the smallest set keeps the work bounded by the most selective child.
        out = set(sets[0])
        for s in sets[1:]:
            if not out:
                break
            out &= s
        return out


@dataclass(frozen=True, slots=True)
class _AnyOf(_Node):
    children: tuple[_Node, ...]

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return any(c.matches(metadata) for c in self.children)

    def ids(self, index: MetadataIndex) -> _IdSet:
        return set().union(*(c.ids(index) for c in self.children))


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    child: _Node

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return not self.child.matches(metadata)

    def ids(self, index: MetadataIndex) -> _IdSet:
        return index.all_ids - self.child.ids(index)


@dataclass(frozen=True, slots=True)
class _Exists(_Node):
    field: str

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return self.field in metadata

    def ids(self, index: MetadataIndex) -> _IdSet:
        return index.field(self.field).present


@dataclass(frozen=True, slots=True)
class _In(_Node):
    """EQ (one member) and IN on a scalar field; CONTAINS on a list field (one member)."""

    field: str
    members: frozenset[Any]
    is_list: bool

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        x = metadata.get(self.field)
        if x is None:
            return False
        if self.is_list:
            return isinstance(x, list) and any(e in self.members for e in x)
        return not isinstance(x, list) and x in self.members

    def ids(self, index: MetadataIndex) -> _IdSet:
        postings = index.field(self.field).postings
        if len(self.members) == 1:
            (m,) = self.members
            return postings.get(m, _EMPTY)
        return set().union(*(postings.get(m, _EMPTY) for m in self.members))


@dataclass(frozen=True, slots=True)
class _Range(_Node):
    """LT / LTE / GT / GTE on a number or string field, as a lower and/or upper bound."""

    field: str
    op: int
    value: Any

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        x = metadata.get(self.field)
        if x is None:
            return False
        v = self.value
        try:
            if self.op == _Op.OPERATOR_LT:
                return bool(x < v)
            if self.op == _Op.OPERATOR_LTE:
                return bool(x <= v)
            if self.op == _Op.OPERATOR_GT:
                return bool(x > v)
            return bool(x >= v)
        except TypeError:  # metadata that was never validated against the schema
            return False

    def ids(self, index: MetadataIndex) -> _IdSet:
        field = index.field(self.field)
        keys = field.sorted_keys()
        if self.op == _Op.OPERATOR_LT:
            selected = keys[: bisect.bisect_left(keys, self.value)]
        elif self.op == _Op.OPERATOR_LTE:
            selected = keys[: bisect.bisect_right(keys, self.value)]
        elif self.op == _Op.OPERATOR_GT:
            selected = keys[bisect.bisect_right(keys, self.value) :]
        else:
            selected = keys[bisect.bisect_left(keys, self.value) :]
        return set().union(*(field.postings[k] for k in selected))


@dataclass(frozen=True, slots=True)
class _Substring(_Node):
    """CONTAINS on a STRING field."""

    field: str
    value: str

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        x = metadata.get(self.field)
        return isinstance(x, str) and self.value in x

    def ids(self, index: MetadataIndex) -> _IdSet:
        postings = index.field(self.field).postings
        return set().union(*(ids for key, ids in postings.items() if self.value in key))


class CompiledFilter:
    """A validated metadata filter, ready to test items or select ids from a MetadataIndex."""

    __slots__ = ("_root", "is_empty")

    def __init__(self, root: _Node, *, is_empty: bool) -> None:
        self._root = root
        self.is_empty = is_empty
        """The Filter had no kind set: it matches everything (Delete must refuse it)."""

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Whether one item's (validated) metadata matches."""
        return self._root.matches(metadata)

    def matching_ids(self, index: MetadataIndex) -> npt.NDArray[np.int64]:
        """The live ids whose metadata matches, ascending."""
        ids = self._root.ids(index)
        out = np.fromiter(ids, dtype=np.int64, count=len(ids))
        out.sort()
        return out


MATCH_ALL: Final = CompiledFilter(_True(), is_empty=True)
"""The filter of an empty Filter message."""


def compile_filter(
    f: common_pb2.Filter, schema: Mapping[str, int], where: str = "filter"
) -> CompiledFilter:
    """Validate ``f`` against a metadata schema and compile it.

    Raises ``InvalidArgument`` whose ``field`` is the path of the offending proto field under
    ``where``, e.g. ``filter.all_of.filters[1].condition.field``.
    """
    if f.WhichOneof("kind") is None:
        return MATCH_ALL
    return CompiledFilter(_compile(f, schema, where, 1), is_empty=False)


def _compile(f: common_pb2.Filter, schema: Mapping[str, int], where: str, depth: int) -> _Node:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument(where, f"filters may be nested at most {MAX_FILTER_DEPTH} deep")
    kind = f.WhichOneof("kind")
    if kind is None:
        return _True()
    if kind == "condition":
        return _compile_condition(f.condition, schema, where + ".condition")
    if kind == "negate":
        inner = _compile(f.negate, schema, where + ".negate", depth + 1)
        if isinstance(inner, _True):
            return _False()
        if isinstance(inner, _False):
            return _True()
        return _Not(inner)
    filters = f.all_of.filters if kind == "all_of" else f.any_of.filters
    base = f"{where}.{kind}.filters"
    children = [_compile(sub, schema, f"{base}[{i}]", depth + 1) for i, sub in enumerate(filters)]
    if kind == "all_of":
        if any(isinstance(c, _False) for c in children):
            return _False()
        kept = tuple(c for c in children if not isinstance(c, _True))
        if not kept:
            return _True()
        return kept[0] if len(kept) == 1 else _AllOf(kept)
    if any(isinstance(c, _True) for c in children):
        return _True()
    kept = tuple(c for c in children if not isinstance(c, _False))
    if not kept:
        return _False()
    return kept[0] if len(kept) == 1 else _AnyOf(kept)


def _compile_condition(
    c: common_pb2.FieldCondition, schema: Mapping[str, int], where: str
) -> _Node:
    if not c.field:
        raise InvalidArgument(where + ".field", "field name must not be empty")
    declared = schema.get(c.field)
    if declared is None:
        names = ", ".join(sorted(schema)) or "none"
        raise InvalidArgument(
            where + ".field",
            f"{c.field!r} is not a declared metadata field (declared: {names})",
        )
    op = c.operator
    if op == _Op.OPERATOR_UNSPECIFIED:
        raise InvalidArgument(where + ".operator", "operator must be set")
    if op not in _Op.Operator.values():
        raise InvalidArgument(where + ".operator", f"unknown operator {op}")
    allowed = _OPS_BY_TYPE[declared]
    if op not in allowed:
        names = ", ".join(_op_name(o) for o in sorted(allowed))
        raise InvalidArgument(
            where + ".operator",
            f"{_op_name(op)} does not apply to {c.field!r} of type {_type_name(declared)} "
            f"(use {names})",
        )
    if op == _Op.OPERATOR_EXISTS:
        return _Exists(c.field)

    value_path = where + ".value"
    kind = c.value.WhichOneof("kind") if c.HasField("value") else None
    if kind is None:
        raise InvalidArgument(value_path, f"{_op_name(op)} needs a value")
    if op in (_Op.OPERATOR_IN, _Op.OPERATOR_NOT_IN):
        members = _members(c.value, kind, declared, op, value_path)
        node: _Node = _In(c.field, members, is_list=False) if members else _False()
        return node if op == _Op.OPERATOR_IN else _negate(node)

    element = _ELEMENT_TYPE.get(declared, declared)
    value = _scalar(c.value, kind, element, op, value_path)
    if isinstance(value, float) and math.isnan(value):
        # NaN equals and orders nothing: EQ / orderings / CONTAINS never match, NE always does.
        return _True() if op == _Op.OPERATOR_NE else _False()
    if op == _Op.OPERATOR_CONTAINS and declared == VT.VALUE_TYPE_STRING:
        return _Substring(c.field, value)
    if op == _Op.OPERATOR_CONTAINS:
        return _In(c.field, frozenset({value}), is_list=True)
    if op == _Op.OPERATOR_EQ:
        return _In(c.field, frozenset({value}), is_list=False)
    if op == _Op.OPERATOR_NE:
        return _Not(_In(c.field, frozenset({value}), is_list=False))
    return _Range(c.field, op, value)


def _negate(node: _Node) -> _Node:
    if isinstance(node, _False):
        return _True()
    return _Not(node)


def _scalar(v: common_pb2.Value, kind: str, element: int, op: int, path: str) -> Any:
    """The condition value as a plain scalar of the field's (element) type."""
    if element in _NUMBER_TYPES and kind in ("int64_value", "double_value"):
        return getattr(v, kind)
    if element == VT.VALUE_TYPE_STRING and kind == "string_value":
        return v.string_value
    if element == VT.VALUE_TYPE_BOOL and kind == "bool_value":
        return v.bool_value
    wanted = "a number" if element in _NUMBER_TYPES else f"a {_type_name(element)}"
    raise InvalidArgument(path, f"{_op_name(op)} needs {wanted} value here, not {kind}")


def _members(v: common_pb2.Value, kind: str, declared: int, op: int, path: str) -> frozenset[Any]:
    """The elements of an IN / NOT_IN list value, checked against the field's type."""
    values = getattr(v, kind).values if kind.endswith("_list_value") else None
    fits = (
        # An empty list has no element of a wrong type, whatever list kind carries it.
        (values is not None and not values)
        or (declared in _NUMBER_TYPES and kind in ("int64_list_value", "double_list_value"))
        or (declared == VT.VALUE_TYPE_STRING and kind == "string_list_value")
        or (declared == VT.VALUE_TYPE_BOOL and kind == "bool_list_value")
    )
    if not fits:
        wanted = "a number" if declared in _NUMBER_TYPES else f"a {_type_name(declared)}"
        raise InvalidArgument(path, f"{_op_name(op)} needs {wanted} list value here, not {kind}")
    assert values is not None
    return frozenset(e for e in values if not (isinstance(e, float) and math.isnan(e)))
