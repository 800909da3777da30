"""Generate and GenerateStream: a route's targets in fallback order, each behind its
concurrency limit, with usage, cost and one prediction event per call.

Pure of gRPC: the servicer turns the contract's messages into a :class:`GenerateCall` and the
results back. For each call:

1. the route is looked up (NOT_FOUND) and the request's sampling validated and resolved over
   the route's defaults (INVALID_ARGUMENT naming ``sampling.<field>``);
2. a prediction event must fit in the event buffer *before* the model runs (otherwise
   RESOURCE_EXHAUSTED at once: a prediction that cannot be logged is not served);
3. targets are tried in order: each attempt waits for a slot of its target (queue time),
   runs within ``min(target timeout, what is left of the caller's deadline)``, and a target
   that is down, overloaded or too slow (UNAVAILABLE, RESOURCE_EXHAUSTED) hands over to the
   next; a request no target can serve (INVALID_ARGUMENT, e.g. over the context window)
   fails at once. A stream falls back only until its first token was sent;
4. every outcome — success or error — is one PredictionEvent with its status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import jinja2
import structlog
from pydantic import ValidationError

from llmops.callcontext import current_request_id, remaining_time
from llmops.errors import (
    FailedPrecondition,
    InvalidArgument,
    LLMOpsError,
    ResourceExhausted,
    Unavailable,
)
from llmops.events.ids import uuid7
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2, events_pb2, inference_pb2
from llmops.yamlfiles import HotReload
from services.inference.config import Serving
from services.inference.engine import (
    ChatTurn,
    Completion,
    Delta,
    Engine,
    EngineRequest,
    Finish,
    Sampling,
)
from services.inference.engines.registry import EngineRegistry
from services.inference.limits import TargetLimiter
from services.inference.metrics import InferenceMetrics
from services.inference.models import ModelVersions
from services.inference.ports import MeshPorts, Released, StreamCheck
from services.inference.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitOpen,
    RetryBudget,
)
from services.inference.routes import RouteSpec, RouteTable, SamplingSpec, TargetSpec
from services.inference.state import (
    NANOS,
    Budgets,
    Limit,
    Reservation,
    ResponseCache,
    cache_key,
)
from services.inference.tasks import TEMPLATES

log = structlog.get_logger("llmops.inference")

FINISH: dict[str, int] = {
    "content_filter": inference_pb2.FINISH_REASON_CONTENT_FILTER,
    "end_of_sequence": inference_pb2.FINISH_REASON_END_OF_SEQUENCE,
    "stop_sequence": inference_pb2.FINISH_REASON_STOP_SEQUENCE,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "timeout": inference_pb2.FINISH_REASON_TIMEOUT,
    "cancelled": inference_pb2.FINISH_REASON_CANCELLED,
}
FALLBACK_ON = (Unavailable, ResourceExhausted)
_CODES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
    "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
)
STATUS_NUMBER = {name: number for number, name in enumerate(_CODES.split(" "))}
"""gRPC status names to their numbers (PredictionEvent.status_code), without importing grpc."""
TEMPLATE_CACHE_S = 30.0
BREAKER_STATES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 256


@dataclass(frozen=True, slots=True)
class GenerateCall:
    route: str
    prompt: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    """The request's sampling fields that were set (names as in SamplingParams)."""
    context: common_pb2.RequestContext = field(default_factory=common_pb2.RequestContext)
    response_schema: Mapping[str, Any] | None = None
    logged: bool = True
    """One PredictionEvent for the call; False when a task run logs its own (the model step)."""
    guarded: bool = True
    """Apply the route's (or these) guardrail policies; False for a task's model step (the
    task checks its inputs and output itself)."""
    input_policy: str = ""
    output_policy: str = ""
    """GuardrailOptions: empty takes the route's policy."""
    skip_cache: bool = False
    """Read nothing from the response cache (the result is still written to it)."""
    template: tuple[str, int, str] | None = None
    """A registered prompt template (name, version, alias), rendered with ``variables`` into
    the user message."""
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    finish: Finish | Literal["content_filter"]
    usage: common_pb2.Usage
    model: common_pb2.ModelRef
    target_index: int
    request_id: str
    stages: tuple[common_pb2.StageLatency, ...]
    guardrails: tuple[common_pb2.GuardrailSummary, ...] = ()
    block_message: str = ""
    retract: bool = False
    """A stream whose output a guardrail blocked after text went out: discard it all."""
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class StreamStart:
    """First item of a stream: who serves it."""

    model: common_pb2.ModelRef
    target_index: int
    request_id: str


@dataclass(frozen=True, slots=True)
class StreamText:
    text: str


