"""The operator side of the routes: the table in force, models with their state, reloads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from google.protobuf import timestamp_pb2

from llmops.errors import InvalidArgument, LLMOpsError
from llmops.v1 import common_pb2, inference_pb2
from llmops.yamlfiles import HotReload
from services.inference.config import Serving
from services.inference.engines.registry import EngineRegistry
from services.inference.models import ModelVersions
from services.inference.routes import EngineSpec, RouteTable

T = TypeVar("T")
log = structlog.get_logger("llmops.inference")
MAX_PAGE = 1000
BACKENDS = {
    "llama_cpp": inference_pb2.MODEL_BACKEND_LOCAL,
    "openai": inference_pb2.MODEL_BACKEND_OPENAI_COMPATIBLE,
    "triton": inference_pb2.MODEL_BACKEND_TRITON,
    "trtllm": inference_pb2.MODEL_BACKEND_TENSORRT_LLM,
    "onnx": inference_pb2.MODEL_BACKEND_LOCAL,  # ONNX Runtime in-process
}


@dataclass(frozen=True, slots=True)
class ReloadReport:
    previous_revision: str
    revision: str
    route_count: int
    task_count: int
    changed: list[str]


class RouteAdmin:
    def __init__(
        self, serving: HotReload[Serving], engines: EngineRegistry, versions: ModelVersions
    ) -> None:
        self.serving = serving
        self.engines = engines
        self.versions = versions

    @property
    def table(self) -> RouteTable:
        return self.serving.current.routes

    @property
    def revision(self) -> str:
        """Of the routes and tasks in force together (what ReloadRoutes reports)."""
        return self.serving.current.revision

    @staticmethod
    def page(items: Sequence[T], size: int, token: str) -> tuple[list[T], str]:
        """Offset pagination: ``token`` is the offset the previous page ended at."""
        if size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        size = min(size or 100, MAX_PAGE)
        try:
            start = int(token) if token else 0
        except ValueError:
            raise InvalidArgument("page_token", "not a token of this list") from None
        if start < 0 or start > len(items):
            raise InvalidArgument("page_token", "not a token of this list")
        end = start + size
        return list(items[start:end]), str(end) if end < len(items) else ""

    async def reload(self, *, dry_run: bool) -> ReloadReport:
        done = await self.serving.reload(dry_run=dry_run)
        if done.applied:
            await self.apply(done.candidate.routes)
        return ReloadReport(
            previous_revision=done.previous_revision,
            revision=done.revision,
            route_count=len(done.candidate.routes.routes),
            task_count=len(done.candidate.tasks.tasks),
            changed=done.candidate.routes.changed(done.previous.routes),
        )

    async def apply(self, table: RouteTable) -> None:
        """Bring the engine instances in line with ``table`` (after it is in force)."""
        retired = self.engines.update(table.engines)
        await asyncio.gather(*(engine.close() for engine in retired))

    def _ranker_state(self, name: str, spec: EngineSpec) -> inference_pb2.ModelState.ValueType:
        """An onnx engine's model loads on first use: loading it here says whether it can."""
        try:
            self.engines.ranker(name, spec)
        except LLMOpsError as exc:
            log.warning("ranker_unavailable", engine=name, reason=str(exc))
            return inference_pb2.MODEL_STATE_UNAVAILABLE
        return inference_pb2.MODEL_STATE_READY

    async def models(self) -> list[inference_pb2.ModelInfo]:
        """One entry per (engine, model) a route targets, with the engine's health."""
        table = self.table
        healths = dict(
            zip(
                [n for n, _, _ in self.engines.items()],
                await asyncio.gather(*(e.health() for _, _, e in self.engines.items())),
                strict=True,
            )
        )
        seen: dict[tuple[str, str], inference_pb2.ModelInfo] = {}
        for route in table.routes.values():
            for t in route.targets:
                key = (t.engine, t.model)
                info = seen.get(key)
                if info is None:
                    spec = table.engines[t.engine]
                    health = healths.get(t.engine)
                    served = t.served_model or t.model
                    engine_model = next(
                        (
                            m
                            for m in (health.models if health else ())
                            if m.name in (served, t.engine)
                        ),
                        None,
                    )
                    ref = await self.versions.ref(t.model, t.version, t.alias)
                    if spec.backend == "onnx":
                        state = self._ranker_state(t.engine, spec)
                    elif health is None or not health.ready:
                        state = (
                            inference_pb2.MODEL_STATE_UNAVAILABLE
                            if spec.backend != "llama_cpp"
                            else inference_pb2.MODEL_STATE_UNLOADED
                        )
                    else:
                        state = inference_pb2.MODEL_STATE_READY
                    info = inference_pb2.ModelInfo(
                        model=common_pb2.ModelRef(
                            name=ref.name, version=ref.version, alias=ref.alias
                        ),
                        backend=BACKENDS[spec.backend],
                        endpoint=spec.base_url,
                        state=state,
                        max_input_tokens=engine_model.max_context_tokens if engine_model else 0,
                        max_output_tokens=engine_model.max_output_tokens if engine_model else 0,
                        max_batch_size=engine_model.max_batch_size if engine_model else 0,
                        device=engine_model.device if engine_model else "",
                        precision=engine_model.precision if engine_model else "",
                    )
                    if engine_model is not None and engine_model.load_time:
                        info.load_time.CopyFrom(_timestamp(engine_model.load_time))
                    seen[key] = info
                if route.name not in info.routes:
                    info.routes.append(route.name)
        return [seen[k] for k in sorted(seen)]


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch_s * 1e9))
    return ts
