"""TensorRT-LLM in-process (its LLM API), for GPU hosts: ``backend: trtllm`` with
``engine_dir`` (a built engine or a checkpoint directory the LLM API accepts).

``tensorrt_llm`` is imported when the engine loads, never at import time: it exists only on
CUDA hosts (it is not on PyPI for this platform), and a route naming this backend elsewhere
answers UNAVAILABLE with the reason, so its fallback serves. Generation goes through
``LLM.generate_async(prompt, SamplingParams, streaming=True)``: an async iterator of
``RequestOutput`` whose ``outputs[0].text_diff`` is the new text of each step; closing the
stream calls ``abort()``. Chats are rendered with the model tokenizer's own chat template.
Stop strings are cut by the service (:class:`StopMatcher`) like for every backend.

Not run on the development machine (no GPU): tested against a stand-in module with the LLM
API's shape (``tests/unit/test_inference_trtllm.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from llmops.errors import Unavailable
from services.inference.engine import (
    Completion,
    Delta,
    EngineHealth,
    EngineModel,
    EngineRequest,
    Finish,
    collect,
)
from services.inference.stops import StopMatcher


class TrtLlmEngine:
    kind = "trtllm"
    endpoint = ""

    def __init__(self, name: str, engine_dir: str) -> None:
        self.name = name
        self.engine_dir = engine_dir
        self._llm: Any = None
        self._module: Any = None
        self._lock = threading.Lock()
        self._load_time = 0.0

    def load(self) -> None:
        """Build the LLM (blocking: minutes for a large engine; idempotent)."""
        with self._lock:
            if self._llm is not None:
                return
            try:
                module = importlib.import_module("tensorrt_llm")
            except ImportError:
                raise Unavailable(  # a route's fallback serves instead
                    f"engine {self.name}: tensorrt_llm is not installed (GPU hosts only)"
                ) from None
            self._module = module
            self._llm = module.LLM(model=self.engine_dir)
            self._load_time = time.time()

    def _prompt(self, request: EngineRequest) -> str:
        if request.messages is None:
            return request.prompt or ""
        turns = [{"role": t.role, "content": t.content} for t in request.messages]
        rendered: str = self._llm.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True
        )
        return rendered

    def _sampling(self, request: EngineRequest) -> Any:
        s = request.sampling
        params: dict[str, Any] = {
            "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty, "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
        }  # fmt: skip
        if s.top_k:
            params["top_k"] = s.top_k
        if s.seed is not None:
            params["seed"] = s.seed
        if s.min_tokens:
            params["min_tokens"] = s.min_tokens
        return self._module.SamplingParams(**params)

    async def stream(self, request: EngineRequest) -> AsyncIterator[Delta]:
        await asyncio.to_thread(self.load)
        prompt = self._prompt(request)
        output = self._llm.generate_async(prompt, self._sampling(request), streaming=True)
        stops = StopMatcher(request.sampling.stop)
        finish: Finish = "end_of_sequence"
        deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        last: Any = None
        try:
            async for step in output:
                last = step
                released = stops.feed(step.outputs[0].text_diff)
                if released:
                    yield Delta(released)
                if stops.stopped is not None:
                    finish = "stop_sequence"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    finish = "timeout"
                    break
        finally:
            if last is None or not getattr(last, "finished", True):
                abort = getattr(output, "abort", None)
                if callable(abort):
                    abort()  # stop generating: the caller left, a stop string, a deadline
        tail = stops.flush()
        if tail:
            yield Delta(tail)
        completion = last.outputs[0] if last is not None else None
        if finish == "end_of_sequence" and completion is not None:
            finish = "length" if completion.finish_reason == "length" else "end_of_sequence"
        yield Delta(
            "",
            finish=finish,
            prompt_tokens=len(getattr(last, "prompt_token_ids", None) or ()),
            completion_tokens=len(completion.token_ids) if completion is not None else 0,
        )

    async def generate(self, request: EngineRequest) -> Completion:
        return await collect(self.stream(request))

    async def count_tokens(self, model: str, text: str) -> int:
        await asyncio.to_thread(self.load)
        return len(self._llm.tokenizer.encode(text))

    async def health(self) -> EngineHealth:
        ready = self._llm is not None
        model = EngineModel(
            name=self.name, ready=ready, device="cuda", load_time=self._load_time,
            detail="" if ready else "not loaded yet",
        )  # fmt: skip
        return EngineHealth(ready=ready, detail=model.detail, models=(model,))

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            await asyncio.to_thread(shutdown)
