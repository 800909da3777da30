"""Service plug-ins: how a service package tells the runtime what it is.

Each service declares one :class:`ServicePlugin` (in ``services/<name>/plugin.py``) and
registers it under the ``llmops.services`` entry-point group in ``pyproject.toml``::

    [project.entry-points."llmops.services"]
    feature = "services.feature.plugin:PLUGIN"

That line is the only place outside the service's folder (and its proto) that names it. The
runtime discovers the plug-ins, builds the config section of each from its settings model,
serves its bindings, runs its periodic tasks and watches its files, and builds typed clients
for it from the generated stubs: it never imports a service by name. A plug-in module must
stay light (settings and metadata only): the heavy ``factory`` module is imported only when
the service is started.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llmops.settings import Settings

if TYPE_CHECKING:
    from llmops.server.context import ServiceContext, ServiceDefinition

PROTO_PACKAGE = "llmops.v1"
ADMIN_SERVICE = f"{PROTO_PACKAGE}.AdminService"
ENTRY_POINT_GROUP = "llmops.services"

Backend = Literal["clickhouse", "events", "redis", "opa", "state_dir"]
"""Shared resources a service may use. ``ctx.backends`` refuses the ones it did not declare."""


class ServiceFactory(Protocol):
    """``create(ctx)`` of a service: builds its domain and returns what the runtime serves."""

    def __call__(self, ctx: ServiceContext[Any]) -> ServiceDefinition: ...


class NoSettings(Settings):
    """The settings of a service that has none yet."""


class PluginError(Exception):
    """A plug-in is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class ServicePlugin:
    """What a service declares, in one place."""

    name: str
    """Short name: the package under ``services/``, the key under ``services:`` in config."""
    ports: tuple[int, int]
    """Default gRPC port and HTTP admin port (Prometheus ``/metrics``)."""
    summary: str
    proto_service: str = ""
    """Short name of the main protobuf service (default: ``<Name>Service``); its admin
    service is ``<Name>AdminService``."""
    factory: str = ""
    """``module:function`` of the service's ``create(ctx)``, imported when it starts
    (default: ``services.<name>.service:create``)."""
    settings: type[Settings] = NoSettings
    """The service's settings model: a config section of its own."""
    settings_key: str = ""
    """Top-level config key of the settings (default: ``name``)."""
    backends: frozenset[Backend] = field(default_factory=frozenset)
    """The shared backends the service uses (checked: ``ctx.backends`` refuses others)."""

    def __post_init__(self) -> None:
        if not self.proto_service:
            object.__setattr__(self, "proto_service", f"{self.name.capitalize()}Service")
        if not self.factory:
            object.__setattr__(self, "factory", f"services.{self.name}.service:create")

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def admin_port(self) -> int:
        return self.ports[1]

    @property
    def config_key(self) -> str:
        return self.settings_key or self.name

    @property
    def grpc_service(self) -> str:
        """Fully qualified main service name, as used by the gRPC health protocol."""
        return f"{PROTO_PACKAGE}.{self.proto_service}"

    @property
    def grpc_admin_service(self) -> str:
        """Fully qualified service-specific admin service name."""
        return f"{PROTO_PACKAGE}.{self.proto_service.removesuffix('Service')}AdminService"

    @property
    def proto_services(self) -> tuple[str, str]:
        return (self.grpc_service, self.grpc_admin_service)

    def load_factory(self) -> ServiceFactory:
        """Import the factory module (lazily: only services that start pay for it)."""
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory: ServiceFactory = getattr(module, attr or "create")
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"service {self.name}: cannot load {self.factory}: {exc}") from exc
        return factory


def check_plugins(plugins: Iterable[ServicePlugin]) -> dict[str, ServicePlugin]:
    """Index plug-ins by name (ordered by port), refusing clashes that would break the mesh."""
    by_name: dict[str, ServicePlugin] = {}
    keys: dict[str, str] = {}
    for plugin in sorted(plugins, key=lambda p: (p.port, p.name)):
        if plugin.name in by_name:
            raise PluginError(f"two plug-ins are named {plugin.name!r}")
        other = keys.setdefault(plugin.config_key, plugin.name)
        if other != plugin.name:
            raise PluginError(
                f"services {other} and {plugin.name} both use the config key {plugin.config_key!r}"
            )
        by_name[plugin.name] = plugin
    return by_name


def discover() -> dict[str, ServicePlugin]:
    """The installed plug-ins (entry-point group ``llmops.services``), by name."""
    found: list[ServicePlugin] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"entry point {ep.name} = {ep.value}: cannot load: {exc}") from exc
        if not isinstance(plugin, ServicePlugin) or plugin.name != ep.name:
            raise PluginError(
                f"entry point {ep.name} = {ep.value}: not a ServicePlugin named {ep.name!r}"
            )
        found.append(plugin)
    if not found:
        raise PluginError(
            f"no llmops services are installed (entry-point group {ENTRY_POINT_GROUP!r}): "
            "install the project, e.g. `pip install -e .`"
        )
    return check_plugins(found)
