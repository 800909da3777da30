"""The guardrail domain without gRPC: limits in UTF-8 bytes (Check and CheckStream, multi-byte
text right at the limit), reload reports (dry run, changed policies), the bounded detector
cache, and candidate policies sent inline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2, guardrail_pb2
from llmops.yamlfiles import HotReload
from services.guardrail import policy as policy_mod
from services.guardrail.detectors.base import Fact
from services.guardrail.domain import (
    MAX_TEXT_BYTES,
    Guardrail,
    PolicyCase,
    StreamStep,
    Subject,
    changed_policies,
    utf8_size,
)
from services.guardrail.engine import Engine
from services.guardrail.policy import DetectorCache, PolicyError, PolicySet, load_policies
from services.guardrail.servicer import candidate_data, policy_proto

OUT = common_pb2.DIRECTION_OUTPUT
POLICIES = """
defaults: {OUTPUT: copy}
policies:
  - name: copy
    version: 1
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: REDACT, params: {names: [Expedia]}}
  - name: quiet
    version: 1
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: FLAG, params: {names: [Expedia]}}
"""


class Events:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, envelope: Any) -> None:
        self.published.append(envelope)


def _revision(p: PolicySet) -> str:
    return p.revision


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "p.yaml").write_text(POLICIES)
    return tmp_path


@pytest.fixture
def domain(files: Path) -> Guardrail:
    policies = HotReload("policies", lambda: load_policies([files]), _revision)
    return Guardrail(policies, Engine(b"k"), Events(), ThreadPoolExecutor(1))


async def _items(subject: Subject, chunks: Sequence[str]) -> AsyncIterator[Subject | str]:
    yield subject
    for chunk in chunks:
        yield chunk


async def _stream(domain: Guardrail, chunks: Sequence[str]) -> list[StreamStep]:
    return [s async for s in domain.check_stream(_items(Subject(OUT), chunks))]


# The limit is 65,536 bytes: 16,384 emoji (4 bytes each), or 21,845 CJK characters (3 bytes)
# and one ASCII letter. Counted in code points, these texts are far below it.
EMOJI, CJK = "\N{GRINNING FACE}", "\N{CJK UNIFIED IDEOGRAPH-6F22}"
AT_LIMIT = {"emoji": EMOJI * 16_384, "cjk": CJK * 21_845 + "a"}


@pytest.mark.parametrize("kind", sorted(AT_LIMIT))
async def test_check_limit_counts_utf8_bytes(domain: Guardrail, kind: str) -> None:
    text = AT_LIMIT[kind]
    assert utf8_size(text) == MAX_TEXT_BYTES and len(text) < MAX_TEXT_BYTES // 2
    checked = await domain.check(Subject(OUT), text)
    assert checked.decision.verdict == common_pb2.VERDICT_ALLOW
    with pytest.raises(InvalidArgument, match="65536 bytes of UTF-8") as info:
        await domain.check(Subject(OUT), text + "b")
    assert info.value.field == "text"


@pytest.mark.parametrize("kind", sorted(AT_LIMIT))
async def test_stream_limit_counts_utf8_bytes(domain: Guardrail, kind: str) -> None:
    text = AT_LIMIT[kind]
    chunks = [text[i : i + 1024] for i in range(0, len(text), 1024)]
    steps = await _stream(domain, chunks)
    assert steps[-1].summary is not None and "".join(s.released_text for s in steps) == text
    assert steps[-1].released_until == len(text)  # offsets stay code points
    with pytest.raises(InvalidArgument, match="65536 bytes of UTF-8") as info:
        await _stream(domain, [*chunks, "b"])
    assert info.value.field == "chunk"


async def test_stream_protocol_errors(domain: Guardrail) -> None:
    async def chunk_first() -> AsyncIterator[Subject | str]:
        yield "text"

    with pytest.raises(InvalidArgument, match="first message"):
        [s async for s in domain.check_stream(chunk_first())]
    with pytest.raises(InvalidArgument, match="only the first"):
        [s async for s in domain.check_stream(_items(Subject(OUT), ["a", Subject(OUT)]))]  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="direction"):
        await _stream_direction(domain)


async def test_facts_are_capped_in_count_and_size_on_every_path(domain: Guardrail) -> None:
    """The facts of a check are read by the grounding detector for every text checked
    against them: at most 256 of them, 64 KiB of UTF-8 together, for Check, CheckBatch
    and CheckStream alike (INVALID_ARGUMENT naming ``facts``)."""
    events = domain._events
    assert isinstance(events, Events)
    before = len(events.published)
    fine = Subject(OUT, facts=(Fact("price", "price_tonight: 120 EUR"),) * 256)
    assert (await domain.check(fine, "Fine.")).decision.verdict == common_pb2.VERDICT_ALLOW
    for subject, why in (
        (Subject(OUT, facts=(Fact("p", "stars: 4"),) * 257), "at most 256 facts"),
        (Subject(OUT, facts=(Fact("a", "é" * 20_000), Fact("b", "x" * 30_000))), "65536 bytes"),
    ):
        for attempt in (
            domain.check(subject, "Fine."),
            domain.check_batch(subject, ["Fine.", "Also fine."]),
            _collect(domain.check_stream(_items(subject, ["Fine."]))),
        ):
            with pytest.raises(InvalidArgument, match=why) as info:
                await attempt
            assert info.value.field == "facts"
    assert len(events.published) == before  # nothing refused was recorded


async def _collect(steps: AsyncIterator[StreamStep]) -> list[StreamStep]:
    return [s async for s in steps]


async def _stream_direction(domain: Guardrail) -> None:
    [s async for s in domain.check_stream(_items(Subject(0), ["a"]))]


async def test_dry_run_reports_without_swapping(domain: Guardrail, files: Path) -> None:
    before = domain.policies
    text = POLICIES.replace("action: FLAG", "action: BLOCK, block_message: No.")
    (files / "p.yaml").write_text(text + "  - {name: new, version: 3, directions: [INPUT],"
                                  " detectors: [{detector: topic, action: FLAG}]}\n")  # fmt: skip
    dry = await domain.reload(dry_run=True)
    assert domain.policies is before  # nothing swapped
    assert dry.policy_count == 3 and dry.changed_policies == ("new@3", "quiet@1")
    assert dry.previous_revision == dry.revision == before.revision
    assert dry.candidate_revision != before.revision and not dry.applied
    real = await domain.reload(dry_run=False)
    assert real.applied and real.revision == real.candidate_revision == dry.candidate_revision
    assert real.previous_revision == before.revision
    assert domain.policies.revision == real.revision and domain.policy("new", 0, 1).version == 3
    again = await domain.reload(dry_run=False)  # nothing changed since
    assert (again.applied, again.changed_policies, again.policy_count) == (False, (), 3)
    (files / "p.yaml").write_text(POLICIES.replace("action: REDACT", "action: DROP"))
    with pytest.raises(PolicyError, match="action") as info:
        await domain.reload(dry_run=True)
    assert "policies[copy@1].detectors[0].action" in info.value.field
    assert domain.policies.revision == real.revision


def test_changed_policies_lists_new_other_edited_and_removed(tmp_path: Path) -> None:
    def policies(text: str) -> PolicySet:
        (tmp_path / "p.yaml").write_text(text)
        return load_policies([tmp_path])

    old = policies(POLICIES)
    assert changed_policies(old, old) == ()
    edited = policies(POLICIES.replace("names: [Expedia]}}\n  - name: quiet", "names: [Kayak]}}"
                                       "\n  - name: quiet"))  # fmt: skip
    assert changed_policies(old, edited) == ("copy@1",)
    versioned = policies(
        POLICIES.replace("name: quiet\n    version: 1", "name: quiet\n    version: 2")
    )
    assert changed_policies(old, versioned) == ("quiet@2",)
    removed = policies(POLICIES.split("  - name: quiet")[0])
    assert changed_policies(old, removed) == ("quiet@0",)


def test_detector_cache_is_a_bounded_lru() -> None:
    cache = DetectorCache(size=2)

    def get(name: str) -> Any:
        return cache.get("competitor", {"names": [name]}, "here")

    a, b = get("A"), get("B")
    assert get("A") is a  # a hit, and A becomes the most recently used
    c = get("C")  # evicts B, the least recently used
    assert len(cache) == 2 and get("A") is a and get("C") is c
    assert get("B") is not b  # rebuilt after eviction
    assert len(cache) == 2
    with pytest.raises(PolicyError, match="unknown detector 'nope'"):
        cache.get("nope", {}, "here")
    with pytest.raises(PolicyError) as info:
        cache.get("competitor", {"colour": "red"}, "here")
    assert info.value.field == "here.params"
    with pytest.raises(ValueError):
        DetectorCache(size=0)


async def test_candidates_do_not_grow_the_process_cache(domain: Guardrail) -> None:
    for i in range(policy_mod.DETECTOR_CACHE_SIZE + 20):
        candidate = {"detectors": [{"detector": "competitor", "action": "FLAG",
                                    "params": {"names": [f"Shop{i}"]}}]}  # fmt: skip
        case = PolicyCase("c", OUT, f"Shop{i} is cheaper", expected_verdict=common_pb2.VERDICT_FLAG)
        assert (await domain.test_policy(candidate, 0, [case])).failed_count == 0
    assert len(policy_mod.DETECTOR_CACHE) <= policy_mod.DETECTOR_CACHE_SIZE


async def test_candidate_round_trips_through_the_contract(domain: Guardrail) -> None:
    stored = domain.stored_policy("copy", 1)
    message = policy_proto(stored)
    assert message.timeout.ToMilliseconds() == 50
    assert message.fail_mode == guardrail_pb2.FAIL_MODE_CLOSED
    assert message.detectors[0].params["redact_style"].string_value == "placeholder"
    data = candidate_data(message)
    assert data["timeout"] == "50ms" and data["detectors"][0]["redact_style"] == "placeholder"
    assert policy_mod.compile_candidate(data).spec == stored.spec
    message.detectors[0].action = common_pb2.VERDICT_UNSPECIFIED
    with pytest.raises(PolicyError) as info:
        policy_mod.compile_candidate(candidate_data(message))
    assert info.value.field == "candidate: detectors[0].action"
    message.detectors[0].action = 999  # type: ignore[assignment]  # a number no name has
    with pytest.raises(PolicyError) as info:
        policy_mod.compile_candidate(candidate_data(message))
    assert info.value.field == "candidate: detectors[0].action"
    with pytest.raises(InvalidArgument, match="target"):
        await domain.test_policy(None, 0, [])
    with pytest.raises(InvalidArgument, match="name"):
        await domain.test_policy("", 0, [])
    case = PolicyCase("c", OUT, "hello")
    with pytest.raises(InvalidArgument, match=r"at most 100 cases"):
        await domain.test_policy("copy", 1, [case] * 101)
    with pytest.raises(InvalidArgument, match=r"cases\[1\]\.text"):
        await domain.test_policy("copy", 1, [case, PolicyCase("big", OUT, "x" * 70_000)])
    too_many_facts = PolicyCase("f", OUT, "hi", facts=(Fact("a", "y" * 40_000),) * 2)
    with pytest.raises(InvalidArgument, match=r"cases\[0\]\.facts"):
        await domain.test_policy("copy", 1, [too_many_facts])


async def test_check_batch_decides_each_text_as_check_does(domain: Guardrail) -> None:
    events = domain._events
    assert isinstance(events, Events)
    long_text = "A quiet street. " * 400 + "Cheaper than Expedia."  # over INLINE_LIMIT: pooled
    texts = ["Fine.", "Cheaper than Expedia.", long_text, "Also fine."]
    checked = await domain.check_batch(Subject(OUT), texts)
    singles = [await domain.check(Subject(OUT), t) for t in texts]
    assert [c.decision.verdict for c in checked] == [c.decision.verdict for c in singles] == [
        common_pb2.VERDICT_ALLOW, common_pb2.VERDICT_REDACT, common_pb2.VERDICT_REDACT,
        common_pb2.VERDICT_ALLOW,
    ]  # fmt: skip
    assert [c.decision.redacted_text for c in checked] == [
        c.decision.redacted_text for c in singles
    ]
    assert checked[2].decision.redacted_text.endswith("Cheaper than [COMMERCE.COMPETITOR].")
    # recorded as single checks are: the two REDACTs, not the clean ALLOWs
    assert [bool(c.decision_id) for c in checked] == [False, True, True, False]
    assert len(events.published) == 4  # two from the batch, two from the single checks


async def test_check_batch_refuses_before_checking_anything(tmp_path: Path) -> None:
    # time to spare: a loaded box must not fail a check closed (BLOCK) on the 50 ms default
    (tmp_path / "p.yaml").write_text(
        POLICIES.replace("    detectors:", "    timeout: 5000ms\n    detectors:")
    )
    events = Events()
    policies = HotReload("policies", lambda: load_policies([tmp_path]), _revision)
    domain = Guardrail(policies, Engine(b"k"), events, ThreadPoolExecutor(1))
    cases: list[tuple[list[str], str]] = [
        ([], "texts"),
        (["Expedia"] * 257, "texts"),
        (["Expedia", AT_LIMIT["emoji"] + "b"], "texts[1]"),
    ]
    for texts, field in cases:
        with pytest.raises(InvalidArgument) as info:
            await domain.check_batch(Subject(OUT), texts)
        assert info.value.field == field
    assert events.published == []  # the REDACT of "Expedia" was never decided nor recorded
    many = await domain.check_batch(Subject(OUT), ["Expedia " * 100] * 256)  # all but 5 pooled
    assert len(many) == 256 and {c.decision.verdict for c in many} == {common_pb2.VERDICT_REDACT}


class StuckEngine(Engine):
    """Evaluates short texts; a long one never finishes in time (a detector that hangs)."""

    def __init__(self) -> None:
        super().__init__(b"k")
        self.release = __import__("threading").Event()

    def evaluate(self, policy: Any, text: str, ctx: Any) -> Any:
        if len(text) > 4096:
            self.release.wait(10)
        return super().evaluate(policy, text, ctx)


async def test_a_check_that_hangs_answers_degraded_at_the_hard_timeout(files: Path) -> None:
    import time

    policies = HotReload("policies", lambda: load_policies([files]), _revision)
    engine = StuckEngine()
    events = Events()
    domain = Guardrail(policies, engine, events, ThreadPoolExecutor(1), hard_timeout_s=0.2)
    long_text = "A quiet street. " * 400
    try:
        began = time.monotonic()
        checked = await domain.check(Subject(OUT), long_text)
        assert time.monotonic() - began < 2.0  # not the 10 s the detector would take
        decision = checked.decision
        assert decision.degraded and decision.failed == ["hard_timeout"]
        assert decision.verdict == common_pb2.VERDICT_BLOCK  # FAIL_MODE_CLOSED, the default
        assert checked.decision_id  # a degraded decision is recorded
        batch = await domain.check_batch(Subject(OUT), ["Fine.", long_text])
        assert batch[0].decision.verdict == common_pb2.VERDICT_ALLOW  # decided inline
        assert batch[1].decision.failed == ["hard_timeout"]
        # a stream's scan runs on the pool too: the stream ends degraded, nothing released
        began = time.monotonic()
        steps = [s async for s in domain.check_stream(_items(Subject(OUT), ["Hi. ", long_text]))]
        assert time.monotonic() - began < 2.0
        final = steps[-1]
        assert final.summary is not None and final.summary.decision.failed == ["hard_timeout"]
        assert final.verdict == common_pb2.VERDICT_BLOCK and final.released_text == ""
        assert final.summary.decision_id  # recorded, like any degraded decision
    finally:
        engine.release.set()


async def test_work_past_the_rpcs_deadline_is_not_started(files: Path) -> None:
    """A long text waiting for the one worker while another hangs: its deadline passes in
    the queue, so its detectors never run (DEADLINE_EXCEEDED). A text checked with no time
    left runs no detector: each one counts as failed, as past the policy's budget."""
    import asyncio
    import time

    from llmops.callcontext import deadline_var
    from llmops.errors import DeadlineExceeded

    policies = HotReload("policies", lambda: load_policies([files]), _revision)
    engine = StuckEngine()
    evaluated: list[str] = []
    original = engine.evaluate

    def counting(policy: Any, text: str, ctx: Any) -> Any:
        evaluated.append(text[:8])
        return original(policy, text, ctx)

    engine.evaluate = counting  # type: ignore[method-assign]
    domain = Guardrail(policies, engine, Events(), ThreadPoolExecutor(1), hard_timeout_s=5)
    try:
        stuck = asyncio.create_task(domain.check(Subject(OUT), "Stuck. " * 1000))
        await asyncio.sleep(0.05)
        deadline_var.set(time.monotonic() + 0.1)
        queued = asyncio.create_task(domain.check(Subject(OUT), "Queued, mentions Expedia. " * 10))
        await asyncio.sleep(0.3)
        engine.release.set()
        await stuck
        with pytest.raises(DeadlineExceeded):
            await queued
        assert evaluated == ["Stuck. S"]
        deadline_var.set(time.monotonic())  # no time left, checked inline
        decision = (await domain.check(Subject(OUT), "Expedia")).decision
        assert decision.failed == ["competitor"] and decision.degraded
    finally:
        engine.release.set()
        deadline_var.set(None)
