"""``Run``: a storefront task's steps in order, each timed and bounded, one prediction event.

The task (:mod:`services.inference.tasks`) lists its steps; this module runs them against
the other services (:class:`services.inference.ports.MeshPorts`) and the service's own
generation (:class:`services.inference.generation.Generation`, unlogged: the run logs one
event for everything). For each step:

- its **budget** is its ``timeout_ms``, and never more than its share of what is left of the
  caller's deadline (the rest split over the remaining steps in proportion to their
  timeouts), so a slow early step cannot eat the model's time;
- a failure or a spent budget follows the step's ``on_failure``: ``skip`` (go on without
  it), ``fallback`` (go on with the step's ``fallback`` values) or ``fail`` (the run fails:
  UNAVAILABLE for a downstream failure or timeout, the step's own code otherwise);
- its latency is one StageLatency, in start order, and a skipped step is named in the debug
  output.

A guardrail BLOCK (input or output) ends the run with OK, no output, finish CONTENT_FILTER
and the block message; a REDACT replaces the text (inputs and passages are re-rendered into
the prompt; the output is replaced). Every outcome — blocked and failed runs included — is one
PredictionEvent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jsonschema  # type: ignore[import-untyped]
import structlog

from llmops.callcontext import current_request_id, remaining_time
from llmops.errors import InvalidArgument, LLMOpsError, ResourceExhausted, Unavailable
from llmops.events.ids import uuid7
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2, events_pb2, inference_pb2
from llmops.yamlfiles import HotReload
from services.inference.config import Serving
from services.inference.engine import ChatTurn
from services.inference.generation import FINISH, STATUS_NUMBER, GenerateCall, Generation
from services.inference.metrics import InferenceMetrics
from services.inference.ports import MeshPorts, Passage, Prompt, Variant, python_value
from services.inference.tasks import (
    TEMPLATES,
    CompiledTask,
    ExperimentStep,
    FeaturesStep,
    GuardrailInputStep,
    GuardrailOutputStep,
    InputSpec,
    ModelStep,
    PostprocessStep,
    PromptStep,
    RankStep,
    RetrievalStep,
    StepSpec,
)

log = structlog.get_logger("llmops.inference")

DEFAULT_RUN_BUDGET_S = 30.0
"""A run without a caller deadline gets this much."""
VERDICT_BLOCK = common_pb2.VERDICT_BLOCK
VERDICT_REDACT = common_pb2.VERDICT_REDACT
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "seed")
"""Variant params that override the model step's sampling."""


@dataclass(frozen=True, slots=True)
class RunCall:
    task: str
    inputs: Mapping[str, common_pb2.Value]
    context: common_pb2.RequestContext = field(default_factory=common_pb2.RequestContext)
    debug: bool = False
    skip_cache: bool = False


