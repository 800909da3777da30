"""Task files and the Run pipeline's own logic: steps in order within their budgets, failure
policies, guardrail BLOCK and REDACT, output parsing, one prediction event per run.

The other services sit behind :class:`MeshPorts`; here an in-memory implementation records
what the pipeline asked (the gRPC implementation is exercised through the whole mesh in
tests/integration/test_mesh.py). The model is real HTTP: an OpenAI-compatible upstream
(benchmarks.openai_upstream) behind the service's own Generation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from benchmarks.openai_upstream import Upstream, start_upstream
from llmops.errors import InvalidArgument, NotFound, Unavailable
from llmops.v1 import common_pb2, inference_pb2
from services.inference.metrics import InferenceMetrics
from services.inference.pipeline import Pipeline, RunCall, parse_output
from services.inference.ports import Passage, Prompt, Variant, Verdict
from services.inference.tasks import PostprocessStep, StepSpec, TaskError, concurrent_group
from tests.inference_support import (  # close_engines: an autouse fixture
    Events,
    close_engines,  # noqa: F401
    generation,
    serving,
)

ROUTES = """
engines:
  upstream: {{backend: openai, base_url: "{url}"}}
routes:
  - name: fast
    targets: [{{model: m, version: 3, engine: upstream, served_model: upstream}}]
    sampling: {{max_tokens: 8}}
"""
TASKS = """
tasks:
  - name: summary
    inputs:
      property_id: {type: int}
      reviews: {type: string_list, max_items: 3, max_length: 200}
    steps:
      - experiment: {id: exp, unit: user}
        timeout_ms: 50
        on_failure: skip
      - features:
          lookups: [{service: facts, entity: property, key: property_id, input: property_id}]
        timeout_ms: 50
        on_failure: fallback
        fallback: {city: Unknown}
      - retrieval:
          {collection: listings, query: "{{ features.city }}", k: 2,
           filter: {city: "{{ features.city }}"}}
        timeout_ms: 50
        on_failure: skip
      - prompt: {name: p, system: "Facts: {{ features.city }}; {{ passages | length }} passages"}
        timeout_ms: 51
      - guardrail_input: {check: [reviews], retrieved: true}
        timeout_ms: 50
      - model: {route: fast}
        timeout_ms: 2000
      - guardrail_output: {grounding: true}
        timeout_ms: 50
      - postprocess: {output: text}
"""


class Ports:
    """In-memory MeshPorts: canned answers, recorded calls, injectable failures."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, Exception] = {}
        self.slow: dict[str, float] = {}
        self.verdicts: dict[str, tuple[int, str]] = {}
        """text -> (verdict, replacement text)"""

    async def _enter(self, kind: str, detail: Any) -> None:
        self.calls.append((kind, detail))
        if kind in self.slow:
            await asyncio.sleep(self.slow[kind])
        if kind in self.fail:
            raise self.fail[kind]

    async def assign(self, context: Any, unit_type: str, unit_id: str, experiment_id: str,
                     timeout_s: float) -> Variant | None:  # fmt: skip
        await self._enter("assign", unit_id)
        return Variant(experiment_id, "v2", prompt_name="p", prompt_version=2,
                       params={"max_tokens": 5})  # fmt: skip

    async def features(self, service: str, refs: Sequence[str], entity: str, key: str,
                       value: common_pb2.Value, timeout_s: float) -> dict[str, Any]:  # fmt: skip
        await self._enter("features", value.int64_value)
        return {"city": "Lisbon", "stars": 4}

    async def features_batch(self, service: str, entity: str, key: str,
                             values: Sequence[common_pb2.Value],
                             timeout_s: float) -> list[dict[str, Any]]:  # fmt: skip
        await self._enter("features_batch", [v.int64_value for v in values])
        # better-reviewed properties for higher ids, the rest equal
        return [
            {"property_stats:review_score": 5.0 + v.int64_value / 2,
             "property_stats:review_count": 40 * v.int64_value}
            for v in values
        ]  # fmt: skip

    async def search(self, collection: str, text: str, k: int, equals: Mapping[str, str],
                     text_field: str, timeout_s: float) -> list[Passage]:  # fmt: skip
        await self._enter("search", (text, dict(equals)))
        return [Passage("l-1", "Sunny flat in Lisbon.", 0.9, {"city": "Lisbon"})]

    async def prompt(self, name: str, version: int, alias: str, timeout_s: float) -> Prompt:
        await self._enter("prompt", (name, version, alias))
        return Prompt(name, version or 1, "Summarise: {% for r in reviews %}{{ r }} {% endfor %}",
                      ("reviews",))  # fmt: skip

    async def check(self, context: Any, direction: int, policy: str, text: str,
                    facts: Sequence[tuple[str, str]], route: str, task: str,
                    timeout_s: float) -> Verdict:  # fmt: skip
        await self._enter("check", (direction, text, len(facts)))
        verdict, replacement = self.verdicts.get(text, (common_pb2.VERDICT_ALLOW, text))
        summary = common_pb2.GuardrailSummary(direction=direction, policy="pol", verdict=verdict)  # type: ignore[arg-type]
        blocked = verdict == common_pb2.VERDICT_BLOCK
        return Verdict(verdict, replacement, "Not allowed." if blocked else "", summary)

    async def check_batch(self, context: Any, direction: int, policy: str, texts: Sequence[str],
                          route: str, task: str, timeout_s: float) -> list[Verdict]:  # fmt: skip
        await self._enter("check_batch", len(texts))
        return [await self.check(context, direction, policy, t, (), route, task, timeout_s)
                for t in texts]  # fmt: skip


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await start_upstream(reply_tokens=6)
    yield up
    await up.close()


