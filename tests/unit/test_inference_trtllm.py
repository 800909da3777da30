"""The TensorRT-LLM engine's client path without a GPU: a stand-in ``tensorrt_llm`` module with
the LLM API's shape (``LLM``, ``SamplingParams``, ``generate_async(..., streaming=True)``
yielding ``RequestOutput``s with ``outputs[0].text_diff``) checks what the engine sends and
that closing a stream aborts the request. The real module exists only on CUDA hosts."""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llmops.errors import Unavailable
from services.inference.engine import ChatTurn, EngineRequest, Sampling
from services.inference.engines.trtllm import TrtLlmEngine

WORDS = ["Sunny", " flat", " near", " the", " beach", "."]


class Completion:
    def __init__(self, text_diff: str, token_ids: list[int], finish_reason: str | None) -> None:
        self.text_diff, self.token_ids, self.finish_reason = text_diff, token_ids, finish_reason


class Output:
    def __init__(self, prompt_ids: list[int], completion: Completion, finished: bool) -> None:
        self.prompt_token_ids, self.outputs, self.finished = prompt_ids, [completion], finished


class Stream:
    def __init__(self, words: list[str], max_tokens: int) -> None:
        self.words, self.max_tokens, self.aborted = words, max_tokens, False

    def __aiter__(self) -> AsyncIterator[Output]:
        return self._run()

    async def _run(self) -> AsyncIterator[Output]:
        n = min(self.max_tokens, len(self.words))
        for i in range(n):
            done = i == n - 1
            reason = ("length" if n == self.max_tokens else "stop") if done else None
            yield Output([1, 2, 3], Completion(self.words[i], list(range(i + 1)), reason), done)

    def abort(self) -> None:
        self.aborted = True


class Tokenizer:
    def apply_chat_template(self, turns: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> str:  # fmt: skip
        assert not tokenize and add_generation_prompt
        return "".join(f"<|{t['role']}|>{t['content']}" for t in turns) + "<|assistant|>"

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str) -> None:
        self.model, self.tokenizer, self.calls = model, Tokenizer(), []
        self.streams: list[Stream] = []
        LLM.instances.append(self)

    def generate_async(self, prompt: str, params: Any, streaming: bool) -> Stream:
        assert streaming
        self.calls.append((prompt, params.kw))
        stream = Stream(WORDS, params.kw["max_tokens"])
        self.streams.append(stream)
        return stream


class SamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


@pytest.fixture
def fake_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("tensorrt_llm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    sys.modules["tensorrt_llm"] = module
    yield module
    del sys.modules["tensorrt_llm"]


def request(**sampling: Any) -> EngineRequest:
    return EngineRequest(
        model="", sampling=Sampling(**{"max_tokens": 6, **sampling}),
        messages=(ChatTurn("user", "A flat in Nice?"),),
    )  # fmt: skip


async def test_generation_goes_through_the_llm_api(fake_module: types.ModuleType) -> None:
    engine = TrtLlmEngine("gpu", "/engines/llama-8b")
    done = await engine.generate(request(temperature=0.2, top_k=4, seed=3))
    llm = LLM.instances[-1]
    assert llm.model == "/engines/llama-8b"
    prompt, params = llm.calls[0]
    assert prompt == "<|user|>A flat in Nice?<|assistant|>"
    assert (params["max_tokens"], params["top_k"], params["seed"]) == (6, 4, 3)
    assert done.text == "".join(WORDS) and done.finish == "length"
    assert (done.prompt_tokens, done.completion_tokens) == (3, 6)
    assert await engine.count_tokens("", "three word text") == 3


async def test_a_stop_string_aborts_the_request(fake_module: types.ModuleType) -> None:
    engine = TrtLlmEngine("gpu", "/engines/llama-8b")
    deltas = [d async for d in engine.stream(request(max_tokens=20, stop=(" the",)))]
    assert "".join(d.text for d in deltas) == "Sunny flat near"
    assert deltas[-1].finish == "stop_sequence"
    assert LLM.instances[-1].streams[-1].aborted


async def test_without_the_module_it_says_so() -> None:
    sys.modules.pop("tensorrt_llm", None)
    engine = TrtLlmEngine("gpu", "/engines/llama-8b")
    with pytest.raises(Unavailable, match="tensorrt_llm is not installed"):
        await engine.generate(request())
