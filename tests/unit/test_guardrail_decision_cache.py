"""The guardrail's decision cache (services/guardrail/engine.py DecisionCache) through the
domain: a text checked again under the same policy and context skips the detectors and gets
the same decision; anything that can change a decision (policy set, policy, direction,
locale, facts) is part of the key; degraded decisions and long texts are never kept; every
check is still recorded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmops.v1 import common_pb2
from llmops.yamlfiles import HotReload
from services.guardrail.detectors.base import Fact
from services.guardrail.domain import Guardrail, Subject
from services.guardrail.engine import Decision, DecisionCache, Engine
from services.guardrail.policy import PolicySet, load_policies
from tests.unit.test_guardrail_domain import POLICIES as DOMAIN_POLICIES
from tests.unit.test_guardrail_domain import Events

OUT = common_pb2.DIRECTION_OUTPUT
POLICIES = (
    DOMAIN_POLICIES
    + """  - name: both
    version: 1
    directions: [INPUT, OUTPUT]
    detectors:
      - {detector: competitor, action: FLAG, params: {names: [Expedia]}}
"""
)
TEXT = "Book it here rather than on Expedia, it is cheaper."


class CountingEngine(Engine):
    def __init__(self) -> None:
        super().__init__(b"k")
        self.runs = 0

    def evaluate(self, policy: Any, text: str, ctx: Any) -> Decision:
        self.runs += 1
        return super().evaluate(policy, text, ctx)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "p.yaml").write_text(POLICIES)
    return tmp_path


def make(files: Path, entries: int = 100) -> tuple[Guardrail, CountingEngine, Events]:
    policies = HotReload[PolicySet](
        "policies", lambda: load_policies([files]), lambda p: p.revision
    )
    engine, events = CountingEngine(), Events()
    domain = Guardrail(
        policies, engine, events, ThreadPoolExecutor(1), decisions=DecisionCache(entries)
    )
    return domain, engine, events


async def test_a_repeated_text_skips_the_detectors_and_gets_the_same_decision(
    files: Path,
) -> None:
    domain, engine, events = make(files)
    first = await domain.check(Subject(OUT), TEXT)
    again = await domain.check(Subject(OUT), TEXT)
    assert engine.runs == 1
    assert not first.decision.cached and again.decision.cached
    assert again.decision.verdict == first.decision.verdict == common_pb2.VERDICT_REDACT
    assert again.decision.redacted_text == first.decision.redacted_text
    assert again.decision.findings == first.decision.findings
    assert again.decision.latencies_us == []  # no detector ran
    # each check is an occurrence of its own: recorded (a REDACT is published) every time
    assert len(events.published) == 2 and first.decision_id != again.decision_id
    assert (domain.decisions.hits, domain.decisions.misses) == (1, 1)


async def test_a_caller_changing_its_decision_does_not_change_the_kept_one(
    files: Path,
) -> None:
    domain, _, _ = make(files)
    first = await domain.check(Subject(OUT), TEXT)
    first.decision.findings.clear()
    first.decision.redacted_text = "tampered"
    again = await domain.check(Subject(OUT), TEXT)
    assert again.decision.findings and again.decision.redacted_text != "tampered"
    again.decision.findings.clear()
    assert (await domain.check(Subject(OUT), TEXT)).decision.findings


@pytest.mark.parametrize(
    "other",
    [
        Subject(OUT, policy="quiet"),
        Subject(common_pb2.DIRECTION_INPUT, policy="both"),
        Subject(OUT, policy="both", locale="de-DE"),
        Subject(OUT, policy="both", facts=(Fact("f1", "The hotel has a pool."),)),
    ],
    ids=["policy", "direction", "locale", "facts"],
)
async def test_what_can_change_a_decision_is_part_of_the_key(files: Path, other: Subject) -> None:
    domain, engine, _ = make(files)
    await domain.check(Subject(OUT, policy="both"), TEXT)
    await domain.check(other, TEXT)
    assert engine.runs == 2
    await domain.check(other, TEXT)
    assert engine.runs == 2  # and that one is kept under its own key


async def test_a_policy_reload_drops_what_was_kept(files: Path) -> None:
    domain, engine, _ = make(files)
    before = await domain.check(Subject(OUT), TEXT)
    (files / "p.yaml").write_text(
        POLICIES.replace("action: REDACT,", "action: BLOCK, block_message: No.,")
    )
    await domain._policies.reload()  # what the watcher does on a change
    after = await domain.check(Subject(OUT), TEXT)
    assert engine.runs == 2 and not after.decision.cached
    assert before.decision.verdict == common_pb2.VERDICT_REDACT
    assert after.decision.verdict == common_pb2.VERDICT_BLOCK


async def test_batches_use_and_fill_the_cache(files: Path) -> None:
    domain, engine, _ = make(files)
    texts = [TEXT, "A quiet room with a view.", TEXT]
    first = await domain.check_batch(Subject(OUT), texts)
    assert engine.runs == 3  # within one batch nothing is kept before the batch is decided
    again = await domain.check_batch(Subject(OUT), texts)
    assert engine.runs == 3 and all(c.decision.cached for c in again)
    assert [c.decision.verdict for c in again] == [c.decision.verdict for c in first]


async def test_degraded_decisions_and_long_texts_are_not_kept(files: Path) -> None:
    domain, engine, _ = make(files)
    long_text = TEXT + " x" * 5000  # over 4,096 code points
    await domain.check(Subject(OUT), long_text)
    await domain.check(Subject(OUT), long_text)
    assert engine.runs == 2
    cache = domain.decisions
    policy = domain.policy("copy", 0, OUT)
    key, kept = cache.lookup("r", policy, "a text", _ctx())
    assert kept is None and key is not None
    degraded = Engine(b"k").evaluate(policy, "a text", _ctx())
    degraded.degraded = True
    cache.keep(key, degraded)
    assert cache.lookup("r", policy, "a text", _ctx())[1] is None


async def test_the_cache_is_bounded_and_can_be_turned_off(files: Path) -> None:
    domain, engine, _ = make(files, entries=2)
    for text in ("one", "two", "three", "one"):  # "one" was evicted by "three"
        await domain.check(Subject(OUT), text)
    assert engine.runs == 4 and len(domain.decisions._entries) == 2
    off, off_engine, _ = make(files, entries=0)
    await off.check(Subject(OUT), TEXT)
    await off.check(Subject(OUT), TEXT)
    assert off_engine.runs == 2 and off.decisions.hits == 0


def _ctx() -> Any:
    from services.guardrail.detectors.base import CheckContext

    return CheckContext(direction="OUTPUT")