def build(tmp_path: Path, url: str, tasks: str = TASKS) -> tuple[Pipeline, Ports, Events]:
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "routes" / "r.yaml").write_text(ROUTES.format(url=url))
    (tmp_path / "tasks" / "t.yaml").write_text(tasks)
    config = serving([tmp_path / "routes"], [tmp_path / "tasks"])
    built, port, events = generation(config)
    ports = Ports()
    return Pipeline(config, built, ports, port, allow_debug=True), ports, events


def value(x: Any) -> common_pb2.Value:
    if isinstance(x, list):
        v = common_pb2.Value()
        v.string_list_value.values.extend(x)
        return v
    return (
        common_pb2.Value(int64_value=x) if isinstance(x, int) else common_pb2.Value(string_value=x)
    )


def call(**inputs: Any) -> RunCall:
    inputs = inputs or {"property_id": 7, "reviews": ["Great pool.", "Friendly staff."]}
    return RunCall(
        "summary",
        {k: value(v) for k, v in inputs.items()},
        common_pb2.RequestContext(user_id="u-1", tenant="acme"),
        debug=True,
    )


async def test_a_run_goes_through_every_step_in_order(tmp_path: Path, upstream: Upstream) -> None:
    pipeline, ports, events = build(tmp_path, upstream.base_url)
    registry = CollectorRegistry()
    pipeline.metrics = InferenceMetrics(registry)
    result = await pipeline.run(call())
    runs = registry.get_sample_value(
        "llmops_inference_runs_total", {"task": "summary", "outcome": "OK"}
    )
    assert runs == 1
    assert (
        registry.get_sample_value(
            "llmops_inference_stage_seconds_count", {"task": "summary", "stage": "model"}
        )
        == 1
    )
    assert [s.stage for s in result.stages] == [
        "experiment", "features", "retrieval", "prompt", "guardrail_input", "model",
        "guardrail_output", "postprocess",
    ]  # fmt: skip
    assert [k for k, _ in ports.calls] == [
        "assign", "features", "search", "prompt", "check_batch", "check", "check", "check",
        "check",
    ]  # fmt: skip
    assert ports.calls[2][1] == ("Lisbon", {"city": "Lisbon"})  # rendered from the features
    assert ports.calls[3][1] == ("p", 2, "champion")  # the variant picked prompt version 2
    state = result.state
    assert state.output is not None and state.output.string_value
    assert (state.model.name, state.model.version, state.route) == ("m", 3, "fast")
    assert upstream.last_body is not None and upstream.last_body["max_tokens"] == 5  # variant
    system, user = upstream.last_body["messages"]
    assert system["content"] == "Facts: Lisbon; 1 passages"
    assert user["content"] == "Summarise: Great pool. Friendly staff."
    output_check = ports.calls[-1][1]
    assert output_check[0] == common_pb2.DIRECTION_OUTPUT and output_check[2] >= 3  # facts
    (envelope,) = events.published
    event = envelope.prediction
    assert (event.task, event.variant, event.prompt_name, event.prompt_version) == (
        "summary", "v2", "p", 2,
    )  # fmt: skip
    assert event.status_code == 0 and event.feature_vector_hash == result.feature_vector_hash
    assert len(event.stages) == 8 and event.usage.completion_tokens == 5
    assert result.debug is not None and result.debug["retrieved_ids"] == ["l-1"]


