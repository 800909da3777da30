"""The production GPU path: a TensorRT-LLM model served by Triton Inference Server, called
through tritonclient's gRPC **aio** client.

The model is the TensorRT-LLM backend's ``ensemble`` (or ``tensorrt_llm_bls``) as
``deploy/triton/trtllm/README.md`` describes: inputs ``text_input`` (BYTES [1,1]),
``max_tokens`` (INT32), ``stream`` (BOOL), the sampling tensors (``temperature``, ``top_p``,
``runtime_top_k``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``,
``random_seed``, ``beam_width``, ``stop_words``), output ``text_output`` (BYTES).

Streaming only works with a **decoupled** model (``model_transaction_policy { decoupled:
true }``): Triton then answers one request with many responses over the bidirectional
``ModelStreamInfer`` stream — the trap tensorrtllm_backend#70/#268/#626 report (a decoupled
model refuses unary ``infer``; a non-decoupled one cannot stream). So this engine always
talks to a decoupled model through ``stream_infer``: ``stream`` true for GenerateStream, false
for Generate (one response). Each streamed response is one step's new text; the final one
carries Triton's ``triton_final_response`` parameter. Stop strings are cut by the service
(``StopMatcher``), as for every backend.

Triton's ensemble reports no token counts: completion tokens are the streamed responses (one
per decoding step with ``stream``), prompt tokens are not known (0) unless the model returns
an ``input_lengths``-style output; say so when comparing costs.

No Triton server (and no GPU) can run on the machine this was written on: the client path is
tested against an in-process stand-in of tritonclient's aio client
(``tests/unit/test_inference_triton.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from llmops.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.inference.engine import (
    Completion,
    Delta,
    EngineHealth,
    EngineModel,
    EngineRequest,
    Finish,
)
from services.inference.stops import StopMatcher

DEFAULT_MODEL = "ensemble"


def _triton() -> Any:
    try:
        import tritonclient.grpc.aio as triton  # type: ignore[import-untyped]
    except ImportError:
        raise FailedPrecondition(
            "a triton engine needs tritonclient: bash scripts/install.sh '.[triton]'"
        ) from None
    return triton


_DTYPES: dict[str, Any] = {"INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32,
                           "BOOL": np.bool_}  # fmt: skip


def _tensor(name: str, value: Any, datatype: str) -> Any:
    """A [1, 1] input tensor (the TensorRT-LLM ensemble's shapes, batch of one request)."""
    triton = _triton()
    if datatype == "BYTES":
        array = np.array([[str(value).encode()]], dtype=object)
    else:
        array = np.array([[value]], dtype=_DTYPES[datatype])
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


class TritonLLMEngine:
    kind = "triton"

    def __init__(self, url: str, *, client: Any = None, timeout_s: float = 60.0) -> None:
        """``url``: Triton's gRPC endpoint (``host:8001``)."""
        self.endpoint = url
        self.timeout_s = timeout_s
        self._client = client

    def _ensure_client(self) -> Any:
        if self._client is None:
            self._client = _triton().InferenceServerClient(url=self.endpoint)
        return self._client

    def _inputs(self, request: EngineRequest, *, stream: bool) -> list[Any]:
        if request.messages is not None:
            # TensorRT-LLM's ensemble takes text: the chat as a plain transcript (a BLS model
            # with the model's chat template is the place for proper formatting).
            text = "\n".join(f"{t.role}: {t.content}" for t in request.messages) + "\nassistant:"
        else:
            text = request.prompt or ""
        s = request.sampling
        if s.min_tokens:
            raise InvalidArgument("sampling.min_tokens", "the triton backend does not support it")
        tensors = [
            _tensor("text_input", text, "BYTES"),
            _tensor("max_tokens", s.max_tokens, "INT32"),
            _tensor("stream", stream, "BOOL"),
            _tensor("temperature", s.temperature, "FP32"),
            _tensor("top_p", s.top_p, "FP32"),
            _tensor("repetition_penalty", s.repetition_penalty, "FP32"),
            _tensor("presence_penalty", s.presence_penalty, "FP32"),
            _tensor("frequency_penalty", s.frequency_penalty, "FP32"),
            _tensor("beam_width", 1, "INT32"),
        ]
        if s.top_k:
            tensors.append(_tensor("runtime_top_k", s.top_k, "INT32"))
        if s.seed is not None:
            tensors.append(_tensor("random_seed", s.seed, "UINT64"))
        return tensors

    async def _responses(self, request: EngineRequest, *, stream: bool) -> AsyncIterator[str]:
        """The text of each response Triton sends for one request (decoupled model)."""
        client = self._ensure_client()
        triton = _triton()
        model = request.model or DEFAULT_MODEL
        inputs = self._inputs(request, stream=stream)
        outputs = [triton.InferRequestedOutput("text_output")]

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model, "inputs": inputs, "outputs": outputs,
                "request_id": request.request_id or uuid.uuid4().hex,
                "enable_empty_final_response": True,
            }  # fmt: skip

        timeout = request.timeout_s if request.timeout_s is not None else self.timeout_s
        responses = client.stream_infer(one_request(), stream_timeout=timeout)
        try:
            async for result, error in responses:
                if error is not None:
                    raise _mapped(error, self.endpoint)
                final = False
                params = result.get_response().parameters
                if "triton_final_response" in params:
                    final = params["triton_final_response"].bool_param
                data = result.as_numpy("text_output")
                if data is not None and data.size:
                    chunk = data.reshape(-1)[0]
                    yield chunk.decode() if isinstance(chunk, bytes) else str(chunk)
                if final:
                    return
        except Exception as exc:
            if isinstance(exc, (Unavailable, FailedPrecondition, InvalidArgument)):
                raise
            status = getattr(exc, "status", None)
            if callable(status):
                raise _mapped(exc, self.endpoint) from None
            raise
        finally:
            cancel = getattr(responses, "cancel", None)
            if callable(cancel):
                cancel()

    async def stream(self, request: EngineRequest) -> AsyncIterator[Delta]:
        stops = StopMatcher(request.sampling.stop)
        steps = 0
        finish: Finish = "end_of_sequence"
        deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        async for text in self._responses(request, stream=True):
            steps += 1
            released = stops.feed(text)
            if released:
                yield Delta(released)
            if stops.stopped is not None:
                finish = "stop_sequence"
                break
            if deadline is not None and time.monotonic() > deadline:
                finish = "timeout"  # closing the stream cancels the request in Triton
                break
        tail = stops.flush()
        if tail:
            yield Delta(tail)
        if finish == "end_of_sequence" and steps >= request.sampling.max_tokens:
            finish = "length"
        yield Delta("", finish=finish, prompt_tokens=0, completion_tokens=steps)

    async def generate(self, request: EngineRequest) -> Completion:
        start = time.perf_counter()
        parts = [text async for text in self._responses(request, stream=False)]
        text = "".join(parts)
        stops = StopMatcher(request.sampling.stop)
        cut = stops.feed(text) + stops.flush()
        total = time.perf_counter() - start
        return Completion(
            text=cut,
            finish="stop_sequence" if stops.stopped is not None else "end_of_sequence",
            prompt_tokens=0,
            completion_tokens=0,
            time_to_first_token_s=total,
            total_s=total,
        )

    async def count_tokens(self, model: str, text: str) -> int:
        """The ensemble has no tokenizer endpoint: an estimate (4 characters a token)."""
        return len(text) // 4 + 1

    async def health(self) -> EngineHealth:
        try:
            client = self._ensure_client()
            ready = bool(await client.is_server_ready())
        except Exception as exc:  # unreachable, or no client library
            return EngineHealth(ready=False, detail=f"triton at {self.endpoint}: {exc}"[:300])
        return EngineHealth(
            ready=ready,
            detail="" if ready else "server not ready",
            models=(EngineModel(name=DEFAULT_MODEL, ready=ready, device="cuda"),),
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close = getattr(client, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result


def _mapped(error: Any, endpoint: str) -> Exception:
    status = error.status() if callable(getattr(error, "status", None)) else ""
    message = f"triton at {endpoint}: {str(error)[:300]}"
    if status and any(s in str(status) for s in ("INVALID_ARG", "400")):
        return InvalidArgument("prompt", message)
    if status and any(s in str(status) for s in ("NOT_FOUND", "404", "FAILED_PRECONDITION")):
        return FailedPrecondition(message)
    return Unavailable(message)
