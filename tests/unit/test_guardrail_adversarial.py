"""Every detector of the shipped policies against adversarial texts up to the 64 KiB a check
accepts: long runs of the characters its patterns repeat (spaces, digits with separators,
zero-width characters, "key: value" shapes), as text and as facts. Each call must stay
under a time bound, and a text four times longer (4, 16, 64 KiB) may cost at most about four
times as much: a pattern that backtracks (quadratic or worse) fails the growth check long
before it gets slow enough to fail the bound on a fast machine.

Found this way and fixed: the grounding fact-line regex (cubic on runs of spaces), the price
pattern tried at every digit of a long number (quadratic), the injection detector's scan of
zero-width runs (quadratic: 15 s on 16 K characters), the toxicity lexicon's masked words on
one long token of stars (exponential: ``"f" + 40 stars + "x"`` took 2.2 s; now on RE2).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from services.guardrail.detectors.base import CheckContext, Detector, Fact
from services.guardrail.domain import MAX_TEXT_BYTES
from services.guardrail.policy import load_policies

REPO = Path(__file__).resolve().parents[2]

UNITS = (
    " ", "\n", "\t", "a", "A", "1", "1 ", "1,", ",111", "1.", "a:", ":", "::1", "x=",
    "price: ", "Ab ", "De ", "a@", "a.a@", "+1 ", "(1", "€1", "1 EUR", "★", "\u200b",
    "a\u200b", "\u0430a", "ignore ", "my name is ", "Mr ", "\U0001f3f4", "https://a",
)  # fmt: skip
"""Repeated to fill a text: each is a shape some detector's patterns loop over."""

MASKED = (("f", "*"), ("m", "**o"), ("b", "*i"), ("a", "s"), ("k", "il"))
"""(first letter, unit): one long token, the letter then the unit repeated, that a lexicon
word's expression (letters repeated, all but the first maskable with ``*``) must reject."""

BOUND_S = 10.0
"""Per call at 64 KiB. Linear detectors take well under a second here; a quadratic one takes
minutes."""
GROWTH = 8.0
"""Allowed cost ratio for four times the text: 4 for linear, 16 for quadratic."""
NOISE_S = 0.1
"""Calls faster than this are not checked for growth (scheduling noise on a busy machine)."""


def _detectors() -> list[Detector]:
    policies = load_policies([REPO / "deploy" / "guardrails"])
    found: dict[int, Detector] = {}
    for versions in policies.policies.values():
        for policy in versions.values():
            for detector in policy.detectors:
                found[id(detector)] = detector
    return list(found.values())


DETECTORS = _detectors()


Shape = str | tuple[str, str]


def _text(unit: Shape, size: int) -> str:
    """``unit`` repeated to ``size`` UTF-8 bytes, then one character that breaks the run (a
    (letter, unit) pair: the letter first, and the token ends in a letter no word has)."""
    if isinstance(unit, tuple):
        letter, unit = unit
        return letter + unit * ((size - 3) // len(unit.encode())) + "q!"
    per = len(unit.encode())
    return unit * (size // per) + "!"


def _cost(detector: Detector, unit: Shape, size: int) -> float:
    text = _text(unit, size)
    contexts = (  # the text as input; as output with itself as the facts (grounding reads them)
        CheckContext("INPUT"),
        CheckContext("OUTPUT", facts=(Fact("adversarial", text),)),
    )
    worst = 0.0
    gc.disable()  # a collection of the test process's garbage is not the detector's cost
    try:
        for ctx in contexts:
            best = float("inf")
            for _ in range(2):  # the faster of two: a stall of a busy machine is not cost
                began = time.perf_counter()
                detector.detect(text, ctx)
                best = min(best, time.perf_counter() - began)
            worst = max(worst, best)
    finally:
        gc.enable()
    return worst


def test_the_shipped_policies_use_every_kind_of_detector() -> None:
    assert {d.name for d in DETECTORS} >= {
        "pii", "prompt_injection", "toxicity", "competitor", "grounding", "topic", "json_schema",
    }  # fmt: skip


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_detector_stays_linear_on_adversarial_text(detector: Detector) -> None:
    slow: list[str] = []
    for unit in (*UNITS, *MASKED):
        previous: tuple[int, float] | None = None
        for size in (MAX_TEXT_BYTES // 16, MAX_TEXT_BYTES // 4, MAX_TEXT_BYTES):
            cost = _cost(detector, unit, size)
            if cost > BOUND_S:
                slow.append(f"{unit!r}: {cost:.2f} s at {size // 1024} KiB")
                break
            if previous is not None and cost > NOISE_S and cost > GROWTH * previous[1]:
                slow.append(
                    f"{unit!r}: {previous[1]:.3f} s at {previous[0] // 1024} KiB, "
                    f"{cost:.3f} s at {size // 1024} KiB"
                )
                break  # a backtracking pattern at the next size could take minutes
            previous = (size, max(cost, NOISE_S / GROWTH))
    assert not slow, f"{detector.name} backtracks: {slow}"