async def test_steps_that_need_only_the_inputs_run_together(
    tmp_path: Path, upstream: Upstream
) -> None:
    pipeline, ports, _ = build(tmp_path, upstream.base_url)
    ports.slow["assign"] = ports.slow["features"] = 0.03
    result = await pipeline.run(call())
    experiment, features, retrieval = result.stages[:3]
    assert (experiment.stage, features.stage) == ("experiment", "features")
    assert features.start_offset_us < experiment.start_offset_us + experiment.duration_us
    assert experiment.duration_us >= 30_000 and features.duration_us >= 30_000
    # retrieval reads the features (its query and filter): it starts after them
    assert retrieval.start_offset_us >= features.start_offset_us + features.duration_us
    assert result.state.skipped == [] and result.state.variant is not None
    assert result.state.features == {"city": "Lisbon", "stars": 4}


def test_concurrent_groups_hold_input_only_steps_of_distinct_kinds() -> None:
    def step(kind: str, **settings: Any) -> StepSpec:
        return StepSpec.model_validate({kind: settings, "timeout_ms": 10})

    steps = [
        step("experiment", id="e", unit="user"),
        step("guardrail_input", check=["q"]),
        step("features", lookups=[{"service": "s", "entity": "p", "key": "id", "input": "id"}]),
        step("guardrail_input", check=["r"]),  # a second input guardrail: a new group
        step("retrieval", collection="c", query="{{ q }}"),
        step("guardrail_input", check=["r"], retrieved=True),  # reads the passages: alone
        step("experiment", id="e2", unit="user"),
        step("model", route="fast"),
    ]
    groups, i = [], 0
    while i < len(steps):
        group = concurrent_group(steps, i)
        groups.append([s.kind for s in group])
        i += len(group)
    assert groups == [
        ["experiment", "guardrail_input", "features"], ["guardrail_input"], ["retrieval"],
        ["guardrail_input"], ["experiment"], ["model"],
    ]  # fmt: skip


async def test_failure_policies_skip_fallback_and_fail(tmp_path: Path, upstream: Upstream) -> None:
    pipeline, ports, events = build(tmp_path, upstream.base_url)
    ports.fail["assign"] = Unavailable("experiment: down")
    ports.fail["features"] = Unavailable("features: down")
    ports.slow["search"] = 0.2  # over its 50 ms budget
    result = await pipeline.run(call())
    assert result.state.skipped == ["experiment", "features", "retrieval"]
    assert result.state.variant is None and result.state.features == {"city": "Unknown"}
    assert result.state.passages == [] and result.state.output is not None
    pipeline.prompt_cache_s = 0  # fetch the template on every run
    ports.fail["prompt"] = NotFound("prompt p: NOT_FOUND")
    with pytest.raises(NotFound):
        await pipeline.run(call())
    ports.fail.pop("prompt")
    ports.slow["prompt"] = 0.2
    with pytest.raises(Unavailable, match="step prompt timed out after 51 ms"):
        await pipeline.run(call())
    codes = [e.prediction.status_code for e in events.published]
    assert codes == [0, 5, 14]  # every outcome is a prediction, with its status


