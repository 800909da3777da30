"""The OpenAI-compatible engine against the benchmark's upstream, started in-process: the
request it builds (routes, sampling fields, the key), what it makes of the replies (text,
usage, finish), SSE streaming and its closing, error mapping without leaking the key,
/tokenize and its fallback, health, and the request's time budget."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from benchmarks.openai_upstream import MAX_MODEL_LEN, Upstream, start_upstream
from llmops.errors import (
    FailedPrecondition,
    InvalidArgument,
    LLMOpsError,
    ResourceExhausted,
    Unavailable,
)
from services.inference.engine import ChatTurn, Delta, Engine, EngineRequest, Sampling
from services.inference.engines.openai_compat import OpenAIEngine

KEY = "sk-test-4f1c9e0b7a2d"
REPLY_TOKENS = 8


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    server = await start_upstream(reply_tokens=REPLY_TOKENS)
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def slow() -> AsyncIterator[Upstream]:
    """20 ms a token, 200 tokens: a stream that is still going when a test leaves it."""
    server = await start_upstream(token_delay_s=0.02, reply_tokens=200)
    yield server
    await server.close()


@pytest.fixture
async def engine(upstream: Upstream) -> AsyncIterator[OpenAIEngine]:
    e = OpenAIEngine(upstream.base_url, api_key=KEY)
    yield e
    await e.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reply(prompt: str, n: int) -> str:
    """What the upstream answers: ``n`` words cycled from the prompt."""
    words = prompt.split()
    return " ".join(words[i % len(words)] for i in range(n))


def _chat(text: str, **sampling: Any) -> EngineRequest:
    return EngineRequest(
        model="upstream",
        sampling=Sampling(**sampling),
        messages=(ChatTurn("system", "be brief"), ChatTurn("user", text)),
        request_id="req-1",
    )


def _prompt(text: str, **sampling: Any) -> EngineRequest:
    return EngineRequest(
        model="upstream",
        sampling=Sampling(**sampling),
        prompt=text,
    )


async def _collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in stream]


def test_is_an_engine_and_names_its_endpoint_without_credentials() -> None:
    engine: Engine = OpenAIEngine("http://user:secret@127.0.0.1:8000/v1/", api_key=KEY)
    assert isinstance(engine, Engine)
    assert engine.kind == "openai"
    assert engine.endpoint == "http://127.0.0.1:8000/v1"
    with pytest.raises(InvalidArgument) as bad:
        OpenAIEngine("ftp://127.0.0.1/v1")
    assert bad.value.field == "base_url"


async def test_chat_generate(engine: OpenAIEngine, upstream: Upstream) -> None:
    done = await engine.generate(_chat("alpha beta gamma"))
    assert done.text == _reply("be brief alpha beta gamma", REPLY_TOKENS)
    assert done.finish == "end_of_sequence"
    assert (done.prompt_tokens, done.completion_tokens) == (5, REPLY_TOKENS)
    assert done.time_to_first_token_s == done.total_s > 0
    body = upstream.last_body
    assert body is not None
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "alpha beta gamma"},
    ]
    assert "prompt" not in body and "stream" not in body
    assert upstream.last_headers["Authorization"] == f"Bearer {KEY}"
    assert upstream.last_headers["X-Request-Id"] == "req-1"


async def test_prompt_generate_cut_by_max_tokens(engine: OpenAIEngine, upstream: Upstream) -> None:
    done = await engine.generate(_prompt("one two three", max_tokens=3))
    assert done.text == "one two three"
    assert done.finish == "length"
    assert (done.prompt_tokens, done.completion_tokens) == (3, 3)
    assert upstream.last_body is not None and upstream.last_body["prompt"] == "one two three"
    assert "messages" not in upstream.last_body


async def test_cached_prompt_tokens_come_from_usage(engine: OpenAIEngine) -> None:
    first = await engine.generate(_prompt("a prompt seen twice"))
    again = await engine.generate(_prompt("a prompt seen twice"))
    assert first.cached_prompt_tokens == 0
    assert again.cached_prompt_tokens == again.prompt_tokens == 4


async def test_sampling_fields_reach_the_server(engine: OpenAIEngine, upstream: Upstream) -> None:
    schema = MappingProxyType({"type": "object", "properties": {"a": {"type": "string"}}})
    request = EngineRequest(
        model="upstream",
        sampling=Sampling(
            max_tokens=5,
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            stop=("zzz", "yyy"),
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            seed=7,
            min_tokens=2,
        ),
        prompt="p q",
        json_schema=schema,
    )
    await engine.generate(request)
    body = upstream.last_body
    assert body is not None
    assert body["model"] == "upstream"
    assert body["max_tokens"] == 5
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["stop"] == ["zzz", "yyy"]
    assert body["repetition_penalty"] == 1.1
    assert body["presence_penalty"] == 0.5
    assert body["frequency_penalty"] == 0.25
    assert body["seed"] == 7
    assert body["min_tokens"] == 2
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": dict(schema)},
    }


async def test_defaults_leave_the_extra_fields_out(
    engine: OpenAIEngine, upstream: Upstream
) -> None:
    await engine.generate(_prompt("p q"))
    body = upstream.last_body
    assert body is not None
    for extra in (
        "top_k",
        "repetition_penalty",
        "min_tokens",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
    ):
        assert extra not in body, extra
    assert body["max_tokens"] == 256 and body["temperature"] == 0.0 and body["top_p"] == 1.0


async def test_neither_or_both_of_messages_and_prompt(engine: OpenAIEngine) -> None:
    with pytest.raises(InvalidArgument):
        await engine.generate(EngineRequest(model="upstream", sampling=Sampling()))
    both = EngineRequest(
        model="upstream", sampling=Sampling(), prompt="x", messages=(ChatTurn("user", "x"),)
    )
    with pytest.raises(InvalidArgument):
        await _collect(engine.stream(both))


async def test_stop_string_is_a_stop_sequence(engine: OpenAIEngine) -> None:
    done = await engine.generate(_prompt("red green blue", stop=("blue",)))
    assert done.text == "red green "
    assert done.finish == "stop_sequence"
    chat = await engine.generate(_chat("red green blue", stop=("nowhere", "green")))
    assert chat.text == "be brief red "
    assert chat.finish == "stop_sequence"
    unmatched = await engine.generate(_prompt("red green blue", stop=("nowhere",)))
    assert unmatched.finish == "end_of_sequence"


@pytest.mark.parametrize("make", [_chat, _prompt])
async def test_stream_joins_to_the_generated_text(
    engine: OpenAIEngine, upstream: Upstream, make: Callable[[str], EngineRequest]
) -> None:
    request = make("delta epsilon zeta eta")
    done = await engine.generate(request)
    deltas = await _collect(engine.stream(request))
    assert "".join(d.text for d in deltas) == done.text
    assert all(d.finish is None for d in deltas[:-1])
    assert len(deltas) == REPLY_TOKENS + 1  # a delta a word, then the finish
    last = deltas[-1]
    assert last.finish == done.finish == "end_of_sequence"
    assert (last.prompt_tokens, last.completion_tokens) == (
        done.prompt_tokens,
        done.completion_tokens,
    )
    body = upstream.last_body
    assert body is not None
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_stop_sequence_and_length(engine: OpenAIEngine) -> None:
    deltas = await _collect(engine.stream(_prompt("red green blue", stop=("blue",))))
    assert "".join(d.text for d in deltas) == "red green "
    assert deltas[-1].finish == "stop_sequence"
    cut = await _collect(engine.stream(_chat("red green blue", max_tokens=2)))
    assert "".join(d.text for d in cut) == "be brief"
    assert (cut[-1].finish, cut[-1].completion_tokens) == ("length", 2)


async def test_closing_a_stream_early_closes_the_response(slow: Upstream) -> None:
    engine = OpenAIEngine(slow.base_url)
    try:
        before, sent = slow.disconnects, slow.chunks_sent
        stream = engine.stream(_prompt("a b c"))
        first = [await anext(stream), await anext(stream)]
        assert [d.text for d in first] == ["a", " b"]
        await stream.aclose()
        for _ in range(100):  # the server sees it on its next write, 20 ms on
            if slow.disconnects > before:
                break
            await asyncio.sleep(0.02)
        assert slow.disconnects == before + 1
        assert slow.chunks_sent - sent < 20  # of 200: it stopped generating
    finally:
        await engine.close()


async def test_stream_budget_ends_with_timeout(slow: Upstream) -> None:
    engine = OpenAIEngine(slow.base_url)
    try:
        started = time.perf_counter()
        request = EngineRequest(
            model="upstream", sampling=Sampling(), prompt="a b c", timeout_s=0.3
        )
        deltas = await _collect(engine.stream(request))
        assert time.perf_counter() - started < 2.0
        last = deltas[-1]
        assert last.finish == "timeout"
        assert 0 < len(deltas) - 1 < 200
        assert last.completion_tokens == len(deltas) - 1  # no usage: a token a chunk
        assert last.prompt_tokens == 0
    finally:
        await engine.close()


async def test_generate_budget_fails_unavailable(slow: Upstream) -> None:
    engine = OpenAIEngine(slow.base_url)
    try:
        request = EngineRequest(
            model="upstream", sampling=Sampling(), prompt="a b c", timeout_s=0.2
        )
        started = time.perf_counter()
        with pytest.raises(Unavailable) as failed:
            await engine.generate(request)
        assert time.perf_counter() - started < 2.0
        assert "timed out after 0.2s" in failed.value.message
        assert slow.base_url in failed.value.message
    finally:
        await engine.close()


ERRORS: list[tuple[str, type[LLMOpsError]]] = [
    ("503", Unavailable),
    ("502", Unavailable),
    ("500", Unavailable),
    ("429", ResourceExhausted),
    ("400-context", InvalidArgument),
    ("400", FailedPrecondition),
    ("401", FailedPrecondition),
    ("404", FailedPrecondition),
]


@pytest.mark.parametrize(("fail", "error"), ERRORS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_error_mapping(
    upstream: Upstream, fail: str, error: type[LLMOpsError], streamed: bool
) -> None:
    engine = OpenAIEngine(upstream.base_url, api_key=KEY, headers={"x-upstream-fail": fail})
    try:
        with pytest.raises(error) as failed:
            if streamed:
                await _collect(engine.stream(_chat("x y")))
            else:
                await engine.generate(_chat("x y"))
        assert upstream.last_headers["Authorization"] == f"Bearer {KEY}"  # sent...
        assert KEY not in str(failed.value) and KEY not in repr(failed.value)  # ...never shown
        if error is InvalidArgument:
            assert failed.value.field == "prompt"
            assert "maximum context length" in failed.value.message
        else:
            assert upstream.base_url in failed.value.message
            assert f"injected failure {fail}" in failed.value.message
    finally:
        await engine.close()


async def test_the_key_is_cut_out_of_a_server_message(upstream: Upstream) -> None:
    echoed = f"Incorrect API key provided: {KEY}. " + "x" * 500
    engine = OpenAIEngine(
        upstream.base_url,
        api_key=KEY,
        headers={"x-upstream-fail": "401", "x-upstream-fail-message": echoed},
    )
    try:
        with pytest.raises(FailedPrecondition) as failed:
            await engine.generate(_prompt("x"))
        message = failed.value.message
        assert KEY not in message
        assert "Incorrect API key provided: ***" in message
        assert message.count("x") <= 200  # the server's message, trimmed
        health = await engine.health()
        assert not health.ready and KEY not in health.detail
    finally:
        await engine.close()


async def test_unreachable_server() -> None:
    engine = OpenAIEngine(f"http://127.0.0.1:{_free_port()}/v1", api_key=KEY)
    try:
        with pytest.raises(Unavailable) as failed:
            await engine.generate(_chat("x"))
        assert engine.endpoint in failed.value.message and KEY not in failed.value.message
        with pytest.raises(Unavailable):
            await _collect(engine.stream(_chat("x")))
        with pytest.raises(Unavailable):
            await engine.count_tokens("upstream", "x")
        health = await engine.health()
        assert not health.ready
        assert engine.endpoint in health.detail and KEY not in health.detail
    finally:
        await engine.close()


async def test_count_tokens_through_tokenize(engine: OpenAIEngine, upstream: Upstream) -> None:
    assert await engine.count_tokens("upstream", "one two three four five") == 5
    assert upstream.last_body == {"model": "upstream", "prompt": "one two three four five"}


async def test_count_tokens_estimates_without_tokenize(upstream: Upstream) -> None:
    engine = OpenAIEngine(upstream.base_url, headers={"x-upstream-fail": "404"})
    text = "a sentence of some forty-one characters.."
    try:
        with capture_logs() as logs:
            assert await engine.count_tokens("upstream", text) == math.ceil(len(text) / 4)
            asked = upstream.requests
            assert await engine.count_tokens("upstream", text + "!") == math.ceil(43 / 4)
        assert upstream.requests == asked  # learnt once: no second request
        assert [e["event"] for e in logs] == ["tokenize_unsupported"]
    finally:
        await engine.close()


async def test_health(engine: OpenAIEngine) -> None:
    health = await engine.health()
    assert health.ready
    assert [(m.name, m.ready, m.max_context_tokens) for m in health.models] == [
        ("upstream", True, MAX_MODEL_LEN)
    ]


# -- a server that is less tidy than the upstream -------------------------------------------


async def _sloppy_completions(request: web.Request) -> web.StreamResponse:
    """CRLF lines, no blank line between events, a keep-alive comment, events split across
    writes mid-line, and no usage chunk."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    raw = (
        b': keep-alive\r\ndata: {"choices":[{"index":0,"text":"He","finish_reason":null}]}\r\n'
        b'data: {"choices":[{"index":0,"text":"llo","finish_reason":null}]}\r\n'
        b'data:{"choices":[{"index":0,"text":"","finish_reason":"stop"}]}\r\n'
        b"data: [DONE]\r\n"
    )
    for i in range(0, len(raw), 7):
        await response.write(raw[i : i + 7])
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def _truncated_chat(request: web.Request) -> web.StreamResponse:
    """Two chunks, then the connection goes."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in ("a", "b"):
        chunk = b'{"choices":[{"index":0,"delta":{"content":"%s"}}]}' % piece.encode()
        await response.write(b"data: " + chunk + b"\n\n")
    assert request.transport is not None
    request.transport.close()
    return response


async def _llama_tokenize(request: web.Request) -> web.Response:
    """llama.cpp reads ``content`` only and answers no tokens without it."""
    body = await request.json()
    return web.json_response({"tokens": list(range(len(body.get("content", "").split())))})


@pytest.fixture(scope="module")
async def sloppy() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/completions", _sloppy_completions)
    app.router.add_post("/v1/chat/completions", _truncated_chat)
    app.router.add_post("/tokenize", _llama_tokenize)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


async def test_sse_is_parsed_incrementally(sloppy: str) -> None:
    engine = OpenAIEngine(sloppy)
    try:
        deltas = await _collect(engine.stream(_prompt("x")))
        assert [d.text for d in deltas] == ["He", "llo", ""]
        last = deltas[-1]
        assert last.finish == "end_of_sequence"
        assert (last.prompt_tokens, last.completion_tokens) == (0, 2)
    finally:
        await engine.close()


async def test_a_stream_cut_short_is_unavailable(sloppy: str) -> None:
    engine = OpenAIEngine(sloppy)
    got: list[str] = []
    try:
        with pytest.raises(Unavailable):
            async for delta in engine.stream(_chat("x")):
                got.append(delta.text)
        assert got == ["a", "b"]
    finally:
        await engine.close()


async def test_count_tokens_speaks_llama_cpp(sloppy: str) -> None:
    engine = OpenAIEngine(sloppy)
    try:
        assert await engine.count_tokens("m", "one two three") == 3
        assert await engine.count_tokens("m", "four five") == 2
        assert await engine.count_tokens("m", "") == 0
    finally:
        await engine.close()
