"""Guardrail policies, the engine (thresholds, actions, redaction, fail modes), the commerce
detectors, and CheckStream (hold-back across chunks, block mid-stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, guardrail_pb2
from llmops.yamlfiles import HotReload
from services.guardrail import policy as policy_mod
from services.guardrail.detectors.base import CheckContext, Fact, Finding
from services.guardrail.detectors.commerce import (
    CompetitorDetector,
    GroundingDetector,
    JsonSchemaDetector,
    TopicDetector,
    fact_lines,
)
from services.guardrail.domain import Guardrail
from services.guardrail.engine import Engine
from services.guardrail.policy import PolicyError, load_policies
from services.guardrail.servicer import GuardrailAdminServicer, GuardrailServicer

POLICIES = """
defaults: {OUTPUT: copy}
policies:
  - name: copy
    version: 1
    directions: [OUTPUT]
    detectors:
      - detector: competitor
        action: REDACT
        redact_style: placeholder
        params: {names: [Booking.com, Expedia]}
      - detector: grounding
        threshold: 0.7
        action: BLOCK
        block_message: "Not verified."
  - name: copy
    version: 2
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: REDACT, redact_style: mask, params: {names: [Expedia]}}
  - name: hashed
    version: 1
    directions: [OUTPUT]
    detectors:
      - {detector: competitor, action: REDACT, redact_style: hash, params: {names: [Expedia]}}
  - name: flaky
    version: 1
    directions: [INPUT, OUTPUT]
    fail_mode: CLOSED
    detectors:
      - {detector: competitor, action: FLAG, params: {names: [Expedia]}}
  - name: flaky-open
    version: 1
    directions: [INPUT]
    fail_mode: OPEN
    detectors:
      - {detector: competitor, action: FLAG, params: {names: [Expedia]}}
