"""What the inference service's unit tests share: the service's own Generation over routes
and tasks files, with an in-memory event port, and the closing of the engines they built."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmops.events.port import ServiceEvents
from llmops.v1 import events_pb2
from llmops.yamlfiles import HotReload
from services.inference.config import Serving, load_serving
from services.inference.engines.registry import EngineRegistry
from services.inference.generation import Generation
from services.inference.metrics import InferenceMetrics
from services.inference.models import ModelVersions


class Events:
    """The event publisher, in memory: what was published, and always room."""

    def __init__(self) -> None:
        self.published: list[events_pb2.EventEnvelope] = []

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        self.published.append(envelope)

    def has_room(self, count: int) -> bool:
        return True


OPEN_ENGINES: list[EngineRegistry] = []


@pytest.fixture(autouse=True)
async def close_engines() -> AsyncIterator[None]:
    """Close the HTTP sessions of the engines a test built (import it into the module)."""
    yield
    while OPEN_ENGINES:
        for _, _, engine in OPEN_ENGINES.pop().items():
            await engine.close()


def serving(routes: Sequence[Path], tasks: Sequence[Path] = ()) -> HotReload[Serving]:
    return HotReload[Serving](
        "routes", lambda: load_serving(list(routes), list(tasks)), lambda s: s.revision
    )


def generation(config: HotReload[Serving], **kw: Any) -> tuple[Generation, ServiceEvents, Events]:
    """The service's Generation on ``config`` (its engines closed after the test), its
    event port and what was published through it."""
    engines = EngineRegistry()
    engines.update(config.current.routes.engines)
    OPEN_ENGINES.append(engines)
    events = Events()
    port = ServiceEvents("inference", lambda: events)  # type: ignore[arg-type, return-value]
    built = Generation(
        config, engines, ModelVersions(None, 30), port, InferenceMetrics(CollectorRegistry()), **kw
    )
    return built, port, events
