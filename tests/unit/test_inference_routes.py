"""Routes files (validation naming file and field, cross-checks, sampling resolution), stop
strings split across stream pieces, the request's sampling checks, and target limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmops.errors import InvalidArgument, NotFound, ResourceExhausted
from services.inference.engine import Sampling
from services.inference.generation import validate_sampling
from services.inference.limits import TargetLimiter
from services.inference.routes import RouteError, load_routes
from services.inference.stops import StopMatcher

GOOD = """
engines:
  local:
    backend: llama_cpp
    gguf: /models/m.gguf
  remote:
    backend: openai
    base_url: http://127.0.0.1:9/v1
    api_key_env: REMOTE_KEY
routes:
  - name: chat-small
    targets:
      - {model: m, alias: champion, engine: remote, timeout_s: 2}
      - {model: m, version: 3, engine: local}
    sampling: {max_tokens: 64, temperature: 0.5, stop: ["###"]}
"""


def write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_a_good_file_loads_with_a_revision_and_sampling_resolves_in_order(tmp_path: Path) -> None:
    table = load_routes([write(tmp_path, GOOD)])
    assert len(table.revision) == 12 and list(table.routes) == ["chat-small"]
    route = table.route("chat-small")
    assert [t.engine for t in route.targets] == ["remote", "local"]
    base = Sampling(max_tokens=256, temperature=0.0)
    resolved = route.sampling.resolve(base)
    assert (resolved.max_tokens, resolved.temperature, resolved.stop) == (64, 0.5, ("###",))
    request = validate_sampling({"temperature": 0.9, "stop_words": ["\n\n"]})
    final = request.resolve(resolved)
    assert (final.max_tokens, final.temperature, final.stop) == (64, 0.9, ("\n\n",))
    with pytest.raises(NotFound, match="no route 'nope'"):
        table.route("nope")


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (GOOD.replace("engine: local}", "engine: gone}"), "routes[chat-small].targets[1].engine",
         "no engine 'gone'"),
        (GOOD.replace("name: chat-small", "name: Chat_Small"), "routes[Chat_Small]",
         "lower-kebab-case"),
        (GOOD.replace("temperature: 0.5", "temperature: 5"), "sampling.temperature", "less than"),
        (GOOD.replace("api_key_env: REMOTE_KEY", "api_key_env: sk-123"), "engines.remote",
         "environment variable"),
        (GOOD.replace("version: 3,", "version: 3, alias: champion,"), "targets[1]", "not both"),
        (GOOD.replace("backend: openai", "backend: tgi"), "engines.remote.backend", "Input should"),
        (GOOD.replace("timeout_s: 2", "timeout_s: 2, retries: 3"), "targets[0].retries",
         "Extra inputs"),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_file_and_field(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    with pytest.raises(RouteError) as caught:
        load_routes([write(tmp_path, text)])
    assert "routes.yaml" in caught.value.field and field in caught.value.field
    assert message in str(caught.value)


def test_a_route_defined_twice_is_refused(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, "routes:\n  - name: chat-small\n    targets: [{model: m, engine: local}]\n",
          "b.yaml")  # fmt: skip
    with pytest.raises(RouteError, match="already defined in"):
        load_routes([tmp_path])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"temperature": -1.0}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"beam_width": 4}, "sampling.beam_width"),
        ({"stop_words": [""]}, "sampling.stop_words[0]"),
        ({"stop_words": ["x"] * 9}, "sampling.stop_words"),
        ({"presence_penalty": 3.0}, "sampling.presence_penalty"),
    ],
)
def test_bad_sampling_is_invalid_argument_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_sampling(fields)
    assert caught.value.field == field


def test_stop_strings_split_across_pieces_are_cut_and_never_leak() -> None:
    m = StopMatcher(["</end>", "\n\n"])
    out = [m.feed(p) for p in ["Hello </", "en", "d> more"]]
    assert out == ["Hello ", "", ""] and m.stopped == "</end>"
    m = StopMatcher(["</end>"])
    assert m.feed("a </e") == "a " and m.feed("xit") == "</exit" and m.flush() == ""
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == "" and m.flush() == "ST" and m.stopped is None
    m = StopMatcher(["b", "abc"])  # the earliest match wins
    assert m.feed("xabc") == "x" and m.stopped == "abc"
    assert StopMatcher([]).feed("anything") == "anything"


async def test_a_full_target_queues_then_sheds() -> None:
    limiter = TargetLimiter("route r target 0", max_concurrency=1, max_queue=1)
    release = asyncio.Event()

    async def hold() -> float:
        async with limiter.slot() as queued:
            await release.wait()
            return queued

    first = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(hold())  # waits in the queue
    await asyncio.sleep(0.01)
    assert (limiter.in_flight, limiter.waiting) == (1, 1)
    with pytest.raises(ResourceExhausted, match="max_queue 1"):
        async with limiter.slot():
            pass
    release.set()
    assert await first < 0.01 and await second > 0.0
    assert (limiter.in_flight, limiter.waiting) == (0, 0)