"""
OUT = CheckContext(direction="OUTPUT")


@pytest.fixture
def policies(tmp_path: Path) -> policy_mod.PolicySet:
    (tmp_path / "p.yaml").write_text(POLICIES)
    return load_policies([tmp_path])


def test_versions_defaults_and_lookup_errors(policies: policy_mod.PolicySet) -> None:
    out = common_pb2.DIRECTION_OUTPUT
    assert policies.get("", 0, out).version == 2  # default name, current version
    assert policies.get("copy", 1, out).version == 1
    with pytest.raises(NotFound, match="no version 9"):
        policies.get("copy", 9, out)
    with pytest.raises(NotFound, match="'nope'"):
        policies.get("nope", 0, out)
    with pytest.raises(InvalidArgument, match="not for this direction"):
        policies.get("copy", 0, common_pb2.DIRECTION_INPUT)


@pytest.mark.parametrize(
    ("edit", "where", "message"),
    [
        (("action: BLOCK", "action: DROP"), "policies[copy@1].detectors[1].action",
         "Input should be"),
        (("detector: grounding", "detector: magic"), "policies[copy@1].detectors[1].detector",
         "unknown detector 'magic'"),
        (("        block_message: \"Not verified.\"\n", ""), "detectors[1].block_message",
         "needs a user-safe message"),
        (("    version: 2", "    version: 1"), "policies[copy@1]", "already defined"),
        (("threshold: 0.7", "threshold: 7"), "detectors[1].threshold", "less than or equal"),
    ],
)  # fmt: skip
def test_policy_errors_are_precise(
    tmp_path: Path, edit: tuple[str, str], where: str, message: str
) -> None:
    assert edit[0] in POLICIES
    path = tmp_path / "p.yaml"
    path.write_text(POLICIES.replace(*edit, 1))
    with pytest.raises(PolicyError) as info:
        load_policies([tmp_path])
    assert info.value.field.startswith(str(path)) and where in info.value.field
    assert message in info.value.message


def test_repo_policies_name_their_detectors() -> None:
    text = (Path(__file__).resolve().parents[2] / "deploy/guardrails/storefront.yaml").read_text()
    for name in ("pii", "prompt_injection", "toxicity", "competitor", "grounding", "json_schema"):
        assert f"detector: {name}" in text
        assert name in policy_mod.DETECTORS


def test_redaction_styles_and_verdicts(policies: policy_mod.PolicySet) -> None:
    engine = Engine(b"k")
    out = common_pb2.DIRECTION_OUTPUT
    text = "Cheaper than on Expedia or Booking.com, really."
    d = engine.evaluate(policies.get("copy", 1, out), text, OUT)
    assert d.verdict == common_pb2.VERDICT_REDACT
    assert (
        d.redacted_text == "Cheaper than on [COMMERCE.COMPETITOR] or [COMMERCE.COMPETITOR], really."
    )
    assert [(c.finding.start, c.finding.end) for c in d.findings] == [(16, 23), (27, 38)]
    assert (
        d.findings[0].match_hash == engine.match_hash("Expedia")
        and len(d.findings[0].match_hash) == 64
    )
    masked = engine.evaluate(policies.get("copy", 2, out), text, OUT)
    assert masked.redacted_text == "Cheaper than on ******* or Booking.com, really."
    hashed = engine.evaluate(policies.get("hashed", 0, out), text, OUT).redacted_text
    assert hashed.startswith("Cheaper than on [COMMERCE.COMPETITOR:") and "Expedia" not in hashed
    clean = engine.evaluate(policies.get("copy", 1, out), "A quiet hotel.", OUT)
    assert (clean.verdict, clean.redacted_text, clean.findings) == (
        common_pb2.VERDICT_ALLOW,
        "",
        [],
    )
    assert [name for name, _ in clean.latencies_us] == ["competitor", "grounding"]


def test_grounding_blocks_claims_the_facts_contradict(policies: policy_mod.PolicySet) -> None:
    engine = Engine(b"k")
    facts = (Fact("p:1", "price_tonight: 120 EUR\nstars: 4\nhas_free_cancellation: false"),)
    ctx = CheckContext(direction="OUTPUT", facts=facts)
    copy = policies.get("copy", 1, common_pb2.DIRECTION_OUTPUT)
    ok = engine.evaluate(copy, "A 4-star hotel from €120 a night.", ctx)
    assert ok.verdict == common_pb2.VERDICT_ALLOW
    bad = engine.evaluate(copy, "A 5-star gem with free cancellation, only €99!", ctx)
    assert bad.verdict == common_pb2.VERDICT_BLOCK and bad.block_message == "Not verified."
    assert sorted(c.finding.type for c in bad.findings) == ["grounding.unsupported_claim"] * 3


def test_fact_lines_are_read_line_by_line() -> None:
    text = (
        "  Price Tonight : 120 EUR  \nstars=4\n\nnot a fact line\n12:30 check-in\n"
        "free_cancellation:\n\n  yes\nemail: a@b.c\nnote: ratio 1:2 = fine\nempty:"
    )
    assert fact_lines(text) == [
        ("Price Tonight", "120 EUR"),
        ("stars", "4"),
        ("free_cancellation", "yes"),  # a value left empty is on the next non-blank line
        ("email", "a@b.c"),
        ("note", "ratio 1:2 = fine"),  # the first ':' or '=' splits
    ]
    assert fact_lines(" " * 4000 + ":" + " " * 4000) == []  # was cubic: minutes


def test_commerce_detectors() -> None:
    ctx_in = CheckContext(direction="INPUT")
    assert CompetitorDetector(["Hotels.com"]).detect("see hotels.com!", OUT)[0].end == 14
    assert not CompetitorDetector(["Expedia"]).detect("expedient checkout", OUT)
    off = TopicDetector().detect("Write a python function that sorts a list", ctx_in)
    assert off and off[0].score > 0.8
    assert not TopicDetector().detect("Is breakfast included in the room price?", ctx_in)
    highlights = {"type": "array", "items": {"type": "string"}}
    schema = {
        "type": "object",
        "required": ["highlights"],
        "properties": {"highlights": highlights},
    }
    js = JsonSchemaDetector(schema)
    assert not js.detect('{"highlights": ["Sea view"]}', OUT)
    assert js.detect('{"highlights": "Sea view"}', OUT)[0].type == "json_schema.invalid"
    assert js.detect("not json", OUT)
    with pytest.raises(ValueError, match="schema"):
        JsonSchemaDetector(None)
    assert not GroundingDetector().detect("€99 a night", OUT)  # no facts: nothing to ground on


class _Broken:
    name = "competitor"

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        raise RuntimeError("boom")


def test_fail_modes(policies: policy_mod.PolicySet) -> None:
    engine = Engine(b"k")
    for name in ("flaky", "flaky-open"):
        p = policies.get(name, 0, common_pb2.DIRECTION_INPUT)
        broken = policy_mod.Check(_Broken(), (), 0.5, common_pb2.VERDICT_FLAG, "placeholder", "")
        object.__setattr__(p, "detectors", (broken.detector,))
        object.__setattr__(p, "checks", (broken,))
    closed = engine.evaluate(policies.get("flaky", 0, 1), "x", CheckContext())
    assert closed.degraded and closed.verdict == common_pb2.VERDICT_BLOCK and closed.block_message
    opened = engine.evaluate(policies.get("flaky-open", 0, 1), "x", CheckContext())
    assert opened.degraded and opened.verdict == common_pb2.VERDICT_ALLOW


async def _stream(
    servicer: GuardrailServicer,
    policy: str,
    chunks: list[str],
    facts: list[Any] | None = None,
    version: int = 0,
) -> list[guardrail_pb2.CheckStreamResponse]:
    async def requests() -> AsyncIterator[guardrail_pb2.CheckStreamRequest]:
        config = guardrail_pb2.CheckStreamConfig(
            direction=common_pb2.DIRECTION_OUTPUT,
            policy=policy,
            policy_version=version,
            facts=facts or [],
        )
        yield guardrail_pb2.CheckStreamRequest(config=config)
        for chunk in chunks:
            yield guardrail_pb2.CheckStreamRequest(chunk=chunk)

    return [r async for r in servicer.CheckStream(requests(), None)]


class Events:
    """A stand-in for ``ctx.events`` that keeps what is published."""

    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, envelope: Any) -> None:
        self.published.append(envelope)


def guardrail(paths: list[Path], events: Events) -> Guardrail:
    policies = HotReload("policies", lambda: load_policies(paths), lambda p: p.revision)
    return Guardrail(policies, Engine(b"k"), events, ThreadPoolExecutor(1))


@pytest.fixture
def servicer(tmp_path: Path) -> GuardrailServicer:
    (tmp_path / "p.yaml").write_text(POLICIES)
    events = Events()
    s = GuardrailServicer(guardrail([tmp_path], events))
    s.published = events.published  # type: ignore[attr-defined]
    return s


async def test_stream_redacts_a_match_split_across_chunks(servicer: GuardrailServicer) -> None:
    text = "Our rates beat Exp" + "edia every night. " + "Quiet rooms, " * 8 + "and a pool."
    chunks = ["Our rates beat Exp", "edia every night. ", *["Quiet rooms, "] * 8, "and a pool."]
    responses = await _stream(servicer, "copy", chunks, version=1)
    released = "".join(r.released_text for r in responses)
    assert released == text.replace("Expedia", "[COMMERCE.COMPETITOR]")
    assert responses[-1].final and responses[-1].verdict == common_pb2.VERDICT_REDACT
    assert responses[-1].released_until == len(text)
    # text was released before the end (hold-back, not buffering everything)
    assert any(r.released_text and not r.final for r in responses)
    assert servicer.published[-1].guardrail_decision.streamed  # type: ignore[attr-defined]


async def test_stream_block_ends_it_at_once(servicer: GuardrailServicer) -> None:
    fact = guardrail_pb2.Fact(id="p", text="stars: 3")
    chunks = ["A lovely ", "5-star hotel ", "near the beach. ", "More text " * 20]
    responses = await _stream(servicer, "copy", chunks, [fact], version=1)
    last = responses[-1]
    assert last.final and last.verdict == common_pb2.VERDICT_BLOCK
    assert last.block_message == "Not verified."
    released = "".join(r.released_text for r in responses)
    assert "5-star" not in released and "More text" not in released  # stopped mid-stream
    assert len(responses) <= 3


async def test_check_and_bad_input(servicer: GuardrailServicer) -> None:
    reply = await servicer.Check(
        guardrail_pb2.CheckRequest(direction=common_pb2.DIRECTION_OUTPUT, text="Try Expedia"), None
    )
    assert reply.verdict == common_pb2.VERDICT_REDACT and reply.redacted_text == "Try *******"
    assert reply.decision_id and reply.policy == "copy" and reply.policy_version == 2
    event = servicer.published[-1].guardrail_decision  # type: ignore[attr-defined]
    assert event.event_id == reply.decision_id and "Expedia" not in str(event)
    assert event.findings[0].match_hash and event.text_length == len("Try Expedia")
    allow = await servicer.Check(
        guardrail_pb2.CheckRequest(direction=common_pb2.DIRECTION_OUTPUT, text="Fine."), None
    )
    assert allow.verdict == common_pb2.VERDICT_ALLOW and not allow.decision_id
    with pytest.raises(InvalidArgument, match="direction"):
        await servicer.Check(guardrail_pb2.CheckRequest(text="x"), None)
    with pytest.raises(InvalidArgument, match="text"):
        await servicer.Check(
            guardrail_pb2.CheckRequest(direction=common_pb2.DIRECTION_OUTPUT, text="x" * 70_000),
            None,
        )
    with pytest.raises(InvalidArgument, match="config"):

        async def no_config() -> AsyncIterator[guardrail_pb2.CheckStreamRequest]:
            yield guardrail_pb2.CheckStreamRequest(chunk="x")

        [r async for r in servicer.CheckStream(no_config(), None)]
    long_text = "Expedia " * 700  # above the inline limit: checked in the worker pool
    pooled = await servicer.Check(
        guardrail_pb2.CheckRequest(direction=common_pb2.DIRECTION_OUTPUT, text=long_text), None
    )
    assert pooled.verdict == common_pb2.VERDICT_REDACT and "Expedia" not in pooled.redacted_text
    await asyncio.sleep(0)


REPO_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "guardrails"


async def test_stream_redacts_pii_split_across_chunks() -> None:
    events = Events()
    servicer = GuardrailServicer(guardrail([REPO_POLICIES], events))
    published = events.published
    chunks = ["Questions? Write to jane.do", "e@example.com or call ", "+44 20 79",
              "46 0958 today. ", *["The rooms are bright and quiet. "] * 4]  # fmt: skip
    responses = await _stream(servicer, "storefront-output", chunks)
    released = "".join(r.released_text for r in responses)
    assert "jane" not in released and "example.com" not in released and "7946" not in released
    assert released.startswith("Questions? Write to ********************")
    assert released.endswith("The rooms are bright and quiet. ")
    assert responses[-1].final and responses[-1].verdict == common_pb2.VERDICT_REDACT
    types = {f.type for r in responses for f in r.findings}
    assert {"pii.email", "pii.phone"} <= types
    event = published[-1].guardrail_decision
    assert event.streamed and "jane" not in str(event)


async def test_admin_lists_tests_and_reloads(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    domain = guardrail([tmp_path], Events())
    admin = GuardrailAdminServicer(domain)
    listed = await admin.ListPolicies(guardrail_pb2.ListPoliciesRequest(), None)
    assert [(p.name, p.version) for p in listed.policies][:1] == [("copy", 2)]
    got = await admin.GetPolicy(guardrail_pb2.GetPolicyRequest(name="copy", version=1), None)
    assert got.policy.detectors[1].params["block_message"].string_value == "Not verified."
    case = guardrail_pb2.PolicyTestCase(
        name="competitor", direction=common_pb2.DIRECTION_OUTPUT, text="Cheaper than Expedia",
        expected_verdict=common_pb2.VERDICT_REDACT,
    )  # fmt: skip
    wrong = guardrail_pb2.PolicyTestCase(
        name="expects block", direction=common_pb2.DIRECTION_OUTPUT, text="Fine.",
        expected_verdict=common_pb2.VERDICT_BLOCK,
    )  # fmt: skip
    result = await admin.TestPolicy(
        guardrail_pb2.TestPolicyRequest(policy="copy", cases=[case, wrong]), None
    )
    assert [r.passed for r in result.results] == [True, False] and result.failed_count == 1
    candidate = got.policy
    candidate.detectors[0].action = common_pb2.VERDICT_BLOCK
    candidate.detectors[0].params["block_message"].string_value = "No competitors."
    trial = await admin.TestPolicy(
        guardrail_pb2.TestPolicyRequest(candidate=candidate, cases=[case]), None
    )
    assert trial.results[0].verdict == common_pb2.VERDICT_BLOCK and not trial.results[0].passed
    (tmp_path / "p.yaml").write_text(POLICIES.replace("action: BLOCK", "action: DROP"))
    with pytest.raises(PolicyError, match="action"):
        await admin.ReloadPolicies(guardrail_pb2.GuardrailAdminServiceReloadPoliciesRequest(), None)
    assert domain.policies.get("copy", 1, 0).version == 1  # the old policies stay in force
    with pytest.raises(InvalidArgument, match="name"):
        await admin.GetPolicy(guardrail_pb2.GetPolicyRequest(), None)


def test_a_json_schema_never_fetches_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    fetched: list[str] = []

    def spy(url: Any, *args: Any, **kwargs: Any) -> Any:
        fetched.append(str(getattr(url, "full_url", url)))
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", spy)
    remote = {"$ref": "http://169.254.169.254/latest/meta-data"}
    with pytest.raises(PolicyError, match=r"schema\.\$ref.*points outside the schema"):
        policy_mod.compile_candidate(
            {"detectors": [{"detector": "json_schema", "action": "BLOCK",
                            "block_message": "Invalid.", "params": {"schema": remote}}]}
        )  # fmt: skip
    nested = {"properties": {"a": {"items": [{"$dynamicRef": "https://example.com/s"}]}}}
    with pytest.raises(ValueError, match=r"schema\.properties\.a\.items\[0\]\.\$dynamicRef"):
        JsonSchemaDetector(nested)
    local = {
        "$defs": {"name": {"type": "string"}},
        "type": "object",
        "properties": {"name": {"$ref": "#/$defs/name"}},
    }
    detector = JsonSchemaDetector(local)
    assert not detector.detect('{"name": "Alfama"}', OUT)
    assert detector.detect('{"name": 7}', OUT)[0].type == "json_schema.invalid"
    # an "$id" naming a host does not turn a local reference into a request either
    based = JsonSchemaDetector({"$id": "http://169.254.169.254/", "$ref": "#/$defs/x",
                                "$defs": {"x": {"type": "object"}}})  # fmt: skip
    assert not based.detect("{}", OUT)
    assert fetched == []


def test_a_schemas_expressions_run_on_re2_in_linear_time() -> None:
    """A caller's schema (a TestPolicy candidate) cannot stall the loop with a pattern that
    makes a backtracking engine explode: pattern, patternProperties and the additional
    properties they decide run on RE2; what RE2 cannot take is refused with its place."""
    import time

    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^x(y+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    detector = JsonSchemaDetector(schema)
    assert not detector.detect('{"code": "aaa", "xyy": 3}', OUT)
    assert detector.detect('{"code": "aaa", "xyy": "three"}', OUT)  # the pattern's schema
    assert detector.detect('{"code": "aaa", "other": 3}', OUT)  # matches no pattern
    began = time.perf_counter()
    evil = "a" * 5000 + "!"  # Python's re: (a+)+$ on 30 of these takes minutes
    assert detector.detect(json.dumps({"code": evil, "x" + "y" * 5000 + "!": 1}), OUT)
    assert time.perf_counter() - began < 1.0
    for bad, where in (
        ({"type": "string", "pattern": "(?=a)b"}, r"schema\.pattern"),
        ({"patternProperties": {"(a)\\1": {}}}, r"schema\.patternProperties"),
        ({"patternProperties": {"a": {}}, "unevaluatedProperties": False}, "unevaluated"),
    ):
        with pytest.raises(ValueError, match=where):
            JsonSchemaDetector(bad)
