"""The one seam between the inference service and whatever runs a model.

Every backend (llama.cpp in-process, an OpenAI-compatible HTTP server, Triton, TensorRT-LLM)
implements :class:`Engine`: generate a completion, stream one, count tokens, report health
and the models it serves. The route layer above it knows nothing of a backend's protocol:
it hands an :class:`EngineRequest` (a chat or a raw prompt, with sampling already resolved
against the route's defaults) and gets a :class:`Completion` or a stream of
:class:`Delta`\\ s back.

Engines raise the platform's errors (:mod:`llmops.errors`), so that the fallback chain can tell
a target that is down or overloaded (``Unavailable``, ``ResourceExhausted``: try the next
target) from a request that no target can serve (``InvalidArgument``: e.g. a prompt over the
context window, fail at once).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Finish = Literal["end_of_sequence", "stop_sequence", "length", "timeout", "cancelled"]
"""Why generation stopped (the contract's FinishReason, less what the service decides:
CONTENT_FILTER is a guardrail's call, not an engine's)."""

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling with every field resolved (request over route defaults over the service's)."""

    max_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 = off."""
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    min_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation: exactly one of ``messages`` and ``prompt``."""

    model: str
    """The model as the backend names it (a served model name, an engine directory...)."""
    sampling: Sampling
    messages: tuple[ChatTurn, ...] | None = None
    prompt: str | None = None
    json_schema: Mapping[str, Any] | None = None
    """Constrain the output to this JSON Schema where the backend can (llama.cpp grammar)."""
    timeout_s: float | None = None
    """The attempt's budget; the engine stops generating (finish ``timeout``) or fails with
    DeadlineExceeded semantics (``Unavailable``) when it is spent."""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    """From the engine call to the first output token (the whole call when not streamed
    internally: then it equals ``total_s``)."""
    total_s: float
    cached_prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed completion. The last one has ``finish`` and the token counts."""

    text: str
    finish: Finish | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineModel:
    """A model as a backend serves it (ListModels)."""

    name: str
    ready: bool
    max_context_tokens: int = 0
    max_output_tokens: int = 0
    max_batch_size: int = 0
    device: str = "cpu"
    precision: str = ""
    load_time: float = 0.0
    """Epoch seconds (0 = unknown)."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ready: bool
    detail: str = ""
    models: tuple[EngineModel, ...] = field(default_factory=tuple)


async def collect(deltas: AsyncIterator[Delta]) -> Completion:
    """A stream gathered into one completion, timing its first text (for the engines that
    always stream internally: their unary generate is their stream, collected)."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    last = Delta("")
    async for delta in deltas:
        if delta.text:
            if first is None:
                first = time.perf_counter() - start
            parts.append(delta.text)
        if delta.finish is not None:
            last = delta
    total = time.perf_counter() - start
    return Completion(
        text="".join(parts),
        finish=last.finish or "end_of_sequence",
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        time_to_first_token_s=first if first is not None else total,
        total_s=total,
    )


@runtime_checkable
class Engine(Protocol):
    """A serving backend (see the module docstring)."""

    kind: str
    """``llama_cpp``, ``openai``, ``triton``, ``trtllm``, ``onnx``."""
    endpoint: str
    """Where it runs ("" for in-process)."""

    async def generate(self, request: EngineRequest) -> Completion: ...

    def stream(self, request: EngineRequest) -> AsyncIterator[Delta]:
        """Deltas as the model produces them; closing the iterator cancels generation."""
        ...

    async def count_tokens(self, model: str, text: str) -> int: ...

    async def health(self) -> EngineHealth: ...

    async def close(self) -> None: ...
