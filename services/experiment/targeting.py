"""Experiment targeting: compile a ``llmops.v1.Filter`` once, evaluate it per request.

``compile_filter`` validates a filter and turns it into a plain Python closure
(``Predicate``) over a flat *context* mapping; ``context_from_request`` builds that mapping
from a request's ``RequestContext`` and extra attributes. Compilation does all the work that
does not depend on the request (value conversion, type dispatch, list -> frozenset), so the
per-request cost is a few dict lookups and comparisons.

Context
    A flat ``Mapping[str, Any]``: every non-empty scalar field of ``RequestContext`` under its
    proto field name (``"market" -> "NL"``, ``"locale" -> "nl-NL"``, ...), ``"device"`` as the
    enum name without its ``DEVICE_`` prefix (``"MOBILE_WEB"``; absent when unspecified), and
    ``"attributes.<key>"`` for each context attribute, then each request attribute (the
    request's own win). Values are Python objects as ``value_to_python`` makes them.

Field lookup
    A condition's ``field`` is used verbatim as a key of the flat context (the dot in
    ``"attributes.nights"`` is part of the key, not a path step). A field that is absent from
    the context: EXISTS -> False; NE and NOT_IN -> True (a missing value is "not equal");
    every other operator -> False. A field present with value ``None`` (explicit null) is
    present: EXISTS -> True, EQ null -> True.

EQ / NE
    Equality after type normalisation: int and float compare numerically (``3 == 3.0``;
    NaN equals nothing); strings compare exactly (case-sensitive); bytes with bytes; bool only
    equals bool (``True != 1``); null only equals null. Values of other type pairs are not
    equal. A list condition value is rejected at compile time. NE is exactly ``not EQ``.

LT / LTE / GT / GTE
    Numbers with numbers, strings with strings (lexicographic by code point, which orders ISO
    dates such as ``"2026-11-01"``), bytes with bytes. A timestamp condition value is a number
    (seconds since the epoch, see ``value_to_python``). Any other pairing at request time
    (missing field, bool, null, list, mismatched types) -> False. A list, bool or null
    condition value is rejected at compile time.

IN / NOT_IN
    The condition value must be a list kind (``*_list_value`` or ``float_vector_value``;
    compile-time error otherwise). Membership uses the EQ equality; the list is precompiled
    into a frozenset plus the set of context types that may match it (bools never match
    numbers and vice versa; NaN elements are dropped as they equal nothing). An empty list:
    IN -> always False, NOT_IN -> always True. NOT_IN is exactly ``not IN``.

EXISTS
    The field is present in the context, whatever its value; the condition value is ignored.

CONTAINS
    The condition value must be a scalar (or null). A list (or tuple) context value -> some
    element equals the condition value (EQ equality); a string context value -> the
    condition value is a string and a substring of it; anything else -> False.

all_of / any_of / negate
    ``all_of``: every sub-filter matches (empty -> True). ``any_of``: at least one matches
    (empty -> False). ``negate``: the sub-filter does not match. An empty Filter (no kind set)
    matches everything, at the root or nested.

Compile-time validation (``TargetingError``, an ``InvalidArgument`` whose ``field`` is the
precise path, e.g. ``targeting.any_of.filters[2].condition.operator``): unspecified or unknown
operator; empty field name; missing value (no kind set) for an operator that needs one;
list value for a scalar operator; non-list value for IN / NOT_IN; list, bool or null value for
an ordering operator; filters nested deeper than ``MAX_DEPTH`` levels (the root is level 1).

Evaluation is deterministic, does no I/O and never raises: types are checked before any
comparison, so contexts made of ``value_to_python`` objects (and any other builtin values)
cannot fail. Should an exotic object in the context raise from its own ``__eq__`` (or a
custom Mapping raise from ``get``), the condition that touched it evaluates to False.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2

__all__ = [
    "MAX_DEPTH",
    "Context",
    "Predicate",
    "TargetingError",
    "compile_filter",
    "context_from_request",
    "value_to_python",
]

Context = Mapping[str, Any]
Predicate = Callable[[Context], bool]

MAX_DEPTH: Final = 32
"""Deepest allowed nesting of Filter messages; the root filter is level 1."""

_Op = common_pb2.FieldCondition
_MISSING: Final = object()
_NUMBER: Final = frozenset({int, float})
_SCALAR_KINDS: Final = frozenset(
    {"int64_value", "double_value", "string_value", "bool_value", "bytes_value"}
)
_LIST_KINDS: Final = frozenset(
    {
        "int64_list_value",
        "double_list_value",
        "string_list_value",
        "bool_list_value",
        "float_vector_value",
    }
)
_ORDERING: Final = frozenset({_Op.OPERATOR_LT, _Op.OPERATOR_LTE, _Op.OPERATOR_GT, _Op.OPERATOR_GTE})


class TargetingError(InvalidArgument):
    """A targeting filter is invalid; ``field`` is the path of the offending proto field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.problem = problem


