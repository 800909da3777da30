"""Micro-batching of concurrent embed calls.

One forward pass over 32 texts costs little more than over one, so concurrent callers are
served together: a request joins the batch being gathered; a batch closes when it holds
``max_batch`` texts or when its first request has waited ``max_wait_s``, and runs on the
encoder's own thread (onnxruntime releases the GIL) while the next batch gathers. A request
is never split (the contract caps one at 256 texts); the number of texts waiting is bounded
(``max_pending``: RESOURCE_EXHAUSTED beyond it, never an unbounded queue). Vectors are
computed un-normalised and normalised per request, so callers asking either way share a
batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llmops.errors import FailedPrecondition, ResourceExhausted
from services.embedding.encoder import AsyncEncoder, Encoded, Encoder, l2_normalize


@dataclass(frozen=True, slots=True)
class Embedded:
    """One request's share of a batch."""

    vectors: np.ndarray
    tokens: list[int]
    truncated: list[bool]
    queue_ms: float
    """From the request joining to its batch starting."""
    total_ms: float
    batch_texts: int
    """Texts in the forward pass that served it."""


@dataclass(slots=True)
class _Waiting:
    texts: Sequence[str]
    normalize: bool
    future: asyncio.Future[Embedded]
    joined: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Batches :meth:`embed` calls onto one encoder (see the module docstring)."""

    def __init__(
        self,
        encoder: Encoder | AsyncEncoder,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        max_pending: int = 4096,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait_s >= 0")
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._pending = 0
        self._runner: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.batches = 0
        self.texts = 0

    async def embed(self, texts: Sequence[str], *, normalize: bool) -> Embedded:
        if self._runner is None or self._runner.done():
            if self._runner is not None:
                raise FailedPrecondition("the embedding batcher is closed")
            self._runner = asyncio.create_task(self._run(), name="embed-batcher")
        if self._pending + len(texts) > self.max_pending:
            raise ResourceExhausted(
                f"embedding queue full: {self._pending} texts waiting (limit "
                f"{self.max_pending}); retry later"
            )
        waiting = _Waiting(texts, normalize, asyncio.get_running_loop().create_future())
        self._pending += len(texts)
        self._queue.put_nowait(waiting)
        return await waiting.future

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        while not self._queue.empty():
            left = self._queue.get_nowait()
            if not left.future.done():
                left.future.set_exception(FailedPrecondition("the embedding service is stopping"))
        self._pool.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            deadline = batch[0].joined + self.max_wait_s
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                batch.append(nxt)
                size += len(nxt.texts)
            texts = [t for w in batch for t in w.texts]
            started = time.perf_counter()
            try:
                if isinstance(self.encoder, AsyncEncoder):  # a network call: awaited here
                    out = await self.encoder.aencode(texts, normalize=False)
                else:  # a CPU-bound forward pass: on the encoder's own thread
                    out = await loop.run_in_executor(self._pool, self._encode, texts)
            except Exception as exc:  # each caller sees the failure of its batch
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            finally:
                self._pending -= size
            self.batches += 1
            self.texts += size
            self._deliver(batch, out, started)

    def _encode(self, texts: list[str]) -> Encoded:
        assert not isinstance(self.encoder, AsyncEncoder)
        return self.encoder.encode(texts, normalize=False)

    def _deliver(self, batch: list[_Waiting], out: Encoded, started: float) -> None:
        done = time.perf_counter()
        at = 0
        for w in batch:
            n = len(w.texts)
            vectors = out.vectors[at : at + n]
            if w.normalize:
                vectors = l2_normalize(vectors)
            if not w.future.done():  # a caller that went away (cancelled) is skipped
                w.future.set_result(
                    Embedded(
                        vectors=vectors,
                        tokens=out.tokens[at : at + n],
                        truncated=out.truncated[at : at + n],
                        queue_ms=(started - w.joined) * 1000,
                        total_ms=(done - w.joined) * 1000,
                        batch_texts=len(out.tokens),
                    )
                )
            at += n
