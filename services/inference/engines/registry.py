"""The engine instances behind the routes in force, built from their specs.

A reload that leaves an engine's spec unchanged keeps its instance (a loaded model is not
loaded again); a changed or removed engine is closed once the new table is in force.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from llmops.errors import FailedPrecondition, Unavailable
from services.inference.engine import Completion, Delta, Engine, EngineHealth, EngineRequest
from services.inference.engines.onnx_ranker import OnnxRanker
from services.inference.routes import REPO_ROOT, EngineSpec

log = structlog.get_logger("llmops.inference")


def build_engine(name: str, spec: EngineSpec) -> Engine:
    """An engine for ``spec``; client libraries are imported here, lazily, per backend."""
    if spec.backend == "llama_cpp":
        from services.inference.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine

        return LlamaCppEngine(
            name,
            LlamaCppConfig(
                gguf=spec.gguf,
                context_tokens=spec.context_tokens,
                parallel=spec.parallel,
                decode_threads=spec.decode_threads,
                prefill_threads=spec.prefill_threads,
                max_output_tokens=spec.max_output_tokens,
            ),
        )
    if spec.backend == "openai":
        from services.inference.engines.openai_compat import OpenAIEngine

        return OpenAIEngine(
            spec.base_url,
            api_key=os.environ.get(spec.api_key_env, "") if spec.api_key_env else "",
            max_connections=spec.max_connections,
        )
    if spec.backend == "triton":
        from services.inference.engines.triton_llm import TritonLLMEngine

        return TritonLLMEngine(spec.base_url)
    if spec.backend == "trtllm":
        from services.inference.engines.trtllm import TrtLlmEngine

        return TrtLlmEngine(name, spec.engine_dir)
    if spec.backend == "onnx":
        raise FailedPrecondition(
            f"engine {name}: an onnx engine scores candidates (a task's rank step), it does "
            "not generate text"
        )
    raise FailedPrecondition(
        f"engine {name}: the {spec.backend} backend is not available in this build "
        "(services/inference/README.md: backends)"
    )


class EngineRegistry:
    """Engine instances by name, rebuilt only when their spec changes."""

    def __init__(self) -> None:
        self._engines: dict[str, tuple[EngineSpec, Engine]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._rankers: dict[str, tuple[EngineSpec, OnnxRanker]] = {}

    def get(self, name: str, spec: EngineSpec) -> Engine:
        """The instance for ``spec``: built on first use and whenever the spec changed (a
        reload by the file watch), the replaced one closed in the background."""
        current = self._engines.get(name)
        if current is not None and current[0] == spec:
            return current[1]
        engine = self._build(name, spec)
        self._engines[name] = (spec, engine)
        if current is not None:
            task = asyncio.get_running_loop().create_task(current[1].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return engine

    @staticmethod
    def _build(name: str, spec: EngineSpec) -> Engine:
        try:
            return build_engine(name, spec)
        except FailedPrecondition as exc:  # e.g. triton here: the route answers UNAVAILABLE
            log.warning("engine_unavailable", engine=name, reason=str(exc))
            return _Unavailable(name, spec, str(exc))

    def ranker(self, name: str, spec: EngineSpec) -> OnnxRanker:
        """The tabular model of an ``onnx`` engine, loaded on first use (and again when its
        spec changes)."""
        if spec.backend != "onnx":
            raise FailedPrecondition(f"engine {name!r} is a {spec.backend} engine, not a ranker")
        current = self._rankers.get(name)
        if current is not None and current[0] == spec:
            return current[1]
        path = Path(spec.model_dir)
        ranker = OnnxRanker(
            path if path.is_absolute() else REPO_ROOT / path,
            intra_op_threads=spec.intra_op_threads,
        )
        self._rankers[name] = (spec, ranker)
        return ranker

    def items(self) -> list[tuple[str, EngineSpec, Engine]]:
        return [(n, s, e) for n, (s, e) in sorted(self._engines.items())]

    def update(self, specs: dict[str, EngineSpec]) -> list[Engine]:
        """Make the instances match ``specs``; returns the engines to close (replaced or
        removed), for the caller to close once nothing routes to them."""
        retired: list[Engine] = []
        fresh: dict[str, tuple[EngineSpec, Engine]] = {}
        for name, spec in specs.items():
            if spec.backend == "onnx":
                continue  # rankers load on first use (self.ranker)
            current = self._engines.get(name)
            if current is not None and current[0] == spec:
                fresh[name] = current
                continue
            fresh[name] = (spec, self._build(name, spec))
            if current is not None:
                retired.append(current[1])
        retired += [e for n, (_, e) in self._engines.items() if n not in specs]
        self._engines = fresh
        return retired


class _Unavailable:
    """An engine whose backend cannot run in this build: every call is UNAVAILABLE (so a
    route's fallback is tried), and ListModels says why."""

    def __init__(self, name: str, spec: EngineSpec, reason: str) -> None:
        self.kind: str = spec.backend
        self.name = name
        self.endpoint = spec.base_url
        self.reason = reason

    async def generate(self, request: EngineRequest) -> Completion:
        raise Unavailable(self.reason)

    async def stream(self, request: EngineRequest) -> AsyncIterator[Delta]:
        raise Unavailable(self.reason)
        yield Delta("")  # an async generator, like every engine's stream

    async def count_tokens(self, model: str, text: str) -> int:
        raise Unavailable(self.reason)

    async def health(self) -> EngineHealth:
        return EngineHealth(ready=False, detail=self.reason)

    async def close(self) -> None:
        return None
