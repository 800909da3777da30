"""Timestamps and Durations in a request checked at the edge.

protobuf parses any seconds/nanos into a ``Timestamp``; the first ``ToDatetime()`` (or any
conversion) on an out-of-range one raises ``ValueError`` deep inside a service, which the
runtime could only answer INTERNAL. The runtime checks them once, right after parsing, and
answers INVALID_ARGUMENT with the field's path. Only the fields that can (transitively) hold
a Timestamp or Duration are visited: a plan per message type, computed once.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
_MIN_TS, _MAX_TS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31, as protobuf
_MAX_DURATION_S = 315_576_000_000  # 10,000 years, as protobuf

# (field name, how to visit it, the field's message type)
_Step = tuple[str, str, Descriptor]
_plans: dict[str, tuple[_Step, ...]] = {}


def _plan(desc: Descriptor, visiting: frozenset[str] = frozenset()) -> tuple[_Step, ...]:
    known = _plans.get(desc.full_name)
    if known is not None:
        return known
    steps: list[_Step] = []
    for field in desc.fields:
        sub = field.message_type
        if sub is None:
            continue
        if sub.GetOptions().map_entry:
            value = sub.fields_by_name["value"].message_type
            if value is not None and _holds_time(value, visiting | {desc.full_name}):
                steps.append((field.name, "map", value))
            continue
        if not _holds_time(sub, visiting | {desc.full_name}):
            continue
        steps.append((field.name, "repeated" if field.is_repeated else "single", sub))
    plan = tuple(steps)
    if not visiting:  # a plan made while a cycle was open may be partial: keep only the top
        _plans[desc.full_name] = plan
    return plan


def _holds_time(desc: Descriptor, visiting: frozenset[str]) -> bool:
    if desc.full_name in (TIMESTAMP, DURATION):
        return True
    if desc.full_name in visiting:
        return False
    return bool(_plan(desc, visiting))


def invalid_time(message: Any) -> str | None:
    """The first out-of-range Timestamp or Duration in ``message`` as ``path: reason``, or
    None when every one is valid."""
    found = _find(message)
    if found is None:
        return None
    parts, reason = found
    path = "".join(reversed(parts)).lstrip(".") or "request"
    return f"{path}: {reason}"


def _find(message: Any) -> tuple[list[str], str] | None:
    """(path parts, innermost first; reason) of the first invalid time. The path is built
    only on the way back from a failure: a valid batch formats nothing."""
    return _check(message, message.DESCRIPTOR.full_name, message.DESCRIPTOR)


def _check(value: Any, kind: str, desc: Descriptor) -> tuple[list[str], str] | None:
    if kind == TIMESTAMP:
        if not _MIN_TS <= value.seconds <= _MAX_TS or not 0 <= value.nanos <= 999_999_999:
            return [], "not a valid time (years 1 to 9999, nanos 0 to 999999999)"
        return None
    if kind == DURATION:
        s, n = value.seconds, value.nanos
        if abs(s) > _MAX_DURATION_S or abs(n) > 999_999_999 or (s and n and (s > 0) != (n > 0)):
            return [], "not a valid duration"
        return None
    for field, how, sub in _plan(desc):
        sub_kind = sub.full_name
        found: tuple[list[str], str] | None = None
        if how == "single":
            if value.HasField(field):
                found = _check(getattr(value, field), sub_kind, sub)
                if found:
                    found[0].append(f".{field}")
        elif how == "repeated":
            for i, item in enumerate(getattr(value, field)):
                found = _check(item, sub_kind, sub)
                if found:
                    found[0].extend((f"[{i}]", f".{field}"))
                    break
        else:
            entries = getattr(value, field)
            if not entries:  # most maps are empty: items() of a map container is costly
                continue
            for key, item in entries.items():
                found = _check(item, sub_kind, sub)
                if found:
                    found[0].extend((f"[{key}]", f".{field}"))
                    break
        if found:
            return found
    return None