StreamItem = StreamStart | StreamText | Generated
"""A stream yields one StreamStart, StreamTexts, then the Generated summary (text empty)."""


def validate_sampling(fields: Mapping[str, Any]) -> SamplingSpec:
    """The request's sampling, checked like a route's (INVALID_ARGUMENT naming the field)."""
    data = dict(fields)
    beam = data.pop("beam_width", None)
    data.pop("length_penalty", None)
    if beam is not None and beam != 1:
        raise InvalidArgument(
            "sampling.beam_width", f"{beam}: beam search is not supported by these backends"
        )
    if "stop_words" in data:
        data["stop"] = list(data.pop("stop_words"))
        for i, word in enumerate(data["stop"]):
            if not word or len(word) > 128:
                raise InvalidArgument(f"sampling.stop_words[{i}]", "must be 1-128 characters")
    try:
        return SamplingSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "sampling"
        name = "stop_words" if name == "stop" else name
        raise InvalidArgument(f"sampling.{name}", str(first["msg"])) from None


def _check_input(call: GenerateCall) -> None:
    if call.template is not None:
        return  # rendered from the registry, checked after rendering
    if call.prompt is None and call.messages is None:
        raise InvalidArgument("input", "set prompt or messages")
    if call.prompt is not None:
        if not call.prompt.strip():
            raise InvalidArgument("prompt", "must not be empty")
        if len(call.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
    if call.messages is not None:
        if not call.messages:
            raise InvalidArgument("messages", "must hold at least one message")
        if len(call.messages) > MAX_MESSAGES:
            raise InvalidArgument("messages", f"more than {MAX_MESSAGES} messages")
        if sum(len(m.content) for m in call.messages) > MAX_PROMPT_CHARS:
            raise InvalidArgument("messages", f"longer than {MAX_PROMPT_CHARS} characters")


def money(amount: float, currency: str) -> common_pb2.Money:
    units = int(amount)
    return common_pb2.Money(
        currency_code=currency, units=units, nanos=round((amount - units) * 1e9)
    )


def cost(usage: common_pb2.Usage, target: TargetSpec) -> common_pb2.Money:
    price = target.price_per_million
    amount = (usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion) / 1e6
    return money(amount, price.currency)


def _exhausted(route: RouteSpec, last: LLMOpsError | None) -> LLMOpsError:
    """Every target failed: RESOURCE_EXHAUSTED when the last was shedding (back off), else
    UNAVAILABLE."""
    message = f"route {route.name}: every target failed; the last: {last}"
    if isinstance(last, ResourceExhausted):
        return ResourceExhausted(message)
    return Unavailable(message)


MAX_CUTS = 4
KEEP = 0.6
"""A prompt over the context window keeps its last 60% per cut (at most MAX_CUTS cuts)."""


def truncated(request: EngineRequest) -> EngineRequest:
    """The request with its oldest content cut: the oldest non-system turn of a chat (the
    last user turn's start when it is the only one left), or a raw prompt's start."""
    if request.messages is None:
        text = request.prompt or ""
        return replace(request, prompt=text[len(text) - int(len(text) * KEEP) :])
    turns = list(request.messages)
    others = [i for i, t in enumerate(turns) if t.role != "system"]
    if len(others) > 1:
        del turns[others[0]]
    elif others:
        last = turns[others[0]]
        turns[others[0]] = ChatTurn(
            last.role, last.content[len(last.content) - int(len(last.content) * KEEP) :]
        )
    return replace(request, messages=tuple(turns))


@dataclass(frozen=True, slots=True)
class _Admitted:
    call: GenerateCall
    """The call as the model will see it (template rendered, input redacted)."""
    output_policy: str
    summaries: list[common_pb2.GuardrailSummary]
    key: str | None
    """The response cache key (None: not cached)."""
    early: Generated | None
    """The result when the call ended before the model: blocked, or a cache hit."""


class _Clock:
    """Stage timings relative to the start of the call."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: list[common_pb2.StageLatency] = []

    def us(self, t: float) -> int:
        return int((t - self.start) * 1e6)

    def stage(self, name: str, began: float, ended: float | None = None) -> None:
        ended = time.perf_counter() if ended is None else ended
        self.stages.append(
            common_pb2.StageLatency(
                stage=name, duration_us=int((ended - began) * 1e6), start_offset_us=self.us(began)
            )
        )


class Generation:
    """The Generate / GenerateStream domain (see the module docstring)."""

    def __init__(
        self,
        serving: HotReload[Serving],
        engines: EngineRegistry,
        versions: ModelVersions,
        events: ServiceEvents,
        metrics: InferenceMetrics,
        *,
        default_max_tokens: int = 256,
        log_payloads: bool = False,
        guard: MeshPorts | None = None,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 10.0,
        cache: ResponseCache | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        """``guard``: the guardrail service (None: no policies are applied)."""
        self.serving = serving
        self.engines = engines
        self.versions = versions
        self.events = events
        self.metrics = metrics
        self.base_sampling = Sampling(max_tokens=default_max_tokens)
        self.log_payloads = log_payloads
        self.guard = guard
        self._templates: dict[tuple[str, int, str], tuple[int, jinja2.Template, float]] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._route_sampling: dict[str, tuple[RouteSpec, Sampling]] = {}
        self._series: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._retry_budgets: dict[str, RetryBudget] = {}
        self.breaker_failures = breaker_failures
        self.cache = cache
        self.budgets = budgets
        self.breaker_cooldown_s = breaker_cooldown_s
        self._limiters: dict[tuple[str, int], tuple[TargetSpec, TargetLimiter]] = {}

    def limiter(self, route: RouteSpec, index: int) -> TargetLimiter:
        """The target's limiter; a reload that changes the target gets a new one (compared by
        identity: the table's specs are immutable, and hashing them per call is costly)."""
        target = route.targets[index]
        key = (route.name, index)
        found = self._limiters.get(key)
        if found is None or found[0] is not target:
            if found is not None and found[0] == target:
                self._limiters[key] = (target, found[1])  # reloaded, unchanged: keep its state
                return found[1]
            limiter = TargetLimiter(
                f"route {route.name} target {index} ({target.model})",
                target.max_concurrency,
                target.max_queue,
            )
            self._limiters[key] = (target, limiter)
            return limiter
        return found[1]

    def _prepare(self, call: GenerateCall) -> tuple[RouteTable, RouteSpec, Sampling, str]:
        table = self.serving.current.routes  # one table for the call, whatever reloads meanwhile
        route = table.route(call.route)
        _check_input(call)
        defaults = self._route_sampling.get(route.name)
        if defaults is None or defaults[0] is not route:  # new table: resolve once
            defaults = (route, route.sampling.resolve(self.base_sampling))
            self._route_sampling[route.name] = defaults
        sampling = (
            validate_sampling(call.sampling).resolve(defaults[1]) if call.sampling else defaults[1]
        )
        if call.logged and not self.events.has_room(1):
            raise ResourceExhausted(
                "the prediction log's buffer is full: not served, as its prediction could not be "
                "logged; retry later"
            )
        request_id = call.context.request_id or current_request_id() or uuid7()
        return table, route, sampling, request_id

    def _request(
        self, call: GenerateCall, target: TargetSpec, sampling: Sampling, request_id: str
    ) -> EngineRequest:
        budget = remaining_time()
        timeout = target.timeout_s if budget is None else max(0.0, min(target.timeout_s, budget))
        return EngineRequest(
            model=target.served_model or target.model,
            sampling=sampling,
            messages=call.messages,
            prompt=call.prompt,
            json_schema=call.response_schema,
            timeout_s=timeout,
            request_id=request_id,
        )

    # -- resilience -------------------------------------------------------------------------

    def breaker(self, engine: str) -> CircuitBreaker:
        found = self._breakers.get(engine)
        if found is None:
            found = self._breakers[engine] = CircuitBreaker(
                engine, self.breaker_failures, self.breaker_cooldown_s
            )
        return found

    def _observe(self, breaker: CircuitBreaker) -> None:
        self.metrics.breaker.labels(breaker.name).set(BREAKER_STATES[breaker.state])

    async def _call_target(
        self, route: RouteSpec, index: int, engine: Engine, request: EngineRequest,
        clock: _Clock,
    ) -> tuple[Completion, float]:  # fmt: skip
        """One target, behind its breaker and its limit; an UNAVAILABLE is retried once when
        the route's retry budget and the deadline allow."""
        breaker = self.breaker(route.targets[index].engine)
        retries = self._retry_budgets.setdefault(route.name, RetryBudget())
        attempt = cuts = 0
        while True:
            breaker.before()
            try:
                async with self.limiter(route, index).slot() as queued:
                    began = time.perf_counter()
                    completion = await engine.generate(request)
                    clock.stage("model", began)
            except CircuitOpen:
                raise
            except InvalidArgument as exc:
                breaker.release()
                if route.truncate_prompt and exc.field == "prompt" and cuts < MAX_CUTS:
                    cuts += 1  # over the context window: cut from the start and try again
                    request = truncated(request)
                    log.info("prompt_truncated", route=route.name, cuts=cuts)
                    continue
                raise
            except Unavailable:
                breaker.failure()
                self._observe(breaker)
                left = remaining_time()
                if attempt == 0 and (left is None or left > 0.05) and retries.spend():
                    attempt += 1
                    self.metrics.retries.labels(route.name).inc()
                    continue
                raise
            except BaseException:
                breaker.release()  # overload, a bad request, the caller left: not the backend
                raise
            breaker.success()
            self._observe(breaker)
            retries.earn()
            return completion, queued

    async def _fitted(
        self, engine: Engine, request: EngineRequest, route: RouteSpec
    ) -> AsyncIterator[Delta]:
        """``engine.stream``, cutting the prompt and trying again when the route truncates and
        the engine refused it as over the context window (before any text: safe to retry)."""
        cuts = 0
        while True:
            produced = False
            try:
                async for delta in engine.stream(request):
                    produced = True
                    yield delta
                return
            except InvalidArgument as exc:
                if produced or not route.truncate_prompt or exc.field != "prompt":
                    raise
                if cuts >= MAX_CUTS:
                    raise
                cuts += 1
                request = truncated(request)
                log.info("prompt_truncated", route=route.name, cuts=cuts)

    # -- cache and budgets ------------------------------------------------------------------

    async def _cache_key(
        self, call: GenerateCall, route: RouteSpec, sampling: Sampling, output_policy: str
    ) -> str | None:
        """The response cache key, or None when the route does not cache or the call is not
        deterministic (sampled without a seed)."""
        if self.cache is None or route.cache_ttl_s <= 0:
            return None
        if sampling.temperature > 0 and sampling.seed is None:
            return None
        head = route.targets[0]
        ref = await self.versions.ref(head.model, head.version, head.alias)
        return cache_key({
            "route": route.name, "targets": [repr(t) for t in route.targets],
            "version": ref.version, "prompt": call.prompt,
            "messages": [(t.role, t.content) for t in call.messages or ()],
            "sampling": asdict(sampling), "schema": call.response_schema, "out": output_policy,
        })  # fmt: skip

    async def _cached(
        self, key: str | None, call: GenerateCall, route: RouteSpec, request_id: str,
        clock: _Clock, summaries: list[common_pb2.GuardrailSummary],
    ) -> Generated | None:  # fmt: skip
        if key is None or self.cache is None:
            return None
        if call.skip_cache:
            self.metrics.cache.labels(route.name, "skip").inc()
            return None
        began = time.perf_counter()
        raw = await self.cache.get(key)
        clock.stage("cache", began)
        self.metrics.cache.labels(route.name, "hit" if raw else "miss").inc()
        if raw is None:
            return None
        doc = json.loads(raw)
        usage = common_pb2.Usage(
            prompt_tokens=doc["prompt_tokens"], completion_tokens=doc["completion_tokens"]
        )
        usage.cost.currency_code = doc["currency"]  # nothing was spent on a model
        return Generated(
            text=doc["text"], finish=doc["finish"], usage=usage,
            model=common_pb2.ModelRef(name=doc["model"], version=doc["version"],
                                      alias=doc["alias"]),
            target_index=doc["target"], request_id=request_id, stages=tuple(clock.stages),
            guardrails=tuple(summaries), cache_hit=True,
        )  # fmt: skip

    async def _store(self, key: str | None, route: RouteSpec, result: Generated, text: str) -> None:
        if key is None or self.cache is None or result.block_message:
            return
        if result.finish not in ("end_of_sequence", "stop_sequence", "length"):
            return  # a cut-short answer (timeout, cancelled) is not the answer
        u = result.usage
        doc = {
            "text": text, "finish": result.finish, "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "currency": u.cost.currency_code,
            "model": result.model.name, "version": result.model.version,
            "alias": result.model.alias, "target": result.target_index,
        }  # fmt: skip
        await self.cache.put(key, json.dumps(doc).encode(), route.cache_ttl_s)

    async def _reserve(
        self, table: RouteTable, route: RouteSpec, call: GenerateCall, sampling: Sampling
    ) -> Reservation | None:
        """The call's worst case held against its tenant's daily budget (RESOURCE_EXHAUSTED
        when it does not fit): prompt tokens estimated at 4 characters each, plus max_tokens,
        at the dearest target's prices."""
        tenant = call.context.tenant
        spec = table.budget(tenant)
        if self.budgets is None or spec is None:
            return None
        chars = len(call.prompt or "") + sum(len(t.content) for t in call.messages or ())
        prompt_tokens = chars // 4 + 1
        tokens = prompt_tokens + sampling.max_tokens
        cost = max(
            (t.price_per_million.prompt * prompt_tokens
             + t.price_per_million.completion * sampling.max_tokens) / 1e6
            for t in route.targets
        )  # fmt: skip
        limit = Limit(spec.tokens_per_day, int(spec.cost_per_day * NANOS))
        return await self.budgets.reserve(tenant or "*", limit, tokens, int(cost * NANOS))

    async def _settle(self, reservation: Reservation | None, usage: common_pb2.Usage) -> None:
        if reservation is None or self.budgets is None:
            return
        spent = usage.prompt_tokens + usage.completion_tokens
        await self.budgets.settle(reservation, spent, usage.cost.units * NANOS + usage.cost.nanos)

    # -- registered templates ---------------------------------------------------------------

    async def _render_template(self, call: GenerateCall) -> GenerateCall:
        """A prompt_template call as a chat call: the registry's template (cached 30 s when
        named by alias, for good when pinned) rendered in the sandbox with ``variables``."""
        if call.template is None:
            return call
        if self.guard is None:
            raise FailedPrecondition("prompt_template: no governance registry is reachable")
        name, version, alias = call.template
        key = (name, version, "" if version else alias or "champion")
        cached = self._templates.get(key)
        now = time.monotonic()
        if cached is None or (not version and now - cached[2] > TEMPLATE_CACHE_S):
            prompt = await self.guard.prompt(
                name, version, alias or "champion", self._check_budget()
            )
            try:
                compiled = TEMPLATES.from_string(prompt.template)
            except jinja2.TemplateSyntaxError as exc:
                raise FailedPrecondition(
                    f"prompt_template: {name} v{prompt.version} does not compile: {exc.message}"
                ) from None
            cached = self._templates[key] = (prompt.version, compiled, now)
        try:
            text = cached[1].render(dict(call.variables)).strip()
        except jinja2.UndefinedError as exc:
            raise InvalidArgument("variables", f"{name} v{cached[0]} needs {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidArgument("variables", f"not allowed by the sandbox: {exc}") from None
        if not text:
            raise InvalidArgument("variables", f"{name} v{cached[0]} renders to nothing")
        return replace(call, template=None, messages=(ChatTurn("user", text),))

    # -- guardrails -------------------------------------------------------------------------

    def _policies(self, call: GenerateCall, route: RouteSpec) -> tuple[str, str]:
        if not call.guarded or self.guard is None:
            return "", ""
        return call.input_policy or route.input_policy, call.output_policy or route.output_policy

    @staticmethod
    def _check_budget() -> float:
        left = remaining_time()
        return 5.0 if left is None else max(0.01, min(5.0, left))

    async def _guard_input(
        self, call: GenerateCall, policy: str, route: RouteSpec, clock: _Clock
    ) -> tuple[GenerateCall, list[common_pb2.GuardrailSummary], str | None]:
        """The call with redacted input, the checks' summaries, and the block message when
        one blocked. Every user message is checked (system prompts are the caller's own)."""
        assert self.guard is not None
        began = time.perf_counter()
        if call.prompt is not None:
            texts = [call.prompt]
        else:
            texts = [t.content for t in call.messages or () if t.role == "user"]
        budget = self._check_budget()
        verdicts = await asyncio.gather(*(
            self.guard.check(call.context, common_pb2.DIRECTION_INPUT, policy, text, (),
                             route.name, "", budget)
            for text in texts
        ))  # fmt: skip
        clock.stage("guardrail_input", began)
        summaries = [v.summary for v in verdicts]
        blocked = next((v for v in verdicts if v.verdict == common_pb2.VERDICT_BLOCK), None)
        if blocked is not None:
            return call, summaries, blocked.block_message or "blocked by the input guardrail"
        redacted = iter(v.text for v in verdicts)
        if call.prompt is not None:
            call = replace(call, prompt=next(redacted))
        else:
            turns = tuple(
                ChatTurn(t.role, next(redacted)) if t.role == "user" else t
                for t in call.messages or ()
            )
            call = replace(call, messages=turns)
        return call, summaries, None

    def _blocked(
        self, route: RouteSpec, request_id: str, clock: _Clock,
        summaries: list[common_pb2.GuardrailSummary], message: str, model: common_pb2.ModelRef,
    ) -> Generated:  # fmt: skip
        return Generated(
            text="", finish="content_filter", usage=common_pb2.Usage(), model=model,
            target_index=0, request_id=request_id, stages=tuple(clock.stages),
            guardrails=tuple(summaries), block_message=message,
        )  # fmt: skip

    async def _guarded(
        self, deltas: AsyncIterator[Delta], checker: StreamCheck, outcome: list[Released]
    ) -> AsyncIterator[Delta]:
        """``deltas`` through a streaming check: the released text, then the engine's final
        delta. A BLOCK stops generating (the engine's stream is closed); ``outcome`` gets the
        check's final answer."""
        final: list[Delta] = []

        async def pump() -> None:
            try:
                async for d in deltas:
                    if d.text:
                        await checker.write(d.text)
                    if d.finish is not None:
                        final.append(d)
            finally:
                await checker.done()

        task = asyncio.create_task(pump())
        try:
            async for released in checker.released():
                if released.text:
                    yield Delta(released.text)
                if released.final:
                    outcome.append(released)
                    break
            if outcome and outcome[0].verdict == common_pb2.VERDICT_BLOCK:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LLMOpsError):
                    await task
            else:
                await task  # the engine's own failure, if any
        finally:
            if not task.done():
                task.cancel()
                checker.cancel()
        last = final[0] if final else Delta("", finish="cancelled")
        yield last

    # -- unary ------------------------------------------------------------------------------

    async def generate(self, call: GenerateCall) -> Generated:
        clock = _Clock()
        route: RouteSpec | None = None
        request_id = call.context.request_id or ""
        model = common_pb2.ModelRef()
        try:
            table, route, sampling, request_id = self._prepare(call)
            admitted = await self._admit(call, route, sampling, request_id, clock)
            if admitted.early is not None:
                return admitted.early
            call, summaries, key = admitted.call, admitted.summaries, admitted.key
            output_policy = admitted.output_policy
            reservation = await self._reserve(table, route, call, sampling)
            try:
                result = await self._generate_targets(
                    call, table, route, sampling, request_id, clock, summaries, output_policy
                )
            except BaseException:
                await self._settle(reservation, common_pb2.Usage())
                raise
            await self._settle(reservation, result.usage)
            await self._store(key, route, result, result.text)
            self._record(call, route, result, clock, "OK")
            return result
        except LLMOpsError as exc:
            self._record_error(call, route, model, request_id, clock, exc)
            raise

    async def _admit(
        self, call: GenerateCall, route: RouteSpec, sampling: Sampling, request_id: str,
        clock: _Clock,
    ) -> _Admitted:  # fmt: skip
        """What comes before the model, for unary and streamed calls alike: the registered
        template rendered, the input guardrail (a BLOCK ends the call), the response cache
        (a hit ends it). An ending result is recorded here."""
        call = await self._render_template(call)
        input_policy, output_policy = self._policies(call, route)
        summaries: list[common_pb2.GuardrailSummary] = []
        if input_policy:
            call, summaries, blocked = await self._guard_input(call, input_policy, route, clock)
            if blocked is not None:
                head = route.targets[0]
                model = await self.versions.ref(head.model, head.version, head.alias)
                result = self._blocked(route, request_id, clock, summaries, blocked, model)
                self._record(call, route, result, clock, "OK")
                return _Admitted(call, output_policy, summaries, None, result)
        key = await self._cache_key(call, route, sampling, output_policy)
        hit = await self._cached(key, call, route, request_id, clock, summaries)
        if hit is not None:
            self._record(call, route, hit, clock, "OK")
        return _Admitted(call, output_policy, summaries, key, hit)

    async def _generate_targets(
        self, call: GenerateCall, table: RouteTable, route: RouteSpec, sampling: Sampling,
        request_id: str, clock: _Clock, summaries: list[common_pb2.GuardrailSummary],
        output_policy: str,
    ) -> Generated:  # fmt: skip
        """The route's targets in order until one answers (its output checked)."""
        last: LLMOpsError | None = None
        for index, target in enumerate(route.targets):
            model = await self.versions.ref(target.model, target.version, target.alias)
            engine = self.engines.get(target.engine, table.engines[target.engine])
            try:
                completion, queued = await self._call_target(
                    route, index, engine, self._request(call, target, sampling, request_id),
                    clock,
                )  # fmt: skip
            except FALLBACK_ON as exc:
                last = exc
                self.metrics.fallbacks.labels(route.name, str(index)).inc()
                log.warning("route_target_failed", route=route.name, target=index, error=str(exc))
                continue
            usage = self._usage(completion, queued, target)
            text, finish, block = completion.text, completion.finish, ""
            if output_policy and self.guard is not None:
                began = time.perf_counter()
                verdict = await self.guard.check(
                    call.context, common_pb2.DIRECTION_OUTPUT, output_policy, text, (),
                    route.name, "", self._check_budget(),
                )  # fmt: skip
                clock.stage("guardrail_output", began)
                summaries.append(verdict.summary)
                if verdict.verdict == common_pb2.VERDICT_BLOCK:
                    text, block = "", verdict.block_message or "blocked by the output guardrail"
                else:
                    text = verdict.text
            result = Generated(
                text=text,
                finish="content_filter" if block else finish,
                usage=usage,
                model=model,
                target_index=index,
                request_id=request_id,
                stages=tuple(clock.stages),
                guardrails=tuple(summaries),
                block_message=block,
            )
            return result
        raise _exhausted(route, last) from last

    # -- streaming --------------------------------------------------------------------------

    async def stream(self, call: GenerateCall) -> AsyncIterator[StreamItem]:
        clock = _Clock()
        route: RouteSpec | None = None
        request_id = call.context.request_id or ""
        model = common_pb2.ModelRef()
        reservation: Reservation | None = None
        settled = False
        try:
            table, route, sampling, request_id = self._prepare(call)
            admitted = await self._admit(call, route, sampling, request_id, clock)
            early = admitted.early
            if early is not None:  # blocked at the input guardrail, or from the cache
                yield StreamStart(early.model, early.target_index, request_id)
                if early.text:
                    yield StreamText(early.text)
                yield replace(early, text="")
                return
            call, summaries, key = admitted.call, admitted.summaries, admitted.key
            output_policy = admitted.output_policy
            reservation = await self._reserve(table, route, call, sampling)
            last: LLMOpsError | None = None
            for index, target in enumerate(route.targets):
                model = await self.versions.ref(target.model, target.version, target.alias)
                engine = self.engines.get(target.engine, table.engines[target.engine])
                sent = False
                outcome: list[Released] = []
                breaker = self.breaker(target.engine)
                try:
                    breaker.before()
                    async with self.limiter(route, index).slot() as queued:
                        began = time.perf_counter()
                        first: float | None = None
                        parts: list[str] = []
                        final = None
                        source = self._fitted(
                            engine, self._request(call, target, sampling, request_id), route
                        )
                        if output_policy and self.guard is not None:
                            checker = await self.guard.stream_check(
                                call.context, output_policy, route.name
                            )
                            source = self._guarded(source, checker, outcome)
                        async for delta in source:
                            if delta.text:
                                if not sent:
                                    first = time.perf_counter()
                                    yield StreamStart(model, index, request_id)
                                    sent = True
                                parts.append(delta.text)
                                yield StreamText(delta.text)
                            if delta.finish is not None:
                                final = delta
                        ended = time.perf_counter()
                        clock.stage("model", began, ended)
                except FALLBACK_ON as exc:
                    if isinstance(exc, Unavailable) and not isinstance(exc, CircuitOpen):
                        breaker.failure()
                        self._observe(breaker)
                    else:
                        breaker.release()
                    if sent:
                        raise  # text already went out: no silent switch to another model
                    last = exc
                    self.metrics.fallbacks.labels(route.name, str(index)).inc()
                    log.warning(
                        "route_target_failed", route=route.name, target=index, error=str(exc)
                    )
                    continue
                except BaseException:
                    breaker.release()
                    raise
                breaker.success()
                self._observe(breaker)
                if not sent:
                    yield StreamStart(model, index, request_id)
                block = ""
                if outcome:
                    if outcome[0].summary is not None:
                        summaries.append(outcome[0].summary)
                    if outcome[0].verdict == common_pb2.VERDICT_BLOCK:
                        block = outcome[0].block_message or "blocked by the output guardrail"
                total = ended - began
                completion = Completion(
                    text="".join(parts),
                    finish=final.finish if final and final.finish else "end_of_sequence",
                    prompt_tokens=final.prompt_tokens if final else 0,
                    completion_tokens=final.completion_tokens if final else len(parts),
                    time_to_first_token_s=(first - began) if first is not None else total,
                    total_s=total,
                )
                usage = self._usage(completion, queued, target)
                result = Generated(
                    text="",
                    finish="content_filter" if block else completion.finish,
                    usage=usage,
                    model=model,
                    target_index=index,
                    request_id=request_id,
                    stages=tuple(clock.stages),
                    guardrails=tuple(summaries),
                    block_message=block,
                    retract=bool(block) and sent,
                )
                await self._settle(reservation, usage)
                settled = True
                await self._store(key, route, replace(result, block_message=block),
                                  completion.text)  # fmt: skip
                self._record(call, route, result, clock, "OK", "" if block else completion.text)
                yield result
                return
            raise _exhausted(route, last) from last
        except LLMOpsError as exc:
            self._record_error(call, route, model, request_id, clock, exc)
            raise
        finally:
            if not settled:  # failed, or the client went away: release what was held
                await self._settle(reservation, common_pb2.Usage())

    # -- accounting -------------------------------------------------------------------------

    def _usage(self, c: Completion, queued_s: float, target: TargetSpec) -> common_pb2.Usage:
        tpot = (
            (c.total_s - c.time_to_first_token_s) / (c.completion_tokens - 1)
            if c.completion_tokens > 1
            else 0.0
        )
        usage = common_pb2.Usage(
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            time_to_first_token_ms=c.time_to_first_token_s * 1e3,
            time_per_output_token_ms=tpot * 1e3,
            queue_time_ms=queued_s * 1e3,
            total_time_ms=(c.total_s + queued_s) * 1e3,
            cached_prompt_tokens=c.cached_prompt_tokens,
        )
        usage.cost.CopyFrom(cost(usage, target))
        return usage

    def _record(
        self,
        call: GenerateCall,
        route: RouteSpec,
        result: Generated,
        clock: _Clock,
        code: str,
        text: str | None = None,
    ) -> None:
        u = result.usage
        key = (route.name, result.model.name, code)
        series = self._series.get(key)
        if series is None:  # labelled children looked up once per (route, model, status)
            m, labels = self.metrics, (route.name, result.model.name)
            series = self._series[key] = (
                m.requests.labels(route.name, code), m.ttft.labels(*labels),
                m.tpot.labels(*labels), m.queue.labels(*labels),
                m.tokens.labels(route.name, "prompt"), m.tokens.labels(route.name, "completion"),
            )  # fmt: skip
        requests, ttft, tpot, queue, prompt_tokens, completion_tokens = series
        requests.inc()
        ttft.observe(u.time_to_first_token_ms / 1e3)
        if u.completion_tokens > 1:
            tpot.observe(u.time_per_output_token_ms / 1e3)
        queue.observe(u.queue_time_ms / 1e3)
        prompt_tokens.inc(u.prompt_tokens)
        completion_tokens.inc(u.completion_tokens)
        if not call.logged:
            return
        event = self._event(call, route.name, result.model, result.request_id, clock, code)
        event.finish_reason = FINISH[result.finish]  # type: ignore[assignment]
        event.route_target_index = result.target_index
        event.usage.CopyFrom(u)
        event.guardrails.extend(result.guardrails)
        event.cache_hit = result.cache_hit
        if self.log_payloads:
            event.output.string_value = result.text if text is None else text
        self.publish_prediction(event)

    def _record_error(
        self,
        call: GenerateCall,
        route: RouteSpec | None,
        model: common_pb2.ModelRef,
        request_id: str,
        clock: _Clock,
        exc: LLMOpsError,
    ) -> None:
        name = route.name if route is not None else call.route[:128]
        self.metrics.requests.labels(name if route is not None else "", exc.code).inc()
        if not call.logged or (isinstance(exc, ResourceExhausted) and "prediction log" in str(exc)):
            return  # the task run logs it; or nothing can be logged: the buffer is full
        event = self._event(call, name, model, request_id or uuid7(), clock, exc.code)
        event.error_reason = exc.reason or exc.code
        self.publish_prediction(event)

    def _event(
        self,
        call: GenerateCall,
        route: str,
        model: common_pb2.ModelRef,
        request_id: str,
        clock: _Clock,
        code: str,
    ) -> events_pb2.PredictionEvent:
        ctx = call.context
        event = events_pb2.PredictionEvent(
            event_id=uuid7(),
            request_id=request_id,
            tenant=ctx.tenant,
            market=ctx.market,
            route=route,
            model_name=model.name,
            model_version=model.version,
            total_latency_us=clock.us(time.perf_counter()),
            status_code=STATUS_NUMBER.get(code, 2),
            locale=ctx.locale,
            device=ctx.device,
            user_id=ctx.user_id,
            session_id=ctx.session_id,
            client_name=ctx.client_name,
        )
        event.event_time.GetCurrentTime()
        event.stages.extend(clock.stages)
        if self.log_payloads and call.prompt is not None:
            event.inputs["prompt"].string_value = call.prompt
        return event

    def publish_prediction(self, event: events_pb2.PredictionEvent) -> None:
        """Buffer one prediction event (the task runs log theirs through here too)."""
        envelope = events_pb2.EventEnvelope()
        envelope.prediction.CopyFrom(event)
        try:
            self.events.publish(envelope)
        except LLMOpsError as exc:  # room was checked before the model ran; a race lost it
            log.error("prediction_not_logged", event_id=event.event_id, error=str(exc))
            self.metrics.unlogged.inc()
