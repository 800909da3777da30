"""What the runtime hands a service (:class:`ServiceContext`) and what it gets back
(:class:`ServiceDefinition`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from google.protobuf import descriptor as _descriptor
from prometheus_client import CollectorRegistry

from llmops.config import MeshConfig, ServiceConfig
from llmops.errors import FailedPrecondition
from llmops.events.port import ServiceEvents
from llmops.plugin import Backend, ServicePlugin
from llmops.scheduler import Task
from llmops.settings import Settings

if TYPE_CHECKING:
    from llmops.backends import Backends
    from llmops.clickhouse.base import ClickHouseStore
    from llmops.clients import MeshClient
    from llmops.events.base import EventLog
    from llmops.events.publisher import EventPublisher

S = TypeVar("S", bound=Settings)


@dataclass(frozen=True, slots=True)
class Binding:
    """One protobuf service a server exposes, with the object implementing it."""

    descriptor: _descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


@dataclass(slots=True)
class ServiceDefinition:
    """What a service's ``create(ctx)`` hands to the runtime: everything it serves and runs."""

    bindings: list[Binding]
    tasks: list[Task] = field(default_factory=list)
    """Periodic, background and file-watch tasks (:mod:`llmops.scheduler`), started once the
    server serves, cancelled and awaited on stop."""
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run on the server's event loop before it accepts calls (connect, warm caches)."""
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run after the server stopped and its tasks ended (close clients and pools)."""


class ServiceBackends:
    """The shared backends a service declared in its plug-in, and only those."""

    def __init__(self, plugin: ServicePlugin, backends: Backends) -> None:
        self._plugin = plugin
        self._backends = backends

    def _check(self, backend: Backend) -> None:
        if backend not in self._plugin.backends:
            raise FailedPrecondition(
                f"service {self._plugin.name} uses backend {backend!r} without declaring it "
                f"in its plug-in (ServicePlugin.backends)"
            )

    @property
    def state_dir(self) -> Path:
        """Where the embedded backends keep this mesh's data."""
        self._check("state_dir")
        return self._backends.state_dir

    def clickhouse(self) -> ClickHouseStore:
        """The process's ClickHouse store (chdb embedded, the server in production)."""
        self._check("clickhouse")
        return self._backends.clickhouse()

    def event_publisher(self) -> EventPublisher:
        """The process's publisher, for :class:`~llmops.events.port.ServiceEvents` (services
        publish through ``ctx.events``)."""
        self._check("events")
        return self._backends.publisher()

    def event_log(self) -> EventLog:
        """The process's event log itself, for services that consume topics (the governance
        audit writer); producers publish through ``ctx.events``."""
        self._check("events")
        return self._backends.event_log()

    @property
    def redis_url(self) -> str:
        self._check("redis")
        return self._backends.config.backends.redis.url

    @property
    def opa_url(self) -> str:
        self._check("opa")
        return self._backends.config.backends.opa.url


@dataclass(frozen=True, slots=True)
class ServiceContext(Generic[S]):
    """What the runtime hands to a service package's ``create``."""

    plugin: ServicePlugin
    config: MeshConfig
    settings: S
    """The service's own config section (its plug-in's settings model)."""
    backends: ServiceBackends
    events: ServiceEvents
    """Publishing and the audit-event builder (:mod:`llmops.events.port`)."""
    clients: MeshClient
    """Typed clients of the other services: ``ctx.clients.stub(FeatureServiceStub)``."""
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    """The service's Prometheus registry (served on its admin port)."""

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def mode(self) -> str:
        """``embedded`` or ``production``."""
        return self.config.mode.value

    @property
    def service_config(self) -> ServiceConfig:
        return self.config.service(self.name)
