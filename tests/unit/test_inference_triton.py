"""The Triton (TensorRT-LLM) engine's client path without a Triton server (none can run on
this machine, and TensorRT-LLM needs a GPU): a stand-in of tritonclient's aio client checks
the request the engine builds — model, tensor names, types, shapes and values, the decoupled
streaming API — and answers as a decoupled TensorRT-LLM ensemble does: one response per
decoding step, then an empty final response. Errors map to the platform's codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from llmops.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.inference.engine import ChatTurn, EngineRequest, Sampling

pytest.importorskip("tritonclient.grpc.aio", reason="the triton extra is not installed")
from services.inference.engines.triton_llm import TritonLLMEngine


class Param:
    def __init__(self, value: bool) -> None:
        self.bool_param = value


class Response:
    def __init__(self, final: bool) -> None:
        self.parameters = {"triton_final_response": Param(final)}


class Result:
    def __init__(self, text: str | None, final: bool) -> None:
        self.text = text
        self.final = final

    def as_numpy(self, name: str) -> np.ndarray | None:
        assert name == "text_output"
        return None if self.text is None else np.array([[self.text.encode()]], dtype=object)

    def get_response(self) -> Response:
        return Response(self.final)


class TritonError(Exception):
    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self._status = status

    def status(self) -> str:
        return self._status


class FakeTriton:
    """Answers ModelStreamInfer like a decoupled TensorRT-LLM ensemble."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.requests: list[dict[str, Any]] = []
        self.fail: TritonError | None = None
        self.cancelled = 0

    def stream_infer(self, inputs_iterator: AsyncIterator[dict[str, Any]],
                     stream_timeout: float | None = None) -> Any:  # fmt: skip
        fake = self

        class Stream:
            def __aiter__(self) -> AsyncIterator[tuple[Result | None, Exception | None]]:
                return self._run()

            async def _run(self) -> AsyncIterator[tuple[Result | None, Exception | None]]:
                async for request in inputs_iterator:
                    tensors = {t.name(): t for t in request["inputs"]}
                    fake.requests.append({**request, "tensors": tensors, "timeout": stream_timeout})
                    if fake.fail is not None:
                        yield None, fake.fail
                        return
                    values = {n: _value(t) for n, t in tensors.items()}
                    n = min(int(values["max_tokens"]), len(fake.words))
                    if values["stream"]:
                        for word in fake.words[:n]:
                            yield Result(word, False), None
                        yield Result(None, True), None  # the empty final response
                    else:
                        yield Result("".join(fake.words[:n]), True), None

            def cancel(self) -> None:
                fake.cancelled += 1

        return Stream()


def _value(tensor: Any) -> Any:
    """A [1, 1] tensor's value, decoded from what goes on the wire."""
    shape, datatype = tensor.shape(), tensor.datatype()
    assert shape == [1, 1], (tensor.name(), shape)
    raw = tensor._get_content()
    if datatype == "BYTES":
        return raw[4:].decode()  # 4-byte length prefix, then the bytes
    dtype = {"INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_}
    return np.frombuffer(raw, dtype=dtype[datatype])[0]


WORDS = [" Sunny", " flat", " near", " the", " beach", ".", " Book", " now"]


def request(**sampling: Any) -> EngineRequest:
    return EngineRequest(
        model="ensemble",
        sampling=Sampling(**{"max_tokens": 8, **sampling}),
        messages=(ChatTurn("user", "Describe a flat in Nice."),),
        timeout_s=5,
        request_id="r-1",
    )


async def test_the_request_is_what_a_tensorrt_llm_ensemble_takes() -> None:
    fake = FakeTriton(WORDS)
    engine = TritonLLMEngine("triton:8001", client=fake)
    done = await engine.generate(request(temperature=0.3, top_k=5, seed=9))
    assert done.text == "".join(WORDS)
    (sent,) = fake.requests
    assert sent["model_name"] == "ensemble" and sent["request_id"] == "r-1"
    assert sent["timeout"] == 5
    types = {n: t.datatype() for n, t in sent["tensors"].items()}
    assert types == {
        "text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL", "temperature": "FP32",
        "top_p": "FP32", "repetition_penalty": "FP32", "presence_penalty": "FP32",
        "frequency_penalty": "FP32", "beam_width": "INT32", "runtime_top_k": "INT32",
        "random_seed": "UINT64",
    }  # fmt: skip
    values = {n: _value(t) for n, t in sent["tensors"].items()}
    assert values["text_input"] == "user: Describe a flat in Nice.\nassistant:"
    assert values["stream"] == False  # noqa: E712 - a numpy bool
    assert (values["max_tokens"], values["runtime_top_k"], values["random_seed"]) == (8, 5, 9)
    assert abs(values["temperature"] - 0.3) < 1e-6


async def test_a_stream_is_one_delta_per_step_and_stop_strings_are_cut() -> None:
    fake = FakeTriton(WORDS)
    engine = TritonLLMEngine("triton:8001", client=fake)
    deltas = [d async for d in engine.stream(request())]
    assert "".join(d.text for d in deltas) == "".join(WORDS)
    assert (deltas[-1].finish, deltas[-1].completion_tokens) == ("length", 8)
    deltas = [d async for d in engine.stream(request(stop=(" beach",)))]
    assert "".join(d.text for d in deltas) == " Sunny flat near the"
    assert deltas[-1].finish == "stop_sequence" and fake.cancelled >= 1  # the request ends


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.INVALID_ARGUMENT", InvalidArgument),
        ("StatusCode.NOT_FOUND", FailedPrecondition),
    ],
)
async def test_errors_map_to_platform_codes(status: str, error: type[Exception]) -> None:
    fake = FakeTriton(WORDS)
    fake.fail = TritonError("model 'ensemble' is not ready", status)
    engine = TritonLLMEngine("triton:8001", client=fake)
    with pytest.raises(error, match="triton at triton:8001"):
        await engine.generate(request())
    with pytest.raises(InvalidArgument, match="min_tokens"):
        await engine.generate(request(min_tokens=2))
