"""The contract's metadata ``Filter`` as a Milvus boolean expression, and the row layout it
addresses.

Row layout (``MilvusLayout``)
    A Milvus collection of ours has the columns ``id`` (VARCHAR primary key, the item id),
    ``vector`` (FLOAT_VECTOR), one nullable typed column per **declared** metadata field
    (INT64 / DOUBLE / VARCHAR / BOOL, and ARRAY of those for the list types), ``present``
    (ARRAY<INT64>: the slots of the declared fields the item's metadata has, null included)
    and ``extra`` (JSON: the undeclared keys). Metadata field names are free text (dots,
    spaces, any UTF-8), Milvus column names are identifiers, so declared field number ``i``
    (in sorted name order; the schema of a collection never changes) is the column
    ``m<i>_<name with every other character than [A-Za-z0-9_] as _>`` (cut to 64) and slot
    ``i`` of ``present``. ``present`` is what tells "absent" from "null" (a nullable column
    holds null for both): EXISTS and the metadata handed back need it.

Semantics (``compile_milvus_filter``)
    Exactly those of ``filters.compile_filter``, which validates the filter first (so the
    errors, and their field paths, are the same as for a FAISS collection): see its module
    doc. Milvus evaluates comparisons with null in three-valued logic (``not (x == 5)`` is
    not true for a null ``x``), the contract in two (NE matches items lacking the field), so
    every comparison is guarded, ``(col is not null and col == 5)``, and is then true or
    false, never null; ``not`` / ``and`` / ``or`` then mean what they mean in Python.
    Constant sub-filters (an empty ``any_of``, NaN operands, an empty IN list, values no
    stored item can hold) are folded away, so an expression is either a constant (reported
    as ``MilvusExpr.matches_all`` / ``matches_none``, Milvus is then not asked to filter) or
    free of constants.

    Numbers are compared as Python compares them: a double operand on an INT64 column is
    turned into the equivalent integer bound (``x < 2.5`` is ``x < 3``, ``x == 2.5`` matches
    nothing), since Milvus would compare in doubles (milvus-lite even refuses int64 values
    beyond 2**53 then); an integer operand on a DOUBLE column is written as a double (exact
    up to 2**53). Stored doubles are finite (``MilvusCollection`` refuses NaN and infinity in
    metadata: Milvus's JSON cannot hold them), so infinite operands fold to constants. The
    int64 minimum is written as a bound one above it where it can be (Milvus parsers before
    2.6 reject the literal ``-9223372036854775808``); only a list CONTAINS of it keeps it.

Literals (security)
    Caller strings never reach an expression unescaped: ``string_literal`` writes a
    double-quoted literal escaping exactly what both Milvus's parser and milvus-lite's
    understand (backslash, double quote, newline, carriage return, tab); every other
    character stands for itself, so no value can end the literal early. STRING CONTAINS is
    ``like "%<value>%"`` with LIKE's own metacharacters (``%``, ``_``, ``\\``) escaped by a
    backslash first (``like_contains_literal``). Field names come from the collection's
    declared schema through ``MilvusLayout`` (never from the request), and numbers are
    formatted from Python ints / floats.

    Known limit, milvus-lite only: its row-wise evaluator (chosen for any expression with
    ``array_contains``, i.e. EXISTS or CONTAINS on a list field) does not implement LIKE
    escapes, so a STRING CONTAINS of a value holding ``%``, ``_`` or ``\\`` in the same
    filter as those can match wrongly there. Milvus itself applies the escapes everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from llmops.v1 import common_pb2
from services.embedding.filters import compile_filter

__all__ = [
    "EXTRA_FIELD",
    "ID_FIELD",
    "PRESENT_FIELD",
    "VECTOR_FIELD",
    "MilvusExpr",
    "MilvusLayout",
    "compile_milvus_filter",
    "like_contains_literal",
    "string_literal",
]

VT = common_pb2.ValueType
_Op = common_pb2.FieldCondition

ID_FIELD: Final = "id"
VECTOR_FIELD: Final = "vector"
PRESENT_FIELD: Final = "present"
EXTRA_FIELD: Final = "extra"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_COLUMN_NAME_CHARS: Final = 64
_NOT_IDENT: Final = re.compile(r"[^A-Za-z0-9_]")

_LIST_ELEMENT: Final[dict[int, int]] = {
    VT.VALUE_TYPE_INT64_LIST: VT.VALUE_TYPE_INT64,
    VT.VALUE_TYPE_DOUBLE_LIST: VT.VALUE_TYPE_DOUBLE,
    VT.VALUE_TYPE_STRING_LIST: VT.VALUE_TYPE_STRING,
    VT.VALUE_TYPE_BOOL_LIST: VT.VALUE_TYPE_BOOL,
}
_MIRROR: Final[dict[int, str]] = {
    _Op.OPERATOR_LT: "<",
    _Op.OPERATOR_LTE: "<=",
    _Op.OPERATOR_GT: ">",
    _Op.OPERATOR_GTE: ">=",
}


@dataclass(frozen=True)
class MilvusLayout:
    """Where a collection's items live in a Milvus row (see the module doc)."""

    schema: dict[str, int]
    """The declared metadata fields: name -> ``common_pb2.ValueType``."""
    columns: dict[str, str]
    """Declared field name -> its Milvus column."""
    slots: dict[str, int]
    """Declared field name -> the number ``present`` records for it."""

    @classmethod
    def of(cls, schema: Mapping[str, int]) -> MilvusLayout:
        """The layout of a (validated) metadata schema."""
        names = sorted(schema)
        return cls(
            schema=dict(schema),
            columns={
                n: f"m{i}_{_NOT_IDENT.sub('_', n)[:_COLUMN_NAME_CHARS]}"
                for i, n in enumerate(names)
            },
            slots={n: i for i, n in enumerate(names)},
        )