# --------------------------------------------------------------------------------------------
# Values


def value_to_python(v: common_pb2.Value) -> Any:
    """A Value as a plain Python object.

    int64 -> int, double -> float, string -> str, bool -> bool, bytes -> bytes, ``*_list`` ->
    list, float_vector -> list[float], timestamp -> float seconds since the epoch (UTC),
    null -> None, unset -> None.
    """
    kind = v.WhichOneof("kind")
    if kind in _SCALAR_KINDS:
        return getattr(v, kind)
    if kind is None or kind == "null_value":
        return None
    if kind == "timestamp_value":
        ts = v.timestamp_value
        return ts.seconds + ts.nanos / 1e9
    return list(getattr(v, kind).values)  # a *_list_value or float_vector_value


# --------------------------------------------------------------------------------------------
# Context


def _enum_names(fd: FieldDescriptor) -> dict[int, str]:
    """Number -> name without the enum's UPPER_SNAKE prefix, for every value but 0."""
    enum = fd.enum_type
    assert enum is not None
    prefix = "".join("_" + ch if ch.isupper() and i else ch for i, ch in enumerate(enum.name))
    prefix = prefix.upper() + "_"
    return {ev.number: ev.name.removeprefix(prefix) for ev in enum.values if ev.number != 0}


def _context_fields() -> tuple[tuple[str, ...], tuple[tuple[str, dict[int, str]], ...]]:
    """Names of the singular scalar fields of RequestContext, and its enum fields' tables."""
    scalars: list[str] = []
    enums: list[tuple[str, dict[int, str]]] = []
    for fd in common_pb2.RequestContext.DESCRIPTOR.fields:
        if fd.is_repeated or fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            continue  # latency_budget (a Duration) and the attributes map
        if fd.type == FieldDescriptor.TYPE_ENUM:
            enums.append((fd.name, _enum_names(fd)))
        else:
            scalars.append(fd.name)
    return tuple(scalars), tuple(enums)


_SCALAR_FIELDS, _ENUM_FIELDS = _context_fields()


def context_from_request(
    context: common_pb2.RequestContext, attributes: Mapping[str, common_pb2.Value]
) -> dict[str, Any]:
    """The flat targeting context of one request.

    Every non-empty scalar field of ``context`` by its proto field name (``request_id``,
    ``tenant``, ``user_id``, ``session_id``, ``locale``, ``market``, ``currency``,
    ``trace_id``, ``time_zone``, ``client_name``); enum fields (``device``) as the value name
    without the enum prefix (``"MOBILE_WEB"``), absent when unspecified or unknown to this
    build; message fields (``latency_budget``) are left out. Then ``"attributes.<k>"`` for each
    entry of ``context.attributes`` and then of ``attributes`` (the request's own, overriding),
    converted with ``value_to_python``.
    """
    out: dict[str, Any] = {}
    for name in _SCALAR_FIELDS:
        value = getattr(context, name)
        if value:
            out[name] = value
    for name, names in _ENUM_FIELDS:
        short = names.get(getattr(context, name))
        if short is not None:
            out[name] = short
    if context.attributes:
        for key, v in context.attributes.items():
            out["attributes." + key] = value_to_python(v)
    for key, v in attributes.items():
        out["attributes." + key] = value_to_python(v)
    return out


# --------------------------------------------------------------------------------------------
# Compilation


def compile_filter(f: common_pb2.Filter, where: str = "targeting") -> Predicate:
    """Validate ``f`` and compile it into a predicate over a flat context.

    An empty Filter (no kind set) matches everything. Raises ``TargetingError`` naming the
    offending field path (rooted at ``where``); the returned predicate never raises.
    """
    return _compile(f, where, 1)


def _match_all(ctx: Context) -> bool:
    return True


def _match_none(ctx: Context) -> bool:
    return False


