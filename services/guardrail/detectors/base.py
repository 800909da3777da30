"""The interface every guardrail detector implements.

A detector is a pure function of the text (and the request's facts and locale): no I/O,
no global state, deterministic. It returns findings with code-point spans into the text
(Python ``str`` indices are code points), a dotted type and a confidence in [0, 1]. The
policy engine decides what a finding means (threshold, action); detectors only find.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Finding:
    type: str
    """Dotted type, e.g. "pii.email", "prompt_injection.ignore_instructions", "toxicity.hate"."""
    start: int
    """Span start in code points (inclusive); 0 with end 0 means the whole text."""
    end: int
    """Span end in code points (exclusive)."""
    score: float
    """Confidence in [0, 1]."""
    detector: str
    """Name of the detector that found it, e.g. "pii"."""


@dataclass(frozen=True, slots=True)
class Fact:
    id: str
    text: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a detector may look at besides the text."""

    direction: str = "INPUT"
    """"INPUT" (text going into a model) or "OUTPUT" (text a model wrote)."""
    locale: str = ""
    """BCP 47 tag of the shopper, e.g. "de-DE" (hints, e.g. for phone number regions)."""
    facts: Sequence[Fact] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    """The policy's detector parameters (e.g. competitor names, allowed topics)."""


class Detector(Protocol):
    name: str
    """Stable name used in policies and latency reports, e.g. "pii"."""

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]: ...