@dataclass(frozen=True, slots=True)
class MilvusExpr:
    """A filter compiled for Milvus: ``expr`` when it is not a constant."""

    expr: str
    """The boolean expression; "" when the filter is a constant."""
    matches_all: bool = False
    """The filter matches every item: search without a filter expression."""
    matches_none: bool = False
    """The filter matches no item: no need to ask Milvus."""
    is_empty: bool = False
    """The Filter had no kind set (it matches everything; a delete must refuse it)."""


def string_literal(s: str) -> str:
    """``s`` as a double-quoted Milvus string literal (see "Literals" in the module doc)."""
    out = (
        s.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{out}"'


def like_contains_literal(s: str) -> str:
    """The LIKE pattern literal matching strings that contain ``s`` (escaped twice: LIKE's
    metacharacters, then as a string literal)."""
    pattern = s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return string_literal(f"%{pattern}%")


def compile_milvus_filter(
    f: common_pb2.Filter, layout: MilvusLayout, where: str = "filter"
) -> MilvusExpr:
    """Validate ``f`` like ``filters.compile_filter`` (same ``InvalidArgument`` paths) and
    compile it into a Milvus expression over ``layout``'s columns."""
    compile_filter(f, layout.schema, where)  # validation only: raises on a bad filter
    if f.WhichOneof("kind") is None:
        return MilvusExpr("", matches_all=True, is_empty=True)
    e = _Compiler(layout).filter(f)
    if e is True:
        return MilvusExpr("", matches_all=True)
    if e is False:
        return MilvusExpr("", matches_none=True)
    return MilvusExpr(e)


# A compiled (sub-)filter: a constant, or an expression that is true or false (never null).
_E = str | bool


def _all(parts: Iterable[_E]) -> _E:
    kept: list[str] = []
    for p in parts:
        if p is False:
            return False
        if p is not True:
            kept.append(str(p))
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else "(" + " and ".join(kept) + ")"


def _any(parts: Iterable[_E]) -> _E:
    kept: list[str] = []
    for p in parts:
        if p is True:
            return True
        if p is not False:
            kept.append(str(p))
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else "(" + " or ".join(kept) + ")"


def _not(e: _E) -> _E:
    if isinstance(e, bool):
        return not e
    return f"(not {e})"


def _float_literal(x: float) -> str:
    # repr is the shortest round-tripping form ("2.5", "1e+16", "-0.0"): always a float token.
    text = repr(float(x))
    return text if any(c in text for c in ".eE") else text + ".0"


class _Compiler:
    """Walks one validated Filter (validation already done by ``compile_filter``)."""

    def __init__(self, layout: MilvusLayout) -> None:
        self.layout = layout

    def filter(self, f: common_pb2.Filter) -> _E:
        kind = f.WhichOneof("kind")
        if kind is None:
            return True
        if kind == "condition":
            return self.condition(f.condition)
        if kind == "negate":
            return _not(self.filter(f.negate))
        if kind == "all_of":
            return _all(self.filter(sub) for sub in f.all_of.filters)
        return _any(self.filter(sub) for sub in f.any_of.filters)

    def condition(self, c: common_pb2.FieldCondition) -> _E:
        declared = self.layout.schema[c.field]
        col = self.layout.columns[c.field]
        op = c.operator
        if op == _Op.OPERATOR_EXISTS:
            return f"array_contains({PRESENT_FIELD}, {self.layout.slots[c.field]})"
        kind = c.value.WhichOneof("kind")
        assert kind is not None  # compile_filter refused a missing value
        if op in (_Op.OPERATOR_IN, _Op.OPERATOR_NOT_IN):
            e = self.member_of(col, declared, getattr(c.value, kind).values)
            return e if op == _Op.OPERATOR_IN else _not(e)
        value: Any = getattr(c.value, kind)
        if isinstance(value, float) and math.isnan(value):
            # NaN equals and orders nothing: NE always holds, everything else never.
            return op == _Op.OPERATOR_NE
        if declared in _LIST_ELEMENT:  # CONTAINS: an element equals the value
            lits = _literals(_LIST_ELEMENT[declared], value)
            # array_contains_any: milvus-lite's array_contains takes no negative literal.
            return _guard(col, f"array_contains_any({col}, [{', '.join(lits)}])") if lits else False
        if op == _Op.OPERATOR_CONTAINS:  # substring of a STRING
            return _guard(col, f"{col} like {like_contains_literal(value)}")
        if op in (_Op.OPERATOR_EQ, _Op.OPERATOR_NE):
            e = self.equals(col, declared, value)
            return e if op == _Op.OPERATOR_EQ else _not(e)
        return self.ordering(col, declared, op, value)

    def equals(self, col: str, declared: int, value: Any) -> _E:
        if declared == VT.VALUE_TYPE_INT64:
            b = _exact_int(value)
            return False if b is None else _int_cmp(col, "==", b)
        lit = _scalar_literal(declared, value)
        return False if lit is None else _guard(col, f"{col} == {lit}")

    def member_of(self, col: str, declared: int, values: Sequence[Any]) -> _E:
        if declared == VT.VALUE_TYPE_INT64:
            ints = sorted({b for v in values if (b := _exact_int(v)) is not None})
            # The int64 minimum cannot be written as a literal everywhere (module doc).
            parts: list[_E] = [_int_cmp(col, "==", _INT64_MIN)] if _INT64_MIN in ints else []
            rest = [str(b) for b in ints if b != _INT64_MIN]
            if rest:
                parts.append(_guard(col, f"{col} in [{', '.join(rest)}]"))
            return _any(parts)
        lits = sorted({lit for v in values for lit in _literals(declared, v)})
        if not lits:
            return False
        return _guard(col, f"{col} in [{', '.join(lits)}]")

    def ordering(self, col: str, declared: int, op: int, value: Any) -> _E:
        if declared == VT.VALUE_TYPE_STRING:
            return _guard(col, f"{col} {_MIRROR[op]} {string_literal(value)}")
        if declared == VT.VALUE_TYPE_INT64:
            return _int_ordering(col, op, value)
        x = float(value)
        if math.isinf(x):
            # Stored doubles are finite: every one is below +inf and above -inf.
            below = op in (_Op.OPERATOR_LT, _Op.OPERATOR_LTE)
            return _present(col) if below == (x > 0) else False
        return _guard(col, f"{col} {_MIRROR[op]} {_float_literal(x)}")


def _guard(col: str, cmp: str) -> str:
    """A comparison that is false (not null) where the column is null (module doc)."""
    return f"({col} is not null and {cmp})"


def _present(col: str) -> str:
    return f"({col} is not null)"


def _exact_int(value: Any) -> int | None:
    """The int64 equal to a number, or None when no int64 equals it (2.5, inf, 1e30)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _scalar_literal(element: int, value: Any) -> str | None:
    """A literal of a value for a column of scalar type ``element``; None when no stored
    value can equal it."""
    if element == VT.VALUE_TYPE_STRING:
        return string_literal(value)
    if element == VT.VALUE_TYPE_BOOL:
        return "true" if value else "false"
    if element == VT.VALUE_TYPE_INT64:
        b = _exact_int(value)
        return None if b is None else str(b)
    x = float(value)
    if math.isnan(x) or math.isinf(x):
        return None
    return _float_literal(x)


def _literals(element: int, value: Any) -> list[str]:
    """The literals whose set membership means "equals ``value``" (none: nothing can).

    A zero double is written as both zeros: Python's ``-0.0 == 0.0`` but milvus-lite's ``in``
    compares bit patterns.
    """
    lit = _scalar_literal(element, value)
    if lit is None:
        return []
    if element == VT.VALUE_TYPE_DOUBLE and float(value) == 0.0:
        return ["0.0", "-0.0"]
    return [lit]


def _int_ordering(col: str, op: int, value: Any) -> _E:
    """LT / LTE / GT / GTE of an INT64 column with an int or double operand, as an integer
    comparison (``x < 2.5`` is ``x < 3``)."""
    if isinstance(value, float):
        if math.isinf(value):
            below = op in (_Op.OPERATOR_LT, _Op.OPERATOR_LTE)
            return _present(col) if below == (value > 0) else False
        # For an integer x: x < v iff x < ceil(v); x <= v iff x <= floor(v); and so on.
        up = op in (_Op.OPERATOR_LT, _Op.OPERATOR_GTE)
        bound = math.ceil(value) if up else math.floor(value)
    else:
        bound = int(value)
    if bound > _INT64_MAX:
        return _present(col) if op in (_Op.OPERATOR_LT, _Op.OPERATOR_LTE) else False
    if bound < _INT64_MIN:
        return _present(col) if op in (_Op.OPERATOR_GT, _Op.OPERATOR_GTE) else False
    return _int_cmp(col, _MIRROR[op], bound)


def _int_cmp(col: str, sym: str, b: int) -> _E:
    """``col <sym> b`` for an int64 ``b``, the int64 minimum written as a bound above it."""
    if b != _INT64_MIN:
        return _guard(col, f"{col} {sym} {b}")
    above = str(_INT64_MIN + 1)
    if sym == "<":
        return False
    if sym == ">=":
        return _present(col)
    if sym in ("==", "<="):
        return _guard(col, f"{col} < {above}")
    return _guard(col, f"{col} >= {above}")  # ">"