@dataclass
class _State:
    """What the steps have produced so far."""

    inputs: dict[str, Any]
    variant: Variant | None = None
    features: dict[str, Any] = field(default_factory=dict)
    passages: list[Passage] = field(default_factory=list)
    prompt: Prompt | None = None
    prompt_template: jinja2.Template | None = None
    system_template: jinja2.Template | None = None
    messages: tuple[ChatTurn, ...] = ()
    route: str = ""
    model: common_pb2.ModelRef = field(default_factory=common_pb2.ModelRef)
    usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    text: str | None = None
    finish: int = inference_pb2.FINISH_REASON_UNSPECIFIED
    output: common_pb2.Value | None = None
    structured: dict[str, Any] | None = None
    guardrails: list[common_pb2.GuardrailSummary] = field(default_factory=list)
    blocked: str | None = None
    """The block message once a guardrail blocked."""
    skipped: list[str] = field(default_factory=list)
    model_us: int = 0
    target_index: int = 0
    cache_hit: bool = False
    generative: bool = False
    """A model step wrote the output (EU AI Act Art. 50 marker); a ranking is not text."""

    def values(self) -> dict[str, Any]:
        """What templates see: the inputs by name, and features, passages, params."""
        params = dict(self.variant.params) if self.variant else {}
        return {
            **self.inputs,
            "inputs": self.inputs,
            "features": self.features,
            "passages": [{"id": p.id, "text": p.text, **p.metadata} for p in self.passages],
            "params": params,
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    task: str
    output: common_pb2.Value | None
    structured: dict[str, Any] | None
    state: _State
    stages: tuple[common_pb2.StageLatency, ...]
    total_us: int
    request_id: str
    prediction_id: str
    feature_vector_hash: str
    debug: dict[str, Any] | None


def check_inputs(
    specs: Mapping[str, InputSpec], given: Mapping[str, common_pb2.Value]
) -> dict[str, Any]:
    """The declared inputs, typed and bounded (INVALID_ARGUMENT naming ``inputs.<name>``)."""
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise InvalidArgument(
            f"inputs.{unknown[0]}", f"not an input of this task ({sorted(specs)})"
        )
    out: dict[str, Any] = {}
    expected = {
        "string": "string_value", "int": "int64_value", "double": "double_value",
        "bool": "bool_value", "string_list": "string_list_value",
        "int_list": "int64_list_value",
    }  # fmt: skip
    for name, spec in specs.items():
        value = given.get(name)
        if value is None or value.WhichOneof("kind") is None:
            if spec.required:
                raise InvalidArgument(f"inputs.{name}", f"required ({spec.type})")
            out[name] = [] if spec.type.endswith("_list") else None
            continue
        kind = value.WhichOneof("kind")
        if kind != expected[spec.type] and not (spec.type == "double" and kind == "int64_value"):
            raise InvalidArgument(f"inputs.{name}", f"must be {spec.type}, got {kind}")
        v = python_value(value)
        items = v if spec.type == "string_list" else [v] if spec.type == "string" else []
        if spec.type.endswith("_list") and len(v) > spec.max_items:
            raise InvalidArgument(f"inputs.{name}", f"more than {spec.max_items} items")
        for i, item in enumerate(items):
            at = f"inputs.{name}" + (f"[{i}]" if spec.type == "string_list" else "")
            if not item.strip():
                raise InvalidArgument(at, "must not be empty")
            if len(item) > spec.max_length:
                raise InvalidArgument(at, f"longer than {spec.max_length} characters")
        out[name] = float(v) if spec.type == "double" else v
    return out


def feature_vector_hash(features: Mapping[str, Any]) -> str:
    """BLAKE2b-128 of the feature values ordered by name (events.proto: joins a prediction
    with the offline features)."""
    if not features:
        return ""
    data = json.dumps(sorted(features.items()), default=str, separators=(",", ":")).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def parse_output(
    text: str, spec: PostprocessStep
) -> tuple[common_pb2.Value, dict[str, Any] | None]:
    """The output as the task declares it (INVALID_ARGUMENT ``output`` when it does not fit:
    the model did not follow the format)."""
    if spec.output == "text":
        return common_pb2.Value(string_value=text.strip()), None
    if spec.output == "label":
        lowered = text.lower()
        found = [(lowered.find(label.lower()), label) for label in spec.labels]
        hits = sorted((i, label) for i, label in found if i >= 0)
        if not hits:
            raise InvalidArgument("output", f"none of the labels {spec.labels} in the model output")
        return common_pb2.Value(string_value=hits[0][1]), None
    if spec.output == "list":
        items = _list_items(text)[: spec.max_items]
        if not items:
            raise InvalidArgument("output", "the model output holds no list items")
        value = common_pb2.Value()
        value.string_list_value.values.extend(items)
        return value, None
    try:
        doc = json.loads(_json_part(text))
    except ValueError:
        raise InvalidArgument("output", "the model output is not JSON") from None
    if spec.schema_ is not None:
        try:
            jsonschema.validate(doc, spec.schema_)
        except jsonschema.ValidationError as exc:
            raise InvalidArgument(
                "output", f"does not match the task's schema: {exc.message[:200]}"
            ) from None
    if not isinstance(doc, dict):
        raise InvalidArgument("output", "the JSON output must be an object")
    return common_pb2.Value(string_value=json.dumps(doc, ensure_ascii=False)), doc


_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def _list_items(text: str) -> list[str]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            doc = json.loads(_json_part(stripped))
            if isinstance(doc, list):
                return [str(x).strip() for x in doc if str(x).strip()]
        except ValueError:
            pass
    lines = [_BULLET.sub("", line).strip() for line in stripped.splitlines()]
    if len([x for x in lines if x]) <= 1 and "," in stripped:
        lines = [x.strip() for x in stripped.split(",")]
    return [x.rstrip(".") for x in lines if x]


def _json_part(text: str) -> str:
    """The outermost JSON object or array of ``text`` (models add prose around it)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return text
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    return text[start : end + 1] if end > start else text[start:]


class Pipeline:
    """The Run domain (see the module docstring)."""

    def __init__(
        self,
        serving: HotReload[Serving],
        generation: Generation,
        ports: MeshPorts,
        events: ServiceEvents,
        *,
        prompt_cache_s: float = 30.0,
        allow_debug: bool = False,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.serving = serving
        self.generation = generation
        self.ports = ports
        self.events = events
        self.prompt_cache_s = prompt_cache_s
        self.allow_debug = allow_debug
        self.metrics = metrics
        self._prompts: dict[tuple[str, int, str], tuple[Prompt, jinja2.Template, float]] = {}

    async def run(self, call: RunCall) -> RunResult:
        start = time.perf_counter()
        stages: list[common_pb2.StageLatency] = []
        request_id = call.context.request_id or current_request_id() or uuid7()
        task: CompiledTask | None = None
        state = _State(inputs={})
        try:
            task = self.serving.current.tasks.task(call.task)
            if call.debug and not self.allow_debug:
                raise InvalidArgument(
                    "debug", "not allowed for this caller (inference.allow_debug)"
                )
            state.inputs = check_inputs(task.spec.inputs, call.inputs)
            if not self.events.has_room(1):
                raise ResourceExhausted(
                    "the prediction log's buffer is full: not run, as its prediction could not be "
                    "logged; retry later"
                )
            budget = remaining_time()
            deadline = time.monotonic() + (DEFAULT_RUN_BUDGET_S if budget is None else budget)
            steps = task.spec.steps
            i = 0
            for group in task.groups:
                shares = [self._budget(steps[i:], deadline, step) for step in group]
                if len(group) == 1:
                    outcomes = [await self._timed(task, group[0], state, call, shares[0])]
                else:
                    outcomes = await asyncio.gather(*(
                        self._timed(task, step, state, call, share)
                        for step, share in zip(group, shares, strict=True)
                    ))  # fmt: skip
                for step, (began, ended, _) in zip(group, outcomes, strict=True):
                    stages.append(_stage(step.kind, start, began, ended))
                for step, share, (_, _, exc) in zip(group, shares, outcomes, strict=True):
                    if exc is not None:
                        self._failed(step, exc, share, state)
                    if state.blocked is not None and step.kind == "guardrail_input":
                        break  # as in order: what came after the block does not count
                i += len(group)
                if state.blocked is not None:
                    if state.finish == inference_pb2.FINISH_REASON_UNSPECIFIED:
                        state.finish = inference_pb2.FINISH_REASON_CONTENT_FILTER
                    break
        except LLMOpsError as exc:
            self._log(
                call, task, state, stages, start, request_id, exc.code, exc.reason or exc.code
            )
            self._count(task, stages, exc.code)
            raise
        total_us = int((time.perf_counter() - start) * 1e6)
        prediction_id = self._log(call, task, state, stages, start, request_id, "OK", "")
        self._count(task, stages, "CONTENT_FILTER" if state.blocked is not None else "OK")
        debug = None
        if call.debug:
            debug = {
                "rendered_prompt": [{"role": t.role, "content": t.content} for t in state.messages],
                "retrieved_ids": [p.id for p in state.passages],
                "features": state.features,
                "skipped_steps": state.skipped,
                "model_text": state.text or "",
            }
        return RunResult(
            task=call.task,
            output=state.output,
            structured=state.structured,
            state=state,
            stages=tuple(stages),
            total_us=total_us,
            request_id=request_id,
            prediction_id=prediction_id,
            feature_vector_hash=feature_vector_hash(state.features),
            debug=debug,
        )

    def _count(
        self, task: CompiledTask | None, stages: list[common_pb2.StageLatency], outcome: str
    ) -> None:
        if self.metrics is None or task is None:  # an unknown task name is not a label
            return
        name = task.spec.name
        self.metrics.runs.labels(name, outcome).inc()
        for stage in stages:
            self.metrics.stage.labels(name, stage.stage).observe(stage.duration_us / 1e6)

    @staticmethod
    def _budget(remaining: list[StepSpec], deadline: float, step: StepSpec) -> float:
        """``step``'s time: its timeout, at most its share (by timeouts) of what is left of
        the deadline over the ``remaining`` steps."""
        left = max(0.0, deadline - time.monotonic())
        total = sum(s.timeout_ms for s in remaining)
        own = step.timeout_ms
        return max(0.001, min(own / 1000, left * own / total))

    async def _timed(
        self, task: CompiledTask, step: StepSpec, state: _State, call: RunCall, budget: float
    ) -> tuple[float, float, Exception | None]:
        """One step within its budget: (began, ended, the failure or None)."""
        began = time.perf_counter()
        try:
            async with asyncio.timeout(budget):  # not wait_for: no extra task a step
                await self._step(task, step, state, call, budget)
        except (LLMOpsError, TimeoutError) as exc:
            return began, time.perf_counter(), exc
        return began, time.perf_counter(), None

    def _failed(self, step: StepSpec, exc: Exception, budget: float, state: _State) -> None:
        what = (
            f"step {step.kind} timed out after {budget * 1000:.0f} ms"
            if isinstance(exc, TimeoutError)
            else f"step {step.kind} failed: {exc}"
        )
        caller = isinstance(exc, InvalidArgument) and exc.field.startswith(("inputs", "prompt"))
        if step.on_failure == "fail" or caller:
            if caller or (isinstance(exc, LLMOpsError) and not isinstance(exc, InvalidArgument)):
                raise exc
            # a timeout, or the model's output not in the task's format: not the caller's fault
            raise Unavailable(what) from exc
        log.warning("task_step_skipped", step=step.kind, policy=step.on_failure, reason=what)
        state.skipped.append(step.kind)
        if step.on_failure == "fallback":
            self._fallback(step, state)

    @staticmethod
    def _fallback(step: StepSpec, state: _State) -> None:
        values = step.fallback
        if step.kind == "features":
            state.features = dict(values)
        elif step.kind == "postprocess" and "output" in values:
            state.output = common_pb2.Value(string_value=str(values["output"]))

    # -- steps ------------------------------------------------------------------------------

    async def _step(
        self, task: CompiledTask, step: StepSpec, state: _State, call: RunCall, budget: float
    ) -> None:
        s = step.settings
        ctx = call.context
        if isinstance(s, ExperimentStep):
            unit = ctx.user_id if s.unit == "user" else ctx.session_id
            if unit:
                state.variant = await self.ports.assign(ctx, s.unit, unit, s.id, budget)
        elif isinstance(s, FeaturesStep):
            lookups = []
            for lookup in s.lookups:
                key = (
                    getattr(ctx, lookup.input.removeprefix("context."))
                    if lookup.input.startswith("context.")
                    else state.inputs[lookup.input]
                )
                if key in (None, ""):
                    continue  # an anonymous caller: no shopper features
                value = (
                    common_pb2.Value(int64_value=key)
                    if isinstance(key, int)
                    else common_pb2.Value(string_value=str(key))
                )
                lookups.append(
                    self.ports.features(
                        lookup.service, lookup.refs, lookup.entity, lookup.key, value, budget
                    )
                )
            for found in await asyncio.gather(*lookups):
                state.features.update(found)
        elif isinstance(s, RetrievalStep):
            values = state.values()
            query = task.templates["retrieval.query"].render(values).strip()
            equals = {
                f: rendered
                for f in s.filter
                if (rendered := task.templates[f"retrieval.filter.{f}"].render(values).strip())
            }
            k = s.k
            if state.variant is not None and isinstance(state.variant.params.get("k"), int):
                k = max(1, min(50, int(state.variant.params["k"])))
            if query:
                state.passages = await self.ports.search(
                    s.collection, query, k, equals, s.text_field, budget
                )
        elif isinstance(s, PromptStep):
            await self._prompt(task, s, state, budget)
        elif isinstance(s, GuardrailInputStep):
            await self._guard_input(task, s, state, ctx, budget)
        elif isinstance(s, ModelStep):
            await self._model(task, s, state, call)
        elif isinstance(s, GuardrailOutputStep):
            await self._guard_output(task, s, state, ctx, budget)
        elif isinstance(s, RankStep):
            await self._rank(s, state, budget)
        elif isinstance(s, PostprocessStep) and s.output == "passages":
            seen: dict[str, None] = {}
            for p in state.passages:
                field_value = p.id if s.passage_field == "id" else p.metadata.get(s.passage_field)
                if field_value not in (None, ""):
                    seen.setdefault(str(field_value), None)
            state.output = common_pb2.Value()
            state.output.string_list_value.values.extend(list(seen)[: s.max_items])
        elif isinstance(s, PostprocessStep) and state.text is not None:
            state.output, state.structured = parse_output(state.text, s)

    async def _prompt(
        self, task: CompiledTask, s: PromptStep, state: _State, budget: float
    ) -> None:
        variant = state.variant
        name, version, alias = s.name, s.version or 0, s.alias
        if variant is not None and variant.prompt_name == s.name and variant.prompt_version:
            version = variant.prompt_version  # the experiment picks the prompt version
        key = (name, version, "" if version else alias)
        cached = self._prompts.get(key)
        now = time.monotonic()
        if cached is None or (not version and now - cached[2] > self.prompt_cache_s):
            prompt = await self.ports.prompt(name, version, alias, budget)
            try:
                compiled = TEMPLATES.from_string(prompt.template)
            except jinja2.TemplateSyntaxError as exc:
                raise InvalidArgument(
                    "prompt", f"registry template {name} v{prompt.version}: {exc.message}"
                ) from None
            cached = (prompt, compiled, now)
            self._prompts[key] = cached
        state.prompt, state.prompt_template = cached[0], cached[1]
        state.system_template = task.templates.get("prompt.system")
        self._render(state)

    def _render(self, state: _State) -> None:
        assert state.prompt_template is not None
        values = state.values()
        try:
            user = state.prompt_template.render(values).strip()
            system = state.system_template.render(values).strip() if state.system_template else ""
        except jinja2.UndefinedError as exc:
            raise InvalidArgument(
                "prompt", f"the template needs a value the task lacks: {exc.message}"
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidArgument("prompt", f"the template is not allowed: {exc}") from None
        turns = [ChatTurn("system", system)] if system else []
        state.messages = (*turns, ChatTurn("user", user))

    async def _guard_input(
        self, task: CompiledTask, s: GuardrailInputStep, state: _State,
        ctx: common_pb2.RequestContext, budget: float,
    ) -> None:  # fmt: skip
        subjects: list[tuple[str, int | None, str]] = []  # (input or "passage", index, text)
        for name in s.check:
            value = state.inputs.get(name)
            if isinstance(value, list):
                subjects += [(name, i, t) for i, t in enumerate(value)]
            elif isinstance(value, str):
                subjects.append((name, None, value))
        if s.retrieved:
            subjects += [("passage", i, p.text) for i, p in enumerate(state.passages) if p.text]
        if not subjects:
            return
        checks = await self.ports.check_batch(
            ctx, common_pb2.DIRECTION_INPUT, s.policy, [text for _, _, text in subjects], "",
            task.spec.name, budget,
        )  # fmt: skip
        redacted = False
        for (name, index, _), verdict in zip(subjects, checks, strict=True):
            state.guardrails.append(verdict.summary)
            if verdict.verdict == VERDICT_BLOCK and state.blocked is None:
                state.blocked = verdict.block_message or "blocked by the input guardrail"
            elif verdict.verdict == VERDICT_REDACT:
                redacted = True
                if name == "passage" and index is not None:
                    p = state.passages[index]
                    state.passages[index] = Passage(p.id, verdict.text, p.score, p.metadata)
                elif index is not None:
                    state.inputs[name][index] = verdict.text
                else:
                    state.inputs[name] = verdict.text
        if redacted and state.prompt_template is not None:
            self._render(state)  # the model sees the redacted texts only

    async def _model(self, task: CompiledTask, s: ModelStep, state: _State, call: RunCall) -> None:
        ctx = call.context
        variant = state.variant
        route = variant.route if variant is not None and variant.route else s.route
        if route not in self.serving.current.routes.routes:
            route = s.route  # a variant naming an unknown route falls back to the task's
        sampling = {
            k: v for k, v in s.sampling.model_dump(exclude_none=True).items() if k != "stop"
        }
        if s.sampling.stop:
            sampling["stop_words"] = list(s.sampling.stop)
        if variant is not None:
            sampling.update({k: v for k, v in variant.params.items() if k in SAMPLING_PARAMS})
        began = time.perf_counter()
        result = await self.generation.generate(
            GenerateCall(
                route=route, messages=state.messages, sampling=sampling, context=ctx,
                response_schema=s.json_schema, logged=False, guarded=False,
                skip_cache=call.skip_cache,
            )
        )  # fmt: skip
        state.model_us = int((time.perf_counter() - began) * 1e6)
        state.route = route
        state.model = result.model
        state.usage = result.usage
        state.text = result.text
        state.finish = FINISH[result.finish]
        state.target_index = result.target_index
        state.cache_hit = result.cache_hit
        state.generative = True

    async def _rank(self, s: RankStep, state: _State, budget: float) -> None:
        ids: list[int] = list(state.inputs.get(s.candidates) or [])
        table = self.serving.current.routes
        variant = state.variant
        name = s.route
        if variant is not None and variant.route in table.routes:
            head = table.routes[variant.route].targets[0]
            if table.engines[head.engine].backend == "onnx":
                name = variant.route  # the experiment picks the ranker
        target = table.routes[name].targets[0]
        ranker = self.generation.engines.ranker(target.engine, table.engines[target.engine])
        state.route = name
        state.model = await self.generation.versions.ref(target.model, target.version, target.alias)
        state.output = common_pb2.Value()
        if not ids:
            state.structured = {"ranking": []}
            return
        keys = [common_pb2.Value(int64_value=i) for i in ids]
        rows = await self.ports.features_batch(s.service, s.entity, s.key, keys, budget)
        began = time.perf_counter()
        scores = await ranker.score_async(rows)
        state.model_us = int((time.perf_counter() - began) * 1e6)
        ranked = sorted(zip(ids, scores, strict=True), key=lambda p: -p[1])[: s.top_k]
        state.output.int64_list_value.values.extend(i for i, _ in ranked)
        state.structured = {"ranking": [{"id": i, "score": round(x, 6)} for i, x in ranked]}
        state.features = {str(i): row for i, row in zip(ids, rows, strict=True)}

    async def _guard_output(
        self, task: CompiledTask, s: GuardrailOutputStep, state: _State,
        ctx: common_pb2.RequestContext, budget: float,
    ) -> None:  # fmt: skip
        if state.text is None:
            return
        facts: list[tuple[str, str]] = []
        if s.grounding:
            facts = [
                (f"feature:{k}", f"{k.replace('_', ' ')}: {v}")
                for k, v in sorted(state.features.items())
            ]
            facts += [(p.id, p.text) for p in state.passages if p.text]
            facts += [(f"input:{k}", v) for k, v in state.inputs.items() if isinstance(v, str)]
        verdict = await self.ports.check(
            ctx, common_pb2.DIRECTION_OUTPUT, s.policy, state.text, facts, state.route,
            task.spec.name, budget,
        )  # fmt: skip
        state.guardrails.append(verdict.summary)
        if verdict.verdict == VERDICT_BLOCK:
            state.blocked = verdict.block_message or "blocked by the output guardrail"
            state.finish = inference_pb2.FINISH_REASON_CONTENT_FILTER
            state.text = None
        elif verdict.verdict == VERDICT_REDACT:
            state.text = verdict.text

    # -- the prediction -----------------------------------------------------------------------

    def _log(
        self, call: RunCall, task: CompiledTask | None, state: _State,
        stages: list[common_pb2.StageLatency], start: float, request_id: str, code: str,
        reason: str,
    ) -> str:  # fmt: skip
        ctx = call.context
        event = events_pb2.PredictionEvent(
            event_id=uuid7(),
            request_id=request_id,
            tenant=ctx.tenant,
            market=ctx.market,
            route=state.route,
            task=call.task[:128],
            model_name=state.model.name,
            model_version=state.model.version,
            experiment_id=state.variant.experiment_id if state.variant else "",
            variant=state.variant.variant if state.variant else "",
            cache_hit=state.cache_hit,
            total_latency_us=int((time.perf_counter() - start) * 1e6),
            status_code=STATUS_NUMBER.get(code, 2),
            usage=state.usage,
            stages=stages,
            guardrails=state.guardrails,
            feature_vector_hash=feature_vector_hash(state.features),
            prompt_name=state.prompt.name if state.prompt else "",
            prompt_version=state.prompt.version if state.prompt else 0,
            route_target_index=state.target_index,
            locale=ctx.locale,
            device=ctx.device,
            user_id=ctx.user_id,
            session_id=ctx.session_id,
            finish_reason=state.finish,  # type: ignore[arg-type]
            error_reason=reason,
            client_name=ctx.client_name,
        )
        event.event_time.GetCurrentTime()
        event.skipped_steps.extend(state.skipped)
        if task is not None and task.spec.log_payload:
            for name, value in call.inputs.items():
                # as the model saw them: an input guardrail's redactions applied
                checked = state.inputs.get(name)
                event.inputs[name].CopyFrom(value if checked is None else _value(checked, value))
            if state.output is not None:
                event.output.CopyFrom(state.output)
        self.generation.publish_prediction(event)
        return event.event_id


def _value(checked: Any, given: common_pb2.Value) -> common_pb2.Value:
    """A checked input as a Value of the kind it was given (``given`` when it is no text)."""
    kind = given.WhichOneof("kind")
    if kind == "string_value" and isinstance(checked, str):
        return common_pb2.Value(string_value=checked)
    if kind == "string_list_value" and isinstance(checked, list):
        out = common_pb2.Value()
        out.string_list_value.values.extend(str(x) for x in checked)
        return out
    return given


def _stage(name: str, start: float, began: float, ended: float) -> common_pb2.StageLatency:
    return common_pb2.StageLatency(
        stage=name,
        duration_us=int((ended - began) * 1e6),
        start_offset_us=int((began - start) * 1e6),
    )
