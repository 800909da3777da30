"""Experiment targeting: filter compilation, evaluation semantics, errors and request contexts."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import NULL_VALUE
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2 as c
from services.experiment.targeting import (
    MAX_DEPTH,
    TargetingError,
    compile_filter,
    context_from_request,
    value_to_python,
)

Op = c.FieldCondition
EQ, NE = Op.OPERATOR_EQ, Op.OPERATOR_NE
LT, LTE, GT, GTE = Op.OPERATOR_LT, Op.OPERATOR_LTE, Op.OPERATOR_GT, Op.OPERATOR_GTE
IN, NOT_IN = Op.OPERATOR_IN, Op.OPERATOR_NOT_IN
EXISTS, CONTAINS = Op.OPERATOR_EXISTS, Op.OPERATOR_CONTAINS


# --------------------------------------------------------------------------------------------
# Builders


def val(x: Any) -> c.Value:
    """A Value from a Python scalar or a (homogeneous) list; a list defaults to strings."""
    if x is None:
        return c.Value(null_value=NULL_VALUE)
    if isinstance(x, bool):
        return c.Value(bool_value=x)
    if isinstance(x, int):
        return c.Value(int64_value=x)
    if isinstance(x, float):
        return c.Value(double_value=x)
    if isinstance(x, str):
        return c.Value(string_value=x)
    if isinstance(x, bytes):
        return c.Value(bytes_value=x)
    assert isinstance(x, list)
    if x and isinstance(x[0], bool):
        return c.Value(bool_list_value=c.BoolList(values=x))
    if x and isinstance(x[0], int):
        return c.Value(int64_list_value=c.Int64List(values=x))
    if x and isinstance(x[0], float):
        return c.Value(double_list_value=c.DoubleList(values=x))
    return c.Value(string_list_value=c.StringList(values=x))


def cond(field: str, op: int, value: Any = ..., *, raw: c.Value | None = None) -> c.Filter:
    """A condition filter; ``value`` ``...`` leaves the value unset."""
    fc = c.FieldCondition(field=field, operator=op)  # type: ignore[arg-type]
    if raw is not None:
        fc.value.CopyFrom(raw)
    elif value is not ...:
        fc.value.CopyFrom(val(value))
    return c.Filter(condition=fc)


def all_of(*filters: c.Filter) -> c.Filter:
    return c.Filter(all_of=c.FilterList(filters=filters))


def any_of(*filters: c.Filter) -> c.Filter:
    return c.Filter(any_of=c.FilterList(filters=filters))


def negate(f: c.Filter) -> c.Filter:
    return c.Filter(negate=f)


def ts(seconds: int, nanos: int = 0) -> c.Value:
    return c.Value(timestamp_value=Timestamp(seconds=seconds, nanos=nanos))


def check(f: c.Filter, ctx: Mapping[str, Any]) -> bool:
    result = compile_filter(f)(ctx)
    assert type(result) is bool
    return result


# --------------------------------------------------------------------------------------------
# value_to_python


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (c.Value(int64_value=-7), -7),
        (c.Value(double_value=2.5), 2.5),
        (c.Value(string_value="nl-NL"), "nl-NL"),
        (c.Value(bool_value=False), False),
        (c.Value(bytes_value=b"\x00\xff"), b"\x00\xff"),
        (c.Value(int64_list_value=c.Int64List(values=[1, 2])), [1, 2]),
        (c.Value(double_list_value=c.DoubleList(values=[0.5])), [0.5]),
        (c.Value(string_list_value=c.StringList(values=["a", "b"])), ["a", "b"]),
        (c.Value(bool_list_value=c.BoolList(values=[True])), [True]),
        (c.Value(float_vector_value=c.FloatVector(values=[0.5, -2.0])), [0.5, -2.0]),
        (c.Value(int64_list_value=c.Int64List()), []),
        (ts(1_700_000_000, 500_000_000), 1_700_000_000.5),
        (c.Value(null_value=NULL_VALUE), None),
        (c.Value(), None),
    ],
)
def test_value_to_python(value: c.Value, expected: Any) -> None:
    got = value_to_python(value)
    assert got == expected
    assert type(got) is type(expected)


def test_value_to_python_float_vector_is_float32() -> None:
    got = value_to_python(c.Value(float_vector_value=c.FloatVector(values=[0.1])))
    assert got == [pytest.approx(0.1)] and got != [0.1]  # float32 precision, widened


# --------------------------------------------------------------------------------------------
# context_from_request


def test_context_from_request_fields_device_and_attributes() -> None:
    rc = c.RequestContext(
        request_id="r1",
        tenant="acme",
        user_id="u1",
        session_id="s1",
        locale="nl-NL",
        market="NL",
        currency="EUR",
        device=c.DEVICE_MOBILE_WEB,
        latency_budget=Duration(seconds=1),
        trace_id="0af7651916cd43dd8448eb211c80319c",
        time_zone="Europe/Amsterdam",
        attributes={"loyalty_tier": val("gold"), "nights": val(3), "beta": val(True)},
        client_name="search-backend",
    )
    ctx = context_from_request(rc, {"nights": val(5), "dates": val(["2026-11-01"])})
    assert ctx == {
        "request_id": "r1",
        "tenant": "acme",
        "user_id": "u1",
        "session_id": "s1",
        "locale": "nl-NL",
        "market": "NL",
        "currency": "EUR",
        "device": "MOBILE_WEB",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "time_zone": "Europe/Amsterdam",
        "client_name": "search-backend",
        "attributes.loyalty_tier": "gold",
        "attributes.nights": 5,  # the request's own attribute wins
        "attributes.beta": True,
        "attributes.dates": ["2026-11-01"],
    }


def test_context_from_request_omits_empty_fields_and_unspecified_device() -> None:
    assert context_from_request(c.RequestContext(), {}) == {}
    ctx = context_from_request(c.RequestContext(market="DE", device=c.DEVICE_UNSPECIFIED), {})
    assert ctx == {"market": "DE"}
    # A device number this build does not know (a newer client) is left out too.
    assert context_from_request(c.RequestContext(device=99), {}) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("device", "name"),
    [
        (c.DEVICE_DESKTOP, "DESKTOP"),
        (c.DEVICE_MOBILE_WEB, "MOBILE_WEB"),
        (c.DEVICE_TABLET, "TABLET"),
        (c.DEVICE_IOS_APP, "IOS_APP"),
        (c.DEVICE_ANDROID_APP, "ANDROID_APP"),
        (c.DEVICE_API, "API"),
    ],
)
def test_context_from_request_device_names(device: c.Device.ValueType, name: str) -> None:
    assert context_from_request(c.RequestContext(device=device), {}) == {"device": name}


def test_context_from_request_null_and_unset_attributes_are_present_as_none() -> None:
    rc = c.RequestContext(attributes={"a": c.Value(), "b": val(None)})
    ctx = context_from_request(rc, {})
    assert ctx == {"attributes.a": None, "attributes.b": None}
    assert check(cond("attributes.a", EXISTS), ctx)


def test_request_attributes_override_context_attributes_in_targeting() -> None:
    rc = c.RequestContext(market="NL", attributes={"tier": val("gold")})
    f = cond("attributes.tier", EQ, "silver")
    assert not check(f, context_from_request(rc, {}))
    assert check(f, context_from_request(rc, {"tier": val("silver")}))


# --------------------------------------------------------------------------------------------
# Operators


def test_empty_filter_matches_everything() -> None:
    assert check(c.Filter(), {})
    assert check(c.Filter(), {"market": "NL"})
    assert check(all_of(c.Filter(), cond("market", EQ, "NL")), {"market": "NL"})
    assert not check(negate(c.Filter()), {})


@pytest.mark.parametrize(
    ("value", "ctx_value", "equal"),
    [
        ("NL", "NL", True),
        ("NL", "nl", False),  # case-sensitive
        ("NL", "NL ", False),
        (3, 3, True),
        (3, 3.0, True),  # numeric
        (3.0, 3, True),
        (2.5, 2.5, True),
        (3, 4, False),
        (3, "3", False),
        ("3", 3, False),
        (1, True, False),  # bool only equals bool
        (0, False, False),
        (1.0, True, False),
        (True, 1, False),
        (False, 0, False),
        (True, True, True),
        (False, False, True),
        (True, False, False),
        (b"ab", b"ab", True),
        (b"ab", "ab", False),
        ("ab", b"ab", False),
        (None, None, True),
        (None, 0, False),
        (None, "", False),
        (0, None, False),
        ("", None, False),
        ("NL", ["NL"], False),
        (float("nan"), float("nan"), False),
        (2**62 + 1, float(2**62), False),  # exact, not via float rounding
    ],
)
def test_eq_and_ne(value: Any, ctx_value: Any, equal: bool) -> None:
    ctx = {"f": ctx_value}
    assert check(cond("f", EQ, value), ctx) is equal
    assert check(cond("f", NE, value), ctx) is not equal


def test_eq_timestamp_compares_as_epoch_seconds() -> None:
    f = cond("attributes.checkin", EQ, raw=ts(1_700_000_000, 250_000_000))
    assert check(f, {"attributes.checkin": 1_700_000_000.25})
    assert not check(f, {"attributes.checkin": 1_700_000_000})


@pytest.mark.parametrize("value", ["NL", 3, 2.5, True, False, b"x", None])
def test_missing_field_eq_false_ne_true(value: Any) -> None:
    assert not check(cond("f", EQ, value), {"g": value})
    assert check(cond("f", NE, value), {"g": value})


def test_ordering_numbers() -> None:
    for ctx_value, lt, lte, gt, gte in [
        (1, True, True, False, False),
        (2, False, True, False, True),
        (2.0, False, True, False, True),
        (2.5, False, False, True, True),
        (3, False, False, True, True),
        (-(2**70), True, True, False, False),
    ]:
        ctx = {"attributes.nights": ctx_value}
        assert check(cond("attributes.nights", LT, 2), ctx) is lt
        assert check(cond("attributes.nights", LTE, 2), ctx) is lte
        assert check(cond("attributes.nights", GT, 2), ctx) is gt
        assert check(cond("attributes.nights", GTE, 2), ctx) is gte
        # A double condition value compares the same way.
        assert check(cond("attributes.nights", GTE, 2.0), ctx) is gte


def test_ordering_strings_are_lexicographic() -> None:
    f = all_of(
        cond("attributes.checkin", GTE, "2026-11-01"), cond("attributes.checkin", LT, "2026-12-01")
    )
    assert check(f, {"attributes.checkin": "2026-11-01"})
    assert check(f, {"attributes.checkin": "2026-11-30"})
    assert not check(f, {"attributes.checkin": "2026-12-01"})
    assert not check(f, {"attributes.checkin": "2026-10-31"})
    assert check(cond("s", LT, "b"), {"s": "B"})  # by code point: "B" < "b"


def test_ordering_bytes_and_timestamps() -> None:
    assert check(cond("b", GT, b"\x01"), {"b": b"\x02"})
    assert not check(cond("b", GT, b"\x01"), {"b": "\x02"})
    after = cond("attributes.seen", GT, raw=ts(1_700_000_000))
    assert check(after, {"attributes.seen": 1_700_000_000.5})
    assert not check(after, {"attributes.seen": 1_700_000_000})


@pytest.mark.parametrize(
    ("value", "ctx_value"),
    [
        (2, "3"),
        (2, True),  # bools are not numbers
        (0, False),
        (2, None),
        (2, [3]),
        (2, b"3"),
        ("2026-01-01", 20260101),
        ("a", None),
        ("a", ["b"]),
        ("a", b"b"),
        (b"a", "b"),
        (2, float("nan")),
        (float("nan"), 2),
        (2, {"x": 3}),
        (2, object()),
    ],
)
def test_ordering_type_mismatch_is_false(value: Any, ctx_value: Any) -> None:
    for op in (LT, LTE, GT, GTE):
        assert not check(cond("f", op, value), {"f": ctx_value})


@pytest.mark.parametrize("op", [LT, LTE, GT, GTE])
def test_ordering_missing_field_is_false(op: int) -> None:
    assert not check(cond("f", op, 0), {})
    assert not check(cond("f", op, ""), {})


MARKETS = ["NL", "DE", "BE", "FR", "GB", "ES", "IT", "US"]


@pytest.mark.parametrize(
    ("values", "ctx", "member"),
    [
        (MARKETS, {"f": "NL"}, True),
        (MARKETS, {"f": "US"}, True),
        (MARKETS, {"f": "nl"}, False),
        (MARKETS, {"f": "CH"}, False),
        (MARKETS, {"f": ["NL"]}, False),  # unhashable context value: no error
        (MARKETS, {"f": {"NL": 1}}, False),
        (MARKETS, {"f": None}, False),
        (MARKETS, {}, False),  # missing: IN False, NOT_IN True
        ([1, 2, 3], {"f": 2}, True),
        ([1, 2, 3], {"f": 2.0}, True),
        ([1, 2, 3], {"f": 2.5}, False),
        ([1, 2, 3], {"f": True}, False),  # bool is not 1
        ([0, 5], {"f": False}, False),
        ([1, 2, 3], {"f": "2"}, False),
        ([0.5, 2.0], {"f": 2}, True),
        ([0.5, float("nan")], {"f": float("nan")}, False),
        ([True], {"f": True}, True),
        ([True], {"f": 1}, False),
        ([False], {"f": 0.0}, False),
        ([False], {"f": False}, True),
        ([], {"f": "NL"}, False),  # empty list: nothing is in it
        ([], {}, False),
    ],
)
def test_in_and_not_in(values: list[Any], ctx: dict[str, Any], member: bool) -> None:
    assert check(cond("f", IN, values), ctx) is member
    assert check(cond("f", NOT_IN, values), ctx) is not member


def test_in_float_vector() -> None:
    vec = c.Value(float_vector_value=c.FloatVector(values=[0.5, 1.0]))
    assert check(cond("f", IN, raw=vec), {"f": 1})
    assert not check(cond("f", IN, raw=vec), {"f": 0.25})
    assert check(cond("f", NOT_IN, raw=vec), {"f": 0.25})


def test_exists() -> None:
    f = cond("attributes.tier", EXISTS)
    assert check(f, {"attributes.tier": "gold"})
    assert check(f, {"attributes.tier": None})  # explicit null is present
    assert check(f, {"attributes.tier": []})
    assert not check(f, {"attributes.tiers": "gold"})
    assert not check(f, {})
    # The value is ignored, whatever its kind.
    assert check(cond("attributes.tier", EXISTS, ["x"]), {"attributes.tier": 1})
    assert check(negate(f), {})


@pytest.mark.parametrize(
    ("value", "ctx_value", "contains"),
    [
        ("gold", ["silver", "gold"], True),
        ("gold", ["Gold"], False),
        ("gold", [], False),
        ("gold", ("gold",), True),
        (3, [1, 2, 3], True),
        (3, [1.0, 3.0], True),
        (1, [True], False),  # bool is not 1
        (True, [1, 1.0], False),
        (True, [False, True], True),
        (None, ["a", None], True),
        (None, ["a"], False),
        (b"x", [b"x"], True),
        (b"x", ["x"], False),
        (float("nan"), [float("nan")], False),
        ("old", "golden", True),  # substring
        ("", "anything", True),
        ("Old", "golden", False),
        ("gold", "gol", False),
        (3, "x3x", False),  # substring needs a string value
        (None, "abc", False),
        (b"ol", b"gold", False),  # bytes are not strings
        ("gold", b"gold", False),
        ("gold", None, False),
        (3, 3, False),
        ("gold", {"gold": 1}, False),
    ],
)
def test_contains(value: Any, ctx_value: Any, contains: bool) -> None:
    assert check(cond("f", CONTAINS, value), {"f": ctx_value}) is contains


def test_contains_missing_field_is_false() -> None:
    assert not check(cond("f", CONTAINS, "x"), {})


# --------------------------------------------------------------------------------------------
# Composition


def test_all_of_any_of_negate() -> None:
    nl = cond("market", EQ, "NL")
    mobile = cond("device", EQ, "MOBILE_WEB")
    ctx = {"market": "NL", "device": "DESKTOP"}
    assert not check(all_of(nl, mobile), ctx)
    assert check(any_of(nl, mobile), ctx)
    assert check(all_of(nl, negate(mobile)), ctx)
    assert not check(negate(any_of(nl, mobile)), ctx)
    assert check(negate(negate(nl)), ctx)
    assert check(all_of(), ctx)  # empty AND
    assert not check(any_of(), ctx)  # empty OR
    assert not check(negate(all_of()), ctx)
    assert check(negate(any_of()), ctx)
    assert check(any_of(any_of(), all_of()), ctx)


@pytest.mark.parametrize("n", range(1, 8))
def test_all_of_and_any_of_of_n_children(n: int) -> None:
    """Every child counts, whatever the number of children (specialised paths for 1-3)."""
    for k in range(n):
        ctx = {f"f{i}": 1 for i in range(n)}
        ctx[f"f{k}"] = 0
        conditions = [cond(f"f{i}", EQ, 1) for i in range(n)]
        assert not check(all_of(*conditions), ctx)
        assert check(any_of(*conditions), ctx) is (n > 1)
        only_k = [cond(f"f{i}", EQ, 0) for i in range(n)]
        assert check(any_of(*only_k), ctx)
        assert not check(any_of(*only_k), {f"f{i}": 1 for i in range(n)})
    assert check(all_of(*[cond(f"f{i}", EQ, 1) for i in range(n)]), {f"f{i}": 1 for i in range(n)})


def test_typical_experiment_filter() -> None:
    f = all_of(
        cond("market", IN, MARKETS),
        cond("device", EQ, "MOBILE_WEB"),
        cond("attributes.nights", GTE, 2),
    )
    pred = compile_filter(f)
    ctx: dict[str, Any] = {"market": "NL", "device": "MOBILE_WEB", "attributes.nights": 3}
    assert pred(ctx)
    assert not pred({**ctx, "market": "CH"})
    assert not pred({**ctx, "device": "DESKTOP"})
    assert not pred({**ctx, "attributes.nights": 1})
    assert not pred({**ctx, "attributes.nights": "3"})
    assert not pred({k: v for k, v in ctx.items() if k != "attributes.nights"})


def nested(depth: int) -> c.Filter:
    """A chain of ``depth`` filters: negates around one condition at the bottom."""
    f = cond("market", EQ, "NL")
    for _ in range(depth - 1):
        f = negate(f)
    return f


def test_nesting_limit() -> None:
    pred = compile_filter(nested(MAX_DEPTH))
    assert pred({"market": "NL"}) is (MAX_DEPTH % 2 == 1)
    with pytest.raises(TargetingError) as err:
        compile_filter(nested(MAX_DEPTH + 1))
    assert err.value.field == "targeting" + ".negate" * MAX_DEPTH
    # Deeper still: the error names the first filter past the limit, without recursing on.
    with pytest.raises(TargetingError) as err:
        compile_filter(all_of(nested(90)))  # upb caps messages at 100 levels
    assert err.value.field == "targeting.all_of.filters[0]" + ".negate" * (MAX_DEPTH - 1)


# --------------------------------------------------------------------------------------------
# Compile-time errors


@pytest.mark.parametrize(
    ("f", "path", "problem"),
    [
        (cond("market", Op.OPERATOR_UNSPECIFIED, "NL"), "targeting.condition.operator", "set"),
        (cond("market", 42, "NL"), "targeting.condition.operator", "unknown operator 42"),
        (cond("", EQ, "NL"), "targeting.condition.field", "empty"),
        (cond("", EXISTS), "targeting.condition.field", "empty"),
        (cond("market", EQ), "targeting.condition.value", "EQ needs a value"),
        (cond("market", EQ, raw=c.Value()), "targeting.condition.value", "EQ needs a value"),
        (cond("market", NE), "targeting.condition.value", "NE needs a value"),
        (cond("market", LT), "targeting.condition.value", "LT needs a value"),
        (cond("market", IN), "targeting.condition.value", "IN needs a value"),
        (cond("market", NOT_IN), "targeting.condition.value", "NOT_IN needs a value"),
        (cond("market", CONTAINS), "targeting.condition.value", "CONTAINS needs a value"),
        (cond("market", IN, "NL"), "targeting.condition.value", "IN needs a list value"),
        (cond("market", NOT_IN, None), "targeting.condition.value", "NOT_IN needs a list"),
        (cond("market", EQ, ["NL"]), "targeting.condition.value", "EQ needs a scalar"),
        (cond("market", NE, [1]), "targeting.condition.value", "NE needs a scalar"),
        (cond("market", CONTAINS, ["NL"]), "targeting.condition.value", "CONTAINS needs a scalar"),
        (cond("n", GTE, [2]), "targeting.condition.value", "GTE needs a scalar"),
        (
            cond("n", LT, raw=c.Value(float_vector_value=c.FloatVector(values=[1.0]))),
            "targeting.condition.value",
            "LT needs a scalar",
        ),
        (cond("n", GT, True), "targeting.condition.value", "GT needs a number"),
        (cond("n", LTE, None), "targeting.condition.value", "LTE needs a number"),
        (
            all_of(cond("market", EQ, "NL"), cond("market", IN, "NL")),
            "targeting.all_of.filters[1].condition.value",
            "IN needs a list value",
        ),
        (
            any_of(cond("a", EQ, 1), cond("b", EQ, 2), cond("c", Op.OPERATOR_UNSPECIFIED, 3)),
            "targeting.any_of.filters[2].condition.operator",
            "operator must be set",
        ),
        (
            negate(all_of(any_of(cond("a", EXISTS), negate(cond("", EQ, 1))))),
            "targeting.negate.all_of.filters[0].any_of.filters[1].negate.condition.field",
            "empty",
        ),
    ],
)
def test_compile_errors_name_the_field_path(f: c.Filter, path: str, problem: str) -> None:
    with pytest.raises(TargetingError) as err:
        compile_filter(f)
    assert err.value.field == path
    assert problem in err.value.problem
    assert str(err.value).startswith(path + ": ")


def test_targeting_error_is_invalid_argument_with_custom_root() -> None:
    with pytest.raises(InvalidArgument) as err:
        compile_filter(all_of(cond("x", IN, 1)), where="experiment.targeting")
    assert isinstance(err.value, TargetingError)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.field == "experiment.targeting.all_of.filters[0].condition.value"


def test_the_first_error_in_order_is_reported() -> None:
    f = all_of(cond("a", EQ, 1), any_of(cond("", EQ, 1)), cond("c", IN, 1))
    with pytest.raises(TargetingError) as err:
        compile_filter(f)
    assert err.value.field == "targeting.all_of.filters[1].any_of.filters[0].condition.field"


# --------------------------------------------------------------------------------------------
# Evaluation never raises


class Hostile:
    """Raises from every comparison and from hashing."""

    def _boom(self, *_: object) -> bool:
        raise RuntimeError("boom")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _boom
    __hash__ = _boom


class HostileMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")

    def __contains__(self, key: object) -> bool:
        raise RuntimeError("boom")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")


ALL_KINDS_OF_FILTERS = [
    cond("f", EQ, "x"),
    cond("f", EQ, 1),
    cond("f", EQ, True),
    cond("f", EQ, None),
    cond("f", EQ, b"x"),
    cond("f", NE, "x"),
    cond("f", NE, 1),
    cond("f", NE, True),
    cond("f", NE, None),
    cond("f", LT, 1),
    cond("f", LTE, "a"),
    cond("f", GT, b"a"),
    cond("f", GTE, 1.5),
    cond("f", IN, ["a"]),
    cond("f", IN, [1]),
    cond("f", IN, [True]),
    cond("f", NOT_IN, ["a"]),
    cond("f", NOT_IN, [1.5]),
    cond("f", EXISTS),
    cond("f", CONTAINS, "a"),
    cond("f", CONTAINS, 1),
    cond("f", CONTAINS, True),
    cond("f", CONTAINS, None),
]


@pytest.mark.parametrize("f", ALL_KINDS_OF_FILTERS)
def test_evaluation_never_raises(f: c.Filter) -> None:
    pred = compile_filter(f)
    hostile_contexts: list[Mapping[str, Any]] = [
        {"f": Hostile()},
        {"f": [Hostile()]},
        {"f": (Hostile(), 1)},
        {"f": {"a": 1}},
        {"f": {1, 2}},
        {"f": object()},
        {"f": float("inf")},
        {"f": complex(1, 1)},
        {"f": [["a"]]},
        HostileMapping(),
    ]
    for ctx in hostile_contexts:
        assert type(pred(ctx)) is bool


# --------------------------------------------------------------------------------------------
# Property test: the compiled predicate agrees with a direct reading of the semantics.


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int | float):
        return "number"
    if isinstance(x, str):
        return "str"
    if isinstance(x, bytes):
        return "bytes"
    return "other"


def _eq(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) != "other" and bool(a == b)


_ORDER: dict[int, Callable[[Any, Any], bool]] = {
    LT: operator.lt,
    LTE: operator.le,
    GT: operator.gt,
    GTE: operator.ge,
}
_LISTS = ("int64_list_value", "double_list_value", "string_list_value", "bool_list_value")


def brute_error(f: c.Filter, where: str = "targeting", depth: int = 1) -> str | None:
    """Path of the first invalid part of ``f`` (pre-order), or None."""
    if depth > MAX_DEPTH:
        return where
    kind = f.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "negate":
        return brute_error(f.negate, where + ".negate", depth + 1)
    if kind in ("all_of", "any_of"):
        for i, sub in enumerate(getattr(f, kind).filters):
            err = brute_error(sub, f"{where}.{kind}.filters[{i}]", depth + 1)
            if err is not None:
                return err
        return None
    cnd = f.condition
    where += ".condition"
    if not 1 <= cnd.operator <= 10:
        return where + ".operator"
    if not cnd.field:
        return where + ".field"
    if cnd.operator == EXISTS:
        return None
    vkind = cnd.value.WhichOneof("kind")
    is_list = vkind in _LISTS or vkind == "float_vector_value"
    if vkind is None:
        return where + ".value"
    if cnd.operator in (IN, NOT_IN):
        return None if is_list else where + ".value"
    if is_list:
        return where + ".value"
    if cnd.operator in _ORDER and vkind in ("bool_value", "null_value"):
        return where + ".value"
    return None


def brute(f: c.Filter, ctx: Mapping[str, Any]) -> bool:
    kind = f.WhichOneof("kind")
    if kind is None:
        return True
    if kind == "all_of":
        return all(brute(sub, ctx) for sub in f.all_of.filters)
    if kind == "any_of":
        return any(brute(sub, ctx) for sub in f.any_of.filters)
    if kind == "negate":
        return not brute(f.negate, ctx)
    op, field, v = f.condition.operator, f.condition.field, value_to_python(f.condition.value)
    present, x = field in ctx, ctx.get(field)
    if op == EXISTS:
        return present
    if op == EQ:
        return present and _eq(x, v)
    if op == NE:
        return not (present and _eq(x, v))
    if op == IN:
        return present and any(_eq(x, e) for e in v)
    if op == NOT_IN:
        return not (present and any(_eq(x, e) for e in v))
    if op == CONTAINS:
        if isinstance(x, list | tuple):
            return any(_eq(e, v) for e in x)
        return isinstance(x, str) and isinstance(v, str) and v in x
    comparable = _kind(x) == _kind(v) and _kind(v) in ("number", "str", "bytes")
    return present and comparable and _ORDER[op](x, v)


FIELDS = ["a", "b"]
numbers = st.one_of(
    st.integers(-1, 2),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.5, math.inf, math.nan, 2**63 - 1]),
)
texts = st.text(alphabet="abAB", max_size=3)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, st.binary(max_size=2))
context_values = st.one_of(scalars, st.lists(scalars, max_size=4), st.tuples(scalars))
contexts = st.dictionaries(st.sampled_from(FIELDS), context_values, max_size=3)


VALUE_KINDS = ["unset", "null", "int", "double", "str", "bool", "bytes", "timestamp", *_LISTS]
VALUE_KINDS.append("float_vector_value")


@st.composite
def values(draw: st.DrawFn) -> c.Value:
    kind = draw(st.sampled_from(VALUE_KINDS))
    if kind == "unset":
        return c.Value()
    if kind == "null":
        return val(None)
    if kind == "int":
        return c.Value(int64_value=draw(st.integers(-1, 2)))
    if kind == "double":
        return c.Value(double_value=draw(st.sampled_from([0.0, 0.5, 2.0, -1.5, math.nan])))
    if kind == "str":
        return c.Value(string_value=draw(texts))
    if kind == "bool":
        return c.Value(bool_value=draw(st.booleans()))
    if kind == "bytes":
        return c.Value(bytes_value=draw(st.binary(max_size=2)))
    if kind == "timestamp":
        return ts(draw(st.integers(-2, 2)), draw(st.sampled_from([0, 500_000_000])))
    if kind == "int64_list_value":
        return c.Value(int64_list_value=c.Int64List(values=draw(st.lists(st.integers(-1, 2)))))
    if kind == "double_list_value":
        items = st.lists(st.sampled_from([0.0, 1.0, 0.5, math.nan]))
        return c.Value(double_list_value=c.DoubleList(values=draw(items)))
    if kind == "string_list_value":
        return c.Value(string_list_value=c.StringList(values=draw(st.lists(texts, max_size=3))))
    if kind == "bool_list_value":
        return c.Value(bool_list_value=c.BoolList(values=draw(st.lists(st.booleans()))))
    items = st.lists(st.sampled_from([0.0, 1.0, -2.5]), max_size=3)
    return c.Value(float_vector_value=c.FloatVector(values=draw(items)))


@st.composite
def conditions(draw: st.DrawFn, valid_only: bool) -> c.Filter:
    field = draw(st.sampled_from(FIELDS + ([] if valid_only else [""])))
    op = draw(st.integers(1, 10) if valid_only else st.integers(0, 11))
    f = cond(field, op, raw=draw(values()))
    if valid_only and brute_error(f) is not None:
        # Repair the value to one the operator accepts.
        if op in (IN, NOT_IN):
            f.condition.value.CopyFrom(val(draw(st.lists(texts, max_size=3))))
        else:
            f.condition.value.CopyFrom(val(draw(st.one_of(numbers, texts))))
    return f


def filters(valid_only: bool) -> st.SearchStrategy[c.Filter]:
    leaves = st.one_of(st.just(c.Filter()), conditions(valid_only))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda fs: all_of(*fs)),
            st.lists(children, max_size=4).map(lambda fs: any_of(*fs)),
            children.map(negate),
        ),
        max_leaves=12,
    )


@settings(max_examples=400, deadline=None)
@given(f=filters(valid_only=True), ctxs=st.lists(contexts, min_size=1, max_size=8))
def test_compiled_filters_agree_with_brute_force(f: c.Filter, ctxs: list[dict[str, Any]]) -> None:
    assert brute_error(f) is None
    pred = compile_filter(f)
    for ctx in ctxs:
        assert pred(ctx) is brute(f, ctx), ctx


@settings(max_examples=400, deadline=None)
@given(f=filters(valid_only=False), ctx=contexts)
def test_compile_rejects_exactly_the_invalid_filters(f: c.Filter, ctx: dict[str, Any]) -> None:
    expected = brute_error(f)
    if expected is None:
        assert compile_filter(f)(ctx) is brute(f, ctx)
    else:
        with pytest.raises(TargetingError) as err:
            compile_filter(f)
        assert err.value.field == expected
