"""Embedding metadata: schema checks, Value conversion, filter compilation and matching."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf.struct_pb2 import NULL_VALUE
from google.protobuf.timestamp_pb2 import Timestamp

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2 as c
from services.embedding.filters import (
    MAX_FILTER_DEPTH,
    MetadataIndex,
    compile_filter,
    metadata_to_values,
    python_to_value,
    validate_metadata,
    validate_schema,
    values_to_metadata,
)

VT = c.ValueType
Op = c.FieldCondition
EQ, NE = Op.OPERATOR_EQ, Op.OPERATOR_NE
LT, LTE, GT, GTE = Op.OPERATOR_LT, Op.OPERATOR_LTE, Op.OPERATOR_GT, Op.OPERATOR_GTE
IN, NOT_IN = Op.OPERATOR_IN, Op.OPERATOR_NOT_IN
EXISTS, CONTAINS = Op.OPERATOR_EXISTS, Op.OPERATOR_CONTAINS

SCHEMA = {
    "price": VT.VALUE_TYPE_DOUBLE,
    "stock": VT.VALUE_TYPE_INT64,
    "brand": VT.VALUE_TYPE_STRING,
    "active": VT.VALUE_TYPE_BOOL,
    "tags": VT.VALUE_TYPE_STRING_LIST,
    "sizes": VT.VALUE_TYPE_INT64_LIST,
}

# Item metadata by internal id; "note" is undeclared (stored, not filterable).
ITEMS: dict[int, dict[str, Any]] = {
    0: {"price": 10.0, "stock": 5, "brand": "acme", "active": True, "tags": ["red", "sale"]},
    1: {"price": 25.5, "stock": 0, "brand": "acme", "active": False, "tags": ["blue"]},
    2: {"price": 99.0, "stock": 12, "brand": "zenith", "active": True, "sizes": [38, 40]},
    3: {"price": None, "stock": 3, "brand": "Acme Pro", "tags": []},
    4: {"brand": "bolt", "note": "no price"},
    5: {"price": math.nan, "stock": 7, "active": False, "sizes": [40, 42], "tags": ["sale"]},
    6: {},
}


def val(x: Any) -> c.Value:
    if x is None:
        return c.Value(null_value=NULL_VALUE)
    if isinstance(x, list) and x and isinstance(x[0], bool):
        return c.Value(bool_list_value=c.BoolList(values=x))
    if isinstance(x, list) and x and isinstance(x[0], float):
        return c.Value(double_list_value=c.DoubleList(values=x))
    return python_to_value(x)


def cond(field: str, op: int, value: Any = ...) -> c.Filter:
    fc = c.FieldCondition(field=field, operator=op)  # type: ignore[arg-type]
    if value is not ...:
        fc.value.CopyFrom(val(value))
    return c.Filter(condition=fc)


def all_of(*fs: c.Filter) -> c.Filter:
    return c.Filter(all_of=c.FilterList(filters=fs))


def any_of(*fs: c.Filter) -> c.Filter:
    return c.Filter(any_of=c.FilterList(filters=fs))


def negate(f: c.Filter) -> c.Filter:
    return c.Filter(negate=f)


@pytest.fixture(scope="module")
def index() -> MetadataIndex:
    idx = MetadataIndex(SCHEMA)
    for i, meta in ITEMS.items():
        idx.add(i, meta)
    return idx


def selected(f: c.Filter, index: MetadataIndex) -> set[int]:
    """Ids a filter selects; asserts the index path and the per-item path agree."""
    compiled = compile_filter(f, SCHEMA)
    by_index = set(compiled.matching_ids(index).tolist())
    by_item = {i for i, meta in ITEMS.items() if compiled.matches(meta)}
    assert by_index == by_item
    return by_index


# --------------------------------------------------------------------------------------------
# Operators


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (cond("brand", EQ, "acme"), {0, 1}),
        (cond("price", EQ, 10), {0}),  # an int64 value compares numerically with a double
        (cond("stock", EQ, 5.0), {0}),
        (cond("active", EQ, False), {1, 5}),
        (cond("brand", NE, "acme"), {2, 3, 4, 5, 6}),  # NE is "not EQ": missing fields match
        (cond("price", NE, 10.0), {1, 2, 3, 4, 5, 6}),
        (cond("price", LT, 25.5), {0}),
        (cond("price", LTE, 25.5), {0, 1}),
        (cond("price", GT, 25.5), {2}),
        (cond("price", GTE, 25.5), {1, 2}),
        (cond("stock", GT, 3), {0, 2, 5}),
        (cond("stock", LTE, 3.5), {1, 3}),
        (cond("brand", LT, "b"), {0, 1, 3}),  # "Acme Pro" < "acme" < "b": code point order
        (cond("brand", GTE, "bolt"), {4, 2}),
        (cond("brand", IN, ["acme", "bolt", "nope"]), {0, 1, 4}),
        (cond("brand", NOT_IN, ["acme", "bolt"]), {2, 3, 5, 6}),
        (cond("stock", IN, [0, 12]), {1, 2}),
        (cond("price", IN, [99.0, 10.0]), {0, 2}),
        (cond("active", IN, [True]), {0, 2}),
        (cond("brand", IN, []), set()),
        (cond("stock", IN, []), set()),  # an empty list of any kind fits any field
        (cond("brand", NOT_IN, []), set(ITEMS)),
        (cond("price", EXISTS), {0, 1, 2, 3, 5}),  # an explicit null is present
        (cond("sizes", EXISTS), {2, 5}),
        (cond("tags", CONTAINS, "sale"), {0, 5}),
        (cond("sizes", CONTAINS, 40), {2, 5}),
        (cond("sizes", CONTAINS, 38.0), {2}),
        (cond("brand", CONTAINS, "cme"), {0, 1, 3}),  # substring, case-sensitive
        (cond("price", EQ, math.nan), set()),
        (cond("price", NE, math.nan), set(ITEMS)),
        (cond("price", LT, math.nan), set()),
        (all_of(cond("brand", EQ, "acme"), cond("active", EQ, True)), {0}),
        (any_of(cond("brand", EQ, "bolt"), cond("stock", GTE, 12)), {2, 4}),
        (negate(cond("price", EXISTS)), {4, 6}),
        (negate(any_of(cond("brand", EQ, "acme"), cond("tags", CONTAINS, "sale"))), {2, 3, 4, 6}),
        (all_of(), set(ITEMS)),
        (any_of(), set()),
        (negate(c.Filter()), set()),
        (all_of(c.Filter(), cond("stock", EQ, 0)), {1}),
        (any_of(c.Filter(), cond("stock", EQ, 0)), set(ITEMS)),
    ],
)
def test_operator_semantics(f: c.Filter, expected: set[int], index: MetadataIndex) -> None:
    assert selected(f, index) == expected


def test_empty_filter_matches_everything_and_says_so(index: MetadataIndex) -> None:
    compiled = compile_filter(c.Filter(), SCHEMA)
    assert compiled.is_empty
    assert compiled.matching_ids(index).tolist() == sorted(ITEMS)
    assert all(compiled.matches(m) for m in ITEMS.values())
    # A filter that only happens to match everything is not "empty": Delete may use it.
    assert not compile_filter(all_of(), SCHEMA).is_empty


def test_matching_ids_are_sorted_int64(index: MetadataIndex) -> None:
    ids = compile_filter(cond("brand", NE, "zzz"), SCHEMA).matching_ids(index)
    assert ids.dtype.name == "int64"
    assert ids.tolist() == sorted(ITEMS)


def test_index_follows_removals_and_new_values() -> None:
    idx = MetadataIndex(SCHEMA)
    for i, meta in ITEMS.items():
        idx.add(i, meta)
    cheap = compile_filter(cond("price", LT, 50), SCHEMA)
    assert cheap.matching_ids(idx).tolist() == [0, 1]
    idx.remove(0, ITEMS[0])
    idx.add(7, {"price": 1.5})  # a new distinct value after the sorted keys were built
    assert cheap.matching_ids(idx).tolist() == [1, 7]
    assert compile_filter(cond("brand", NE, "acme"), SCHEMA).matching_ids(idx).tolist() == [
        2,
        3,
        4,
        5,
        6,
        7,
    ]
    assert compile_filter(cond("tags", CONTAINS, "red"), SCHEMA).matching_ids(idx).size == 0


def _random_filter(rng: random.Random, depth: int = 0) -> c.Filter:
    roll = rng.random()
    if depth < 3 and roll < 0.3:
        kids = [_random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return all_of(*kids) if rng.random() < 0.5 else any_of(*kids)
    if depth < 3 and roll < 0.4:
        return negate(_random_filter(rng, depth + 1))
    field = rng.choice(["price", "stock", "brand", "active", "tags", "sizes"])
    if field in ("tags", "sizes"):
        if rng.random() < 0.3:
            return cond(field, EXISTS)
        return cond(
            field, CONTAINS, rng.choice(["red", "sale", "x"] if field == "tags" else [38, 40, 1])
        )
    if field == "active":
        op = rng.choice([EQ, NE, IN, NOT_IN, EXISTS])
        if op in (IN, NOT_IN):
            return cond(field, op, rng.sample([True, False], rng.randint(1, 2)))
        return cond(field, op) if op == EXISTS else cond(field, op, rng.random() < 0.5)
    pool: list[Any] = (
        ["acme", "bolt", "b", "Acme Pro", "zenith", "q"]
        if field == "brand"
        else [0, 3, 5, 7, 10.0, 25.5, 99.0, 12, 4.5]
    )
    op = rng.choice([EQ, NE, LT, LTE, GT, GTE, IN, NOT_IN, EXISTS])
    if op == EXISTS:
        return cond(field, op)
    if op in (IN, NOT_IN):
        members = rng.sample(pool, rng.randint(0, 3))
        if field != "brand":
            members = [float(m) for m in members]
        return cond(field, op, members)
    return cond(field, op, rng.choice(pool))


def test_random_filters_agree_between_index_and_items(index: MetadataIndex) -> None:
    rng = random.Random(12)
    for _ in range(400):
        f = _random_filter(rng)
        compiled = compile_filter(f, SCHEMA)
        by_index = set(compiled.matching_ids(index).tolist())
        assert by_index == {i for i, m in ITEMS.items() if compiled.matches(m)}, f


# --------------------------------------------------------------------------------------------
# Validation errors name the offending field


def _error(f: c.Filter) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        compile_filter(f, SCHEMA)
    return info.value


@pytest.mark.parametrize(
    ("f", "path", "words"),
    [
        (
            all_of(cond("brand", EQ, "x"), cond("colour", EQ, "red")),
            "filter.all_of.filters[1].condition.field",
            "not a declared",
        ),
        (negate(cond("", EQ, "x")), "filter.negate.condition.field", "empty"),
        (cond("brand", Op.OPERATOR_UNSPECIFIED, "x"), "filter.condition.operator", "set"),
        (cond("brand", 99, "x"), "filter.condition.operator", "unknown"),
        (cond("stock", CONTAINS, 3), "filter.condition.operator", "does not apply"),
        (cond("active", LT, True), "filter.condition.operator", "does not apply"),
        (cond("tags", EQ, "red"), "filter.condition.operator", "does not apply"),
        (cond("sizes", IN, [1]), "filter.condition.operator", "does not apply"),
        (cond("stock", EQ, "5"), "filter.condition.value", "number"),
        (cond("brand", EQ, 5), "filter.condition.value", "STRING"),
        (cond("active", EQ, 1), "filter.condition.value", "BOOL"),
        (cond("price", GT, None), "filter.condition.value", "null_value"),
        (cond("brand", IN, "acme"), "filter.condition.value", "list"),
        (cond("stock", IN, ["1"]), "filter.condition.value", "list"),
        (cond("active", NOT_IN, [1]), "filter.condition.value", "list"),
        (cond("tags", CONTAINS, ["red"]), "filter.condition.value", "STRING"),
        (cond("sizes", CONTAINS, "38"), "filter.condition.value", "number"),
        (
            any_of(c.Filter(), cond("stock", LT)),
            "filter.any_of.filters[1].condition.value",
            "needs",
        ),
    ],
)
def test_validation_errors_name_the_field(f: c.Filter, path: str, words: str) -> None:
    err = _error(f)
    assert err.field == path
    assert words in err.message
    assert err.code == "INVALID_ARGUMENT"


def test_exists_ignores_its_value() -> None:
    f = cond("brand", EXISTS, 12345)  # a value of the wrong type is fine: EXISTS ignores it
    assert compile_filter(f, SCHEMA).matches({"brand": "x"})


def test_depth_limit() -> None:
    f = cond("brand", EQ, "x")
    for _ in range(MAX_FILTER_DEPTH - 1):
        f = negate(f)
    compile_filter(f, SCHEMA)  # exactly at the limit
    err = _error(negate(f))
    assert err.field.startswith("filter.negate.negate")
    assert "nested" in err.message


def test_custom_root_path() -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_filter(cond("nope", EQ, 1), SCHEMA, where="request.filter")
    assert info.value.field == "request.filter.condition.field"


# --------------------------------------------------------------------------------------------
# Schema, metadata validation and Value conversion


def test_validate_schema() -> None:
    assert validate_schema(SCHEMA) == SCHEMA
    with pytest.raises(InvalidArgument) as info:
        validate_schema({"ok": VT.VALUE_TYPE_INT64, "when": VT.VALUE_TYPE_TIMESTAMP})
    assert info.value.field == 'collection.metadata_schema["when"]'
    assert "TIMESTAMP" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        validate_schema({"": VT.VALUE_TYPE_INT64})
    assert info.value.field == 'collection.metadata_schema[""]'


def test_validate_metadata_normalises_and_keeps_undeclared() -> None:
    out = validate_metadata(
        {"price": 3, "stock": 2, "tags": ("a", "b"), "note": "x", "extra": [1, 2], "brand": None},
        SCHEMA,
        "items[0].metadata",
    )
    assert out == {
        "price": 3.0,
        "stock": 2,
        "tags": ["a", "b"],
        "note": "x",
        "extra": [1, 2],
        "brand": None,
    }
    assert isinstance(out["price"], float)


@pytest.mark.parametrize(
    ("meta", "key", "words"),
    [
        ({"price": "10"}, "price", "declared DOUBLE, got STRING"),
        ({"stock": 1.5}, "stock", "declared INT64, got DOUBLE"),
        ({"stock": True}, "stock", "declared INT64, got BOOL"),  # bool is not a number here
        ({"active": 1}, "active", "declared BOOL, got INT64"),
        ({"tags": "red"}, "tags", "declared STRING_LIST, got STRING"),
        ({"tags": ["red", 3]}, "tags", "element 1 is INT64"),
        ({"sizes": [1, 2**63]}, "sizes", "element 1"),
        ({"stock": 2**63}, "stock", "got int"),
        ({"note": ["a", 1]}, "note", "a list must hold"),
        ({"note": b"raw"}, "note", "unsupported"),
        ({"note": {"nested": 1}}, "note", "unsupported"),
    ],
)
def test_validate_metadata_errors(meta: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_metadata(meta, SCHEMA, "items[2].metadata")
    assert info.value.field == f'items[2].metadata["{key}"]'
    assert words in info.value.message


def test_values_round_trip() -> None:
    values = {
        "price": c.Value(double_value=1.25),
        "stock": c.Value(int64_value=-3),
        "brand": c.Value(string_value="acme"),
        "active": c.Value(bool_value=False),
        "tags": c.Value(string_list_value=c.StringList(values=["a"])),
        "sizes": c.Value(int64_list_value=c.Int64List(values=[])),
        "weights": c.Value(double_list_value=c.DoubleList(values=[0.5])),
        "flags": c.Value(bool_list_value=c.BoolList(values=[True])),
        "gone": c.Value(null_value=NULL_VALUE),
    }
    plain = values_to_metadata(values, "items[0].metadata")
    assert plain == {
        "price": 1.25,
        "stock": -3,
        "brand": "acme",
        "active": False,
        "tags": ["a"],
        "sizes": [],
        "weights": [0.5],
        "flags": [True],
        "gone": None,
    }
    back = metadata_to_values(validate_metadata(plain, SCHEMA, "m"), SCHEMA)
    assert back == values  # the declared type picks the kind of the empty "sizes" list


def test_declared_double_is_sent_back_as_double() -> None:
    stored = validate_metadata({"price": 7}, SCHEMA, "m")
    assert metadata_to_values(stored, SCHEMA)["price"] == c.Value(double_value=7.0)
    assert python_to_value(7) == c.Value(int64_value=7)


@pytest.mark.parametrize(
    "value",
    [
        c.Value(bytes_value=b"x"),
        c.Value(float_vector_value=c.FloatVector(values=[1.0])),
        c.Value(timestamp_value=Timestamp(seconds=1)),
    ],
)
def test_unsupported_value_kinds_name_the_key(value: c.Value) -> None:
    with pytest.raises(InvalidArgument) as info:
        values_to_metadata({"ok": c.Value(int64_value=1), "bad": value}, "items[4].metadata")
    assert info.value.field == 'items[4].metadata["bad"]'