def _compile(f: common_pb2.Filter, where: str, depth: int) -> Predicate:
    if depth > MAX_DEPTH:
        raise TargetingError(where, f"filters may be nested at most {MAX_DEPTH} levels deep")
    kind = f.WhichOneof("kind")
    if kind is None:
        return _match_all
    if kind == "condition":
        return _compile_condition(f.condition, where + ".condition")
    if kind == "negate":
        inner = _compile(f.negate, where + ".negate", depth + 1)
        if inner is _match_all:
            return _match_none
        if inner is _match_none:
            return _match_all

        def negate(ctx: Context) -> bool:
            return not inner(ctx)

        return negate
    filters = f.all_of.filters if kind == "all_of" else f.any_of.filters
    base = f"{where}.{kind}.filters"
    children = [_compile(sub, f"{base}[{i}]", depth + 1) for i, sub in enumerate(filters)]
    return _all_of(children) if kind == "all_of" else _any_of(children)


def _all_of(children: list[Predicate]) -> Predicate:
    if _match_none in children:
        return _match_none
    preds = tuple(p for p in children if p is not _match_all)
    if not preds:
        return _match_all
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds

        def all2(ctx: Context) -> bool:
            return a(ctx) and b(ctx)

        return all2
    if len(preds) == 3:
        a, b, c = preds

        def all3(ctx: Context) -> bool:
            return a(ctx) and b(ctx) and c(ctx)

        return all3

    def all_n(ctx: Context) -> bool:
        for p in preds:  # noqa: SIM110 - a plain loop is faster than all() over a generator
            if not p(ctx):
                return False
        return True

    return all_n


def _any_of(children: list[Predicate]) -> Predicate:
    if _match_all in children:
        return _match_all
    preds = tuple(p for p in children if p is not _match_none)
    if not preds:
        return _match_none
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds

        def any2(ctx: Context) -> bool:
            return a(ctx) or b(ctx)

        return any2
    if len(preds) == 3:
        a, b, c = preds

        def any3(ctx: Context) -> bool:
            return a(ctx) or b(ctx) or c(ctx)

        return any3

    def any_n(ctx: Context) -> bool:
        for p in preds:  # noqa: SIM110 - a plain loop is faster than any() over a generator
            if p(ctx):
                return True
        return False

    return any_n


def _compile_condition(c: common_pb2.FieldCondition, where: str) -> Predicate:
    op = c.operator
    if op == _Op.OPERATOR_UNSPECIFIED:
        raise TargetingError(where + ".operator", "operator must be set")
    if op not in _Op.Operator.values():
        raise TargetingError(where + ".operator", f"unknown operator {op}")
    field = c.field
    if not field:
        raise TargetingError(where + ".field", "field name must not be empty")
    if op == _Op.OPERATOR_EXISTS:
        return _exists(field)

    value_path = where + ".value"
    op_name = _Op.Operator.Name(op).removeprefix("OPERATOR_")
    kind = c.value.WhichOneof("kind") if c.HasField("value") else None
    if kind is None:
        raise TargetingError(value_path, f"{op_name} needs a value")
    is_list = kind in _LIST_KINDS
    if op in (_Op.OPERATOR_IN, _Op.OPERATOR_NOT_IN):
        if not is_list:
            raise TargetingError(value_path, f"{op_name} needs a list value, not {kind}")
        return _membership(field, value_to_python(c.value), op == _Op.OPERATOR_IN)
    if is_list:
        raise TargetingError(value_path, f"{op_name} needs a scalar value, not {kind}")
    value = value_to_python(c.value)
    if op == _Op.OPERATOR_EQ or op == _Op.OPERATOR_NE:
        eq, ne = _equality(field, value)
        return eq if op == _Op.OPERATOR_EQ else ne
    if op == _Op.OPERATOR_CONTAINS:
        return _contains(field, value)
    assert op in _ORDERING
    if kind in ("bool_value", "null_value"):
        raise TargetingError(value_path, f"{op_name} needs a number, string or bytes, not {kind}")
    return _ordering(field, op, value)


# --------------------------------------------------------------------------------------------
# Leaves. Each one is a closure over its field and precomputed value, dispatching on the
# value's type at compile time so that evaluation does one lookup and one or two tests.


def _exists(field: str) -> Predicate:
    def exists(ctx: Context) -> bool:
        try:
            return field in ctx
        except Exception:
            return False

    return exists