async def test_a_block_stops_the_run_and_a_redaction_reaches_the_model(
    tmp_path: Path, upstream: Upstream
) -> None:
    pipeline, ports, events = build(tmp_path, upstream.base_url)
    ports.verdicts["Call 555-0100."] = (common_pb2.VERDICT_REDACT, "Call [PHONE].")
    result = await pipeline.run(call(property_id=7, reviews=["Great pool.", "Call 555-0100."]))
    assert upstream.last_body is not None
    assert "[PHONE]" in upstream.last_body["messages"][1]["content"]
    assert "555-0100" not in json.dumps(upstream.last_body)
    ports.verdicts["Sunny flat in Lisbon."] = (common_pb2.VERDICT_BLOCK, "")  # a passage
    before = upstream.requests
    result = await pipeline.run(call())
    assert result.state.blocked == "Not allowed." and result.output is None
    assert result.state.finish == inference_pb2.FINISH_REASON_CONTENT_FILTER
    assert [s.stage for s in result.stages][-1] == "guardrail_input"
    assert upstream.requests == before  # the model never saw it
    assert (
        events.published[-1].prediction.finish_reason == inference_pb2.FINISH_REASON_CONTENT_FILTER
    )


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"reviews": ["x"]}, "inputs.property_id"),
        ({"property_id": "7", "reviews": ["x"]}, "inputs.property_id"),
        ({"property_id": 7, "reviews": ["x"] * 4}, "inputs.reviews"),
        ({"property_id": 7, "reviews": ["x" * 201]}, "inputs.reviews[0]"),
        ({"property_id": 7, "reviews": ["  "]}, "inputs.reviews[0]"),
        ({"property_id": 7, "reviews": ["x"], "extra": "y"}, "inputs.extra"),
    ],
)
async def test_bad_inputs_name_the_field(
    tmp_path: Path, upstream: Upstream, inputs: dict[str, Any], field: str
) -> None:
    pipeline, ports, events = build(tmp_path, upstream.base_url)
    with pytest.raises(InvalidArgument) as caught:
        await pipeline.run(call(**inputs))
    assert caught.value.field == field and ports.calls == []
    assert events.published[0].prediction.status_code == 3
    with pytest.raises(NotFound, match="no task 'nope'"):
        await pipeline.run(RunCall("nope", {}))


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ("      - model: {route: fast}\n", "tasks[summary]", "a model step needs a prompt step"),
        ('{{ features.city }}"', "retrieval.query", "template syntax error"),
        ("input: property_id}", "steps[1].features", "no input 'property'"),
        ("route: fast}", "model.route", "no route"),
        ("retrieved: true}", "tasks[summary]", "'guardrail_input' appears 3 times (at most 2)"),
    ],
)
def test_bad_task_files_name_the_file_and_field(
    tmp_path: Path, change: str, field: str, message: str
) -> None:
    bad = {
        "      - model: {route: fast}\n": re.sub(
            r"      - prompt: .*\n        timeout_ms: 51\n", "", TASKS
        ),
        '{{ features.city }}"': TASKS.replace(
            'query: "{{ features.city }}"', 'query: "{{ features.city }"'
        ),
        "input: property_id}": TASKS.replace("input: property_id}", "input: property}"),
        "route: fast}": TASKS.replace("route: fast}", "route: slow}"),
        "retrieved: true}": TASKS.replace(
            "      - guardrail_input: {check: [reviews], retrieved: true}\n",
            "      - guardrail_input: {check: [reviews], retrieved: true}\n" * 3,
        ),
    }[change]
    with pytest.raises(TaskError) as caught:
        build(tmp_path, "http://127.0.0.1:9/v1", bad)
    assert "t.yaml" in caught.value.field and field in caught.value.field
    assert message in str(caught.value)


def test_outputs_are_parsed_as_the_task_declares() -> None:
    label = PostprocessStep(output="label", labels=["beach", "city"])
    assert parse_output("I think: City break!", label)[0].string_value == "city"
    with pytest.raises(InvalidArgument, match="none of the labels"):
        parse_output("mountains", label)
    items = parse_output("1. Beaches\n2. Oceanside.\n- Scenery", PostprocessStep(output="list"))
    assert list(items[0].string_list_value.values) == ["Beaches", "Oceanside", "Scenery"]
    as_json = PostprocessStep.model_validate(
        {"output": "json", "schema": {"type": "object", "required": ["highlights"]}}
    )
    value_, doc = parse_output('Sure! {"highlights": ["pool"]} Enjoy.', as_json)
    assert doc == {"highlights": ["pool"]} and json.loads(value_.string_value) == doc
    with pytest.raises(InvalidArgument, match="schema"):
        parse_output('{"other": 1}', as_json)


RANKING_ROUTES = """
engines:
  ranker: {backend: onnx, model_dir: models/property-ranker}
routes:
  - name: rank
    targets: [{model: property-ranker, version: 1, engine: ranker}]
"""
RANKING_TASKS = """
tasks:
  - name: ranking
    inputs:
      candidates: {type: int_list, max_items: 50}
    steps:
      - rank: {route: rank, candidates: candidates, service: property_ranking_v1,
               entity: property, key: property_id, top_k: 3}
"""


async def test_a_rank_step_scores_a_page_in_one_feature_call_and_one_model_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text(RANKING_ROUTES)
    (tmp_path / "tasks" / "t.yaml").write_text(RANKING_TASKS)
    config = serving([tmp_path / "routes"], [tmp_path / "tasks"])
    built, port, _ = generation(config)
    ports = Ports()
    pipeline = Pipeline(config, built, ports, port)
    page = [4, 9, 1, 7, 2]
    result = await pipeline.run(RunCall("ranking", {"candidates": value_ids(page)}))
    assert [k for k, _ in ports.calls] == ["features_batch"]  # one call for the whole page
    assert ports.calls[0][1] == page
    ranked = list(result.output.int64_list_value.values) if result.output else []
    assert ranked == [9, 7, 4]  # the better-reviewed first, top_k 3
    scores = [r["score"] for r in (result.structured or {})["ranking"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    assert (result.state.model.name, result.state.route) == ("property-ranker", "rank")
    assert not result.state.generative  # not AI-generated text
    empty = await pipeline.run(RunCall("ranking", {"candidates": value_ids([])}))
    assert empty.structured == {"ranking": []} and len(ports.calls) == 1


def value_ids(ids: list[int]) -> common_pb2.Value:
    v = common_pb2.Value()
    v.int64_list_value.values.extend(ids)
    return v
