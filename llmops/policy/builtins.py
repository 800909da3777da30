"""Rego builtins the Wasm module asks its host for (``opa_builtin0..4`` imports).

OPA compiles most builtins into the module; the rest it lists in the module's
``builtins()`` export and calls back into the host for. This module implements those the
bundle's policies use, with OPA's semantics (``topdown/strings.go`` for ``sprintf``: Go's
``fmt.Sprintf`` after converting numbers to Go ints/floats, strings to Go strings and any
other value to its Rego text). The engine refuses, at load time and naming it, a bundle that
needs a builtin missing here: extend :data:`HOST_BUILTINS` (with a case in the shared
decision table) or keep the policy off it.

Arguments reach the host as JSON (``opa_json_dump``), so a Rego *set* arrives as an array:
format arrays, not sets, in messages (the shared table would show the difference).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from llmops.policy.engine import JsonValue, PolicyEvaluationError

_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``: double-quoted, printable runes kept, others escaped."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_go_escape(ord(ch)))
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def _go_escape(code: int) -> str:
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64 (``strconv.FormatFloat(f, 'g', -1, 64)``): the shortest
    digits that round-trip, in ``e`` notation when the decimal exponent is < -4 or >= 6
    (``fmt.Println(1e6)`` prints ``1e+06``, ``fmt.Println(123456.5)`` ``123456.5``)."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    neg = "-" if sign else ""
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point falls in ``text``
    text = text.rstrip("0")
    if not text:
        return neg + "0"
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{text}"
    if point >= len(text):
        return neg + text + "0" * (point - len(text))
    return f"{neg}{text[:point]}.{text[point:]}"


def rego_text(value: JsonValue) -> str:
    """A value's Rego text (``ast.Term.String()``): what ``sprintf`` prints for non-scalars."""
    if isinstance(value, str):
        return go_quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(rego_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ", ".join(f"{rego_text(k)}: {rego_text(v)}" for k, v in items) + "}"
    raise PolicyEvaluationError(f"sprintf: cannot format a {type(value).__name__}")


def _go_arg(value: JsonValue) -> int | float | str:
    """OPA's conversion of a sprintf operand to the Go value fmt sees."""
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return rego_text(value)
    if isinstance(value, int | float | str):
        return value
    raise PolicyEvaluationError(f"sprintf: cannot format a {type(value).__name__}")


def _go_type(value: int | float | str) -> str:
    return {int: "int64", float: "float64", str: "string"}[type(value)]


def _go_plain(value: int | float | str) -> str:
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def _format_one(verb: str, precision: str | None, value: int | float | str) -> str:
    if verb == "v" or (verb == "s" and isinstance(value, str)):
        return _go_plain(value)
    if verb == "q" and isinstance(value, str):
        return go_quote(value)
    if verb == "d" and isinstance(value, int):
        return str(value)
    if verb == "f" and isinstance(value, float | int) and not isinstance(value, bool):
        return f"{float(value):.{6 if precision is None else int(precision)}f}"
    if verb in "sqdf" and not (verb == "q" and isinstance(value, int)):
        return f"%!{verb}({_go_type(value)}={_go_plain(value)})"
    raise PolicyEvaluationError(
        f"sprintf: verb %{verb} on a {_go_type(value)} is not implemented by the embedded "
        "Wasm engine; use %s, %v, %q, %d or %f"
    )


def sprintf(fmt: JsonValue, operands: JsonValue) -> str:
    """Rego ``sprintf(format, [operands])`` for the verbs %s %v %q %d %f %% (no widths or
    flags: those fail loudly rather than format differently from OPA)."""
    if not isinstance(fmt, str) or not isinstance(operands, list):
        raise PolicyEvaluationError("sprintf: operands must be a string and an array")
    args = [_go_arg(v) for v in operands]
    out: list[str] = []
    pos = used = 0
    for match in _VERB.finditer(fmt):
        flags, width, precision, verb = match.groups()
        out.append(fmt[pos : match.start()])
        pos = match.end()
        if verb == "%":
            out.append("%")
            continue
        if flags or width:
            raise PolicyEvaluationError(
                f"sprintf: flags and widths ({match.group(0)}) are not implemented by the "
                "embedded Wasm engine"
            )
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(verb, precision, args[used]))
        used += 1
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_go_plain(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


HOST_BUILTINS: dict[str, Callable[..., Any]] = {"sprintf": sprintf}
"""Builtin name -> implementation over JSON values, for the ``opa_builtinN`` imports."""