def _equality(field: str, value: Any) -> tuple[Predicate, Predicate]:
    """EQ and NE predicates for a scalar (non-list) condition value."""
    if value is None:

        def eq_null(ctx: Context) -> bool:
            try:
                return ctx.get(field, _MISSING) is None
            except Exception:
                return False

        def ne_null(ctx: Context) -> bool:
            try:
                return ctx.get(field, _MISSING) is not None
            except Exception:
                return False

        return eq_null, ne_null

    if isinstance(value, bool):
        b: bool = value

        def eq_bool(ctx: Context) -> bool:
            try:
                return ctx.get(field) is b
            except Exception:
                return False

        def ne_bool(ctx: Context) -> bool:
            try:
                return ctx.get(field) is not b
            except Exception:
                return False

        return eq_bool, ne_bool

    if isinstance(value, int | float):
        n: float = value
        if math.isnan(n):
            return _match_none, _match_all

        def eq_number(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return n == x and x is not True and x is not False
            except Exception:
                return False

        def ne_number(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return not (n == x and x is not True and x is not False)
            except Exception:
                return False

        return eq_number, ne_number

    # str or bytes: these only ever equal their own type.
    s: str | bytes = value

    def eq_text(ctx: Context) -> bool:
        try:
            return s == ctx.get(field)
        except Exception:
            return False

    def ne_text(ctx: Context) -> bool:
        try:
            return s != ctx.get(field)
        except Exception:
            return False

    return eq_text, ne_text


def _ordering(field: str, op: int, value: Any) -> Predicate:
    """LT/LTE/GT/GTE; ``value`` is a number (int, float, timestamp seconds), str or bytes."""
    types = _type_class(value)
    v: Any = value
    # Written as `v <op'> x` (operands swapped) so the condition's own type does the compare.
    if op == _Op.OPERATOR_LT:

        def lt(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return type(x) in types and v > x
            except Exception:
                return False

        return lt
    if op == _Op.OPERATOR_LTE:

        def lte(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return type(x) in types and v >= x
            except Exception:
                return False

        return lte
    if op == _Op.OPERATOR_GT:

        def gt(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return type(x) in types and v < x
            except Exception:
                return False

        return gt

    def gte(ctx: Context) -> bool:
        try:
            x = ctx.get(field)
            return type(x) in types and v <= x
        except Exception:
            return False

    return gte


def _membership(field: str, values: list[Any], positive: bool) -> Predicate:
    """IN (``positive``) or NOT_IN over the elements of a list condition value."""
    members = frozenset(e for e in values if not (isinstance(e, float) and math.isnan(e)))
    if not members:
        return _match_none if positive else _match_all
    # All elements of one list kind share a type: bool, str, or numbers (int / float).
    sample = next(iter(members))
    types: frozenset[type] = frozenset({bool}) if isinstance(sample, bool) else _type_class(sample)

    if positive:

        def is_in(ctx: Context) -> bool:
            try:
                x = ctx.get(field)
                return type(x) in types and x in members
            except Exception:
                return False

        return is_in

    def not_in(ctx: Context) -> bool:
        try:
            x = ctx.get(field)
            return type(x) not in types or x not in members
        except Exception:
            return False

    return not_in


def _type_class(sample: Any) -> frozenset[type]:
    """The context types comparable with ``sample``: int and float together, else its own."""
    return _NUMBER if type(sample) in _NUMBER else frozenset({type(sample)})


def _contains(field: str, value: Any) -> Predicate:
    """CONTAINS with a scalar (or null) condition value."""
    is_str = isinstance(value, str)
    element_eq = _element_eq(value)

    def contains(ctx: Context) -> bool:
        try:
            x: Any = ctx.get(field)
            t = type(x)
            if t is list or t is tuple:
                return element_eq(x)
            return is_str and t is str and value in x
        except Exception:
            return False

    return contains


def _element_eq(value: Any) -> Callable[[Iterable[Any]], bool]:
    """Whether any element of a list equals ``value`` (EQ equality)."""
    if value is None or isinstance(value, str | bytes):
        # Only equal to their own type; `in` is exact (its identity shortcut agrees with ==).
        return lambda xs: value in xs
    if isinstance(value, bool):
        return lambda xs: any(e is value for e in xs)
    if math.isnan(value):
        return lambda xs: False
    return lambda xs: any(value == e and e is not True and e is not False for e in xs)
