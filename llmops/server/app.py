"""Server bootstrap shared by every service: one gRPC server per service, on uvloop.

A service's plug-in (:mod:`llmops.plugin`) names its ``create(ctx) -> ServiceDefinition``:
the servicers it registers and the tasks it runs. Everything else — the interceptor
pipeline, health, reflection, the common ``AdminService``, the Prometheus admin port, the
task scheduler, graceful drain — is done here, the same way for every service, whether it
runs alone (production) or beside the others (embedded).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from google.protobuf import descriptor as _descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

import llmops
from llmops.backends import Backends
from llmops.clients import MeshClient
from llmops.config import MeshConfig, Mode, ServerConfig
from llmops.errors import FailedPrecondition, InvalidArgument, NotImplementedYet
from llmops.events.port import ServiceEvents
from llmops.identity import system
from llmops.local_calls import LocalServers
from llmops.mesh import ADMIN_SERVICE, SERVICES
from llmops.plugin import ServiceFactory, ServicePlugin
from llmops.scheduler import Scheduler
from llmops.security import INSECURE, ServerSecurity, client_security, server_security
from llmops.security.tokens import TokenStore
from llmops.server.access_log import AccessLog
from llmops.server.auth import AuthzPolicy, CallGuard
from llmops.server.context import (
    Binding,
    ServiceBackends,
    ServiceContext,
    ServiceDefinition,
)
from llmops.server.interceptor import (
    GenericHandler,
    RpcMetrics,
    RuntimeInterceptor,
    ServerState,
)
from llmops.server.metrics_http import MetricsServer, needs_token
from llmops.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from llmops.observability import Observability

log = structlog.get_logger("llmops.server")


def pending_servicer(base: type[Any], descriptor: _descriptor.ServiceDescriptor, owner: str) -> Any:
    """A servicer whose every RPC answers UNIMPLEMENTED, naming the RPC and what will build it.

    Used for the parts of the v1 contract whose implementation has not landed yet: an honest
    status, never a fake result.
    """

    def make(method: str) -> Callable[..., Awaitable[Any]]:
        async def rpc(self: Any, request: Any, context: Any) -> Any:
            raise NotImplementedYet(
                f"{descriptor.full_name}.{method} is not implemented yet: {owner}"
            )

        rpc.__name__ = method
        return rpc

    methods = {m.name: make(m.name) for m in descriptor.methods}
    return type(f"Pending{descriptor.name}", (base,), methods)()


def binding(pb2: Any, pb2_grpc: Any, service: str, servicer: Any) -> Binding:
    """A :class:`Binding` of ``servicer`` for ``service`` (short name, e.g. ``FeatureService``)."""
    return Binding(
        descriptor=pb2.DESCRIPTOR.services_by_name[service],
        add_to_server=getattr(pb2_grpc, f"add_{service}Servicer_to_server"),
        servicer=servicer,
    )


def pending_binding(pb2: Any, pb2_grpc: Any, service: str, owner: str) -> Binding:
    """A :class:`Binding` for ``service`` whose RPCs all answer UNIMPLEMENTED naming
    ``owner``, the work that will build them."""
    descriptor = pb2.DESCRIPTOR.services_by_name[service]
    servicer = pending_servicer(getattr(pb2_grpc, f"{service}Servicer"), descriptor, owner)
    return binding(pb2, pb2_grpc, service, servicer)


def pending_definition(
    pb2: Any, pb2_grpc: Any, plugin: ServicePlugin, owner: str
) -> ServiceDefinition:
    """A service whose main and admin services both answer UNIMPLEMENTED naming ``owner``."""
    return ServiceDefinition(
        bindings=[
            pending_binding(pb2, pb2_grpc, name.rpartition(".")[2], owner)
            for name in plugin.proto_services
        ]
    )


def paginate(items: list[Any], size: int, token: str, where: str = "") -> tuple[list[Any], str]:
    """Offset pagination over a sorted list for List RPCs: (items of the page, next token).

    ``size`` 0 means 100, at most 1000; the token is the next offset as text. ``where`` is
    the request path prefixed to the field names in errors (``request.page_token``).
    """
    prefix = f"{where}." if where else ""
    if size < 0:
        raise InvalidArgument(f"{prefix}page_size", "must not be negative")
    size = min(size or 100, 1000)
    try:
        start = int(token) if token else 0
    except ValueError:
        raise InvalidArgument(f"{prefix}page_token", "not a token this service issued") from None
    if not 0 <= start <= len(items):
        raise InvalidArgument(f"{prefix}page_token", "not a token this service issued")
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""


class MethodAwareReflection(reflection.aio.ReflectionServicer):  # type: ignore[name-defined,misc]
    """Server reflection that also finds the file of a method's full name
    (``llmops.v1.ExperimentService.Assign``): protobuf's upb descriptor pool resolves
    services and messages but not methods, and tools such as ghz ask for the method."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        parent = fully_qualified_name.rpartition(".")[0]
        if response.HasField("error_response") and parent in self._service_names:
            return super()._file_containing_symbol(request, parent)
        return response


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """The ``llmops.v1.AdminService`` every server exposes: identity, uptime, drain, resume.
    A drain and a resume are audited (``service.drain`` / ``service.resume``, the operator
    as actor, durable before the answer like every audit record of an RPC)."""

    def __init__(self, server: GrpcService) -> None:
        self._server = server

    def _audit(self, action: str, reason: str, after: dict[str, Any]) -> None:
        ctx = self._server.ctx
        if "events" not in ctx.plugin.backends:  # a service without events: the log line only
            return
        name = self._server.name
        envelope = ctx.events.audit_event(action, "service", name, reason=reason, after=after)
        ctx.events.publish_audit(envelope, f"{action} of {name} is applied")

    async def GetInfo(
        self, request: admin_pb2.GetInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetInfoResponse:
        return self._server.info()

    async def Drain(
        self, request: admin_pb2.DrainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.DrainResponse:
        timeout = request.timeout.ToTimedelta().total_seconds()
        log.warning(
            "drain_requested", service=self._server.name, reason=request.reason, timeout_s=timeout
        )
        start = time.monotonic()
        in_flight = await self._server.drain(timeout)
        reply = admin_pb2.DrainResponse(draining=True, in_flight=in_flight, drained=in_flight == 0)
        reply.waited.FromNanoseconds(int((time.monotonic() - start) * 1e9))
        self._audit("service.drain", request.reason, {
            "timeout_s": timeout, "in_flight": in_flight, "drained": in_flight == 0,
        })  # fmt: skip
        return reply

    async def Resume(
        self, request: admin_pb2.ResumeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResumeResponse:
        log.warning("resume_requested", service=self._server.name, reason=request.reason)
        was_draining = await self._server.resume()
        self._audit("service.resume", request.reason, {"was_draining": was_draining})
        return admin_pb2.ResumeResponse(was_draining=was_draining)


def server_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: explicit message sizes, streams per connection,
    connection age, and keepalive both ways (the server pings idle clients and refuses
    clients that ping too often)."""
    return [
        ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
        ("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000)),
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(cfg.min_client_ping_interval_s * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 2),
    ]


_MODES = {
    Mode.EMBEDDED: admin_pb2.SERVING_MODE_EMBEDDED,
    Mode.PRODUCTION: admin_pb2.SERVING_MODE_PRODUCTION,
}


class _WrappingRegistrar:
    """Stands in for the server in generated ``add_*Servicer_to_server`` functions and
    registers each servicer's handlers wrapped by the runtime pipeline."""

    def __init__(self, server: grpc.aio.Server, runtime: RuntimeInterceptor) -> None:
        self._server = server
        self._runtime = runtime
        self.handlers: list[GenericHandler] = []
        """Everything registered, wrapped: what local calls are served by."""

    def add_generic_rpc_handlers(self, handlers: Sequence[GenericHandler]) -> None:
        wrapped = tuple(self._runtime.wrap_generic_handler(h) for h in handlers)
        self.handlers.extend(wrapped)
        self._server.add_generic_rpc_handlers(wrapped)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        # grpc.aio serves from the generic handlers above; this call is a no-op there.
        return None


class GrpcService:
    """One service's gRPC server, health, reflection and admin port."""

    def __init__(
        self,
        definition: ServiceDefinition,
        ctx: ServiceContext[Any],
        access_log: AccessLog | None = None,
        security: ServerSecurity | None = None,
        authz: AuthzPolicy | None = None,
        local: LocalServers | None = None,
    ) -> None:
        """``security``: the credentials it serves with; None means plaintext without
        authentication (``security.insecure``). ``authz``: the authorisation policy, shared
        by the servers of one process (default: one of its own). ``local``: where it
        registers its listeners for in-process calls (:mod:`llmops.local_calls`)."""
        self.definition = definition
        self._local = local
        self._local_addresses: list[str] = []
        self.access_log = access_log
        self.security = security
        self._authz = authz
        self.ctx = ctx
        self.settings = ctx.service_config
        self.state = ServerState()
        self.registry = ctx.metrics
        self.scheduler = Scheduler(ctx.name, ctx.metrics)
        self.started_at: float | None = None
        self._health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._http: Any = None
        self._stopping = False
        self.grpc_service = ctx.plugin.grpc_service
        self.service_names = [b.full_name for b in definition.bindings] + [ADMIN_SERVICE]
        self.reflected_names = [
            *self.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        self._started_mono = 0.0

    @property
    def name(self) -> str:
        return self.ctx.name

    def security_summary(self) -> str:
        if self.security is None:
            return INSECURE
        if self.ctx.config.security.client_certificates == "require":
            return "mTLS + bearer tokens"
        return "TLS + bearer tokens"

    def info(self) -> admin_pb2.GetInfoResponse:
        info = admin_pb2.GetInfoResponse(
            service_name=self.grpc_service,
            version=llmops.__version__,
            git_revision=os.environ.get("LLMOPS_GIT_REVISION", ""),
            mode=_MODES[self.ctx.config.mode],
            listen_address=self.settings.address,
            admin_address=self.settings.admin_address(self.ctx.config.mode),
            metrics_address=(
                f"{self.settings.host}:{self.settings.admin_port}"
                if self.settings.admin_port
                else ""
            ),
            services=sorted(self.reflected_names),
            instance_id=f"{socket.gethostname()}:{os.getpid()}",
            draining=self.state.draining,
            security=self.security_summary(),
        )
        if self.started_at is not None:
            info.start_time.FromNanoseconds(int(self.started_at * 1e9))
            info.uptime.FromNanoseconds(int((time.monotonic() - self._started_mono) * 1e9))
        return info

    def _new_server(self) -> grpc.aio.Server:
        cfg = self.ctx.config.server
        return grpc.aio.server(
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs, options=server_options(cfg)
        )

    def _listed(self, admin_only: bool, admin_port: int) -> list[str]:
        """What reflection lists on a listener: its own services, health and reflection."""
        tooling = self.reflected_names[len(self.service_names) :]
        if not admin_port:
            return self.reflected_names
        admin = [n for n in self.service_names if n.endswith("AdminService")]
        main = [n for n in self.service_names if not n.endswith("AdminService")]
        return [*(admin if admin_only else main), *tooling]

    def _listen(self, server: grpc.aio.Server, address: str, key: str) -> None:
        try:
            if self.security is None:
                server.add_insecure_port(address)
            else:
                server.add_secure_port(
                    address,
                    grpc.ssl_server_credentials(
                        [(self.security.private_key, self.security.cert_chain)],
                        root_certificates=self.security.client_ca,
                        require_client_auth=self.ctx.config.security.client_certificates
                        == "require",
                    ),
                )
        except RuntimeError as exc:
            raise OSError(
                f"{self.name}: cannot listen on {address} ({key} in use?): {exc}"
            ) from None

    async def start(self) -> None:
        for hook in self.definition.on_start:
            await hook()
        guard = (
            CallGuard(self.security, self.registry, self._authz)
            if self.security is not None
            else None
        )
        metrics = RpcMetrics(self.registry)

        def pipeline() -> RuntimeInterceptor:  # one per listener: each caches its wrappers
            return RuntimeInterceptor(
                self.grpc_service, metrics, self.state, access_log=self.access_log, guard=guard
            )

        mode = self.ctx.config.mode
        admin_port = self.settings.admin_listener_port(mode)
        server = self._new_server()
        admin_server = self._new_server() if admin_port else server
        # Handlers are wrapped once, at registration (see RuntimeInterceptor).
        # The registrar does the registration part of grpc.aio.Server's interface.
        main_registrar = _WrappingRegistrar(server, pipeline())
        admin_wrapping = _WrappingRegistrar(admin_server, pipeline()) if admin_port else None
        registrar = cast(grpc.aio.Server, main_registrar)
        admin_registrar = (
            cast(grpc.aio.Server, admin_wrapping) if admin_wrapping is not None else registrar
        )
        for binding in self.definition.bindings:
            admin = binding.full_name.endswith("AdminService")
            binding.add_to_server(binding.servicer, admin_registrar if admin else registrar)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self), admin_registrar)
        listeners = [(server, registrar, self.settings.address, f"services.{self.name}.port")]
        local = [(self.settings.address, main_registrar)]
        if admin_wrapping is not None:
            local.append((self.settings.admin_address(mode), admin_wrapping))
        if admin_port:
            listeners.append(
                (admin_server, admin_registrar, self.settings.admin_address(mode),
                 f"services.{self.name}.admin_grpc_port")
            )  # fmt: skip
        for listener, listener_registrar, address, key in listeners:
            health_pb2_grpc.add_HealthServicer_to_server(self._health, listener_registrar)
            # Reflection goes through the pipeline too: it lists the API, so callers must
            # authenticate (any role the policy grants it may use it).
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                MethodAwareReflection(
                    self._listed(admin_only=listener is not server, admin_port=admin_port)
                ),
                listener_registrar,
            )
            self._listen(listener, address, key)
        if admin_port:
            await admin_server.start()
            self._admin_server = admin_server
        await server.start()
        self._server = server
        if self._local is not None:
            for address, wrapping in local:
                self._local.register(address, wrapping.handlers)
                self._local_addresses.append(address)
        if self.settings.admin_port:
            protect = needs_token(
                self.ctx.config.security.metrics_auth,
                self.settings.host,
                secure=self.security is not None,
            )
            try:
                self._http = MetricsServer(
                    self.registry,
                    self.settings.host,
                    self.settings.admin_port,
                    protect=protect,
                    tokens=self.security.tokens if self.security is not None else None,
                ).start()
            except OSError as exc:
                await server.stop(None)
                if self._admin_server is not None:
                    await self._admin_server.stop(None)
                raise OSError(
                    f"{self.name}: cannot serve metrics on {self.settings.host}:"
                    f"{self.settings.admin_port} (services.{self.name}.admin_port): {exc}"
                ) from None
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.scheduler.start(self.definition.tasks)
        log.info(
            "service_started",
            service=self.name,
            address=self.settings.address,
            metrics_port=self.settings.admin_port,
            mode=self.ctx.config.mode.value,
            tls=self.security is not None,
        )

    async def drain(self, wait_s: float) -> int:
        """Refuse new work (health NOT_SERVING, UNAVAILABLE), wait up to ``wait_s`` seconds
        for in-flight calls; return how many are still running."""
        self.state.draining = True
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.state.in_flight and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.idle.wait(), wait_s)
        return self.state.in_flight

    async def resume(self) -> bool:
        """Serve again after :meth:`drain` (health SERVING, calls accepted); whether it was
        draining. FailedPrecondition once :meth:`stop` has begun: a stopping server stays
        stopped."""
        if self._stopping:
            raise FailedPrecondition(f"{self.name} is shutting down; it cannot resume")
        was_draining = self.state.draining
        self.state.draining = False
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return was_draining

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight RPCs finish within ``grace`` seconds, then close."""
        if self._server is None:
            return
        self._stopping = True
        if self._local is not None:  # local callers go to the network, which refuses them
            for address in self._local_addresses:
                self._local.unregister(address)
            self._local_addresses.clear()
        await self._health.enter_graceful_shutdown()
        self.state.draining = True
        if self._admin_server is not None:
            await asyncio.gather(self._server.stop(grace), self._admin_server.stop(grace))
            self._admin_server = None
        else:
            await self._server.stop(grace)
        self._server = None
        await self.scheduler.stop()
        if self._http is not None:
            # shutdown() waits for serve_forever's next poll (up to 0.5 s): not on the loop.
            await asyncio.to_thread(self._http.shutdown)
            self._http.server_close()
            self._http = None
        for hook in self.definition.on_stop:
            await hook()
        log.info("service_stopped", service=self.name)


def build_context(
    plugin: ServicePlugin, config: MeshConfig, backends: Backends, clients: MeshClient
) -> ServiceContext[Any]:
    """The context of one service: its settings section, the backends it declared, its
    event port, the shared clients and a metrics registry of its own."""
    view = ServiceBackends(plugin, backends)
    return ServiceContext(
        plugin=plugin,
        config=config,
        settings=config.settings_of(plugin.name),
        backends=view,
        events=ServiceEvents(
            plugin.grpc_service,
            view.event_publisher,
            durable=frozenset(config.events.durable),
            durable_timeout_s=config.events.durable_timeout_s,
        ),
        clients=clients,
    )


def _authz_audit(events: ServiceEvents) -> Callable[[str, str], None]:
    """Audits a reload of the authorisation bundle: ``authz.reload`` by ``system:authz``,
    before/after revision (published from the reloading thread; the new rules are already
    in force: the file changed under the process, and a restart would load it too)."""

    def audit(previous: str, fresh: str) -> None:
        if previous == fresh:  # the file was touched, its rules are the same
            return
        envelope = events.audit_event(
            "authz.reload", "authz_bundle", "rpc", version=fresh,
            before={"revision": previous}, after={"revision": fresh}, actor=system("authz"),
        )  # fmt: skip
        events.publish(envelope)

    return audit


async def serve(
    config: MeshConfig,
    names: Sequence[str],
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    factories: Mapping[str, ServiceFactory] | None = None,
) -> None:
    """Run ``names`` in this process until SIGINT/SIGTERM (or ``stop``), then drain and exit.

    ``factories`` replaces the ``services.<name>.create`` of some names (tests use it).
    """
    factories = factories or {}
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    security = server_security(config)
    authz = AuthzPolicy(security.authz_bundle, security.authz_decision) if security else None
    if security is None:
        log.warning(
            "security_disabled",
            message="security.insecure is true: plaintext gRPC, no authentication, every "
            "caller may call every method, drain included. Never expose this mesh.",
        )
    with Backends(config) as backends:
        services: list[GrpcService] = []
        local = LocalServers() if config.server.local_calls else None
        clients = MeshClient(
            config, security=client_security(config, as_operator=False), local=local
        )
        access_log = (
            AccessLog(config.logging.format)
            if config.server.access_log and config.logging.level in ("debug", "info")
            else None
        )
        observability = _embedded_observability(
            config, backends, security.tokens if security is not None else None
        )
        try:
            for name in names:
                plugin = SERVICES[name]
                ctx = build_context(plugin, config, backends, clients)
                factory = factories.get(name) or plugin.load_factory()
                services.append(GrpcService(factory(ctx), ctx, access_log, security, authz, local))
            if authz is not None:
                authz.on_reload = _authz_audit(ServiceEvents(ADMIN_SERVICE, backends.publisher))
            for svc in services:
                await svc.start()
            freeze_startup_heap(config.server.gc_gen0_threshold)
            log.info("mesh_ready", services=list(names), mode=config.mode.value)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("shutting_down", grace_s=config.server.shutdown_grace_s)
        finally:
            await asyncio.gather(
                *(svc.stop(config.server.shutdown_grace_s) for svc in services),
                return_exceptions=True,
            )
            await clients.close()
            if access_log is not None:
                await asyncio.to_thread(access_log.close)
            if observability is not None:
                # Accepted events first reach the log, then the sinks take what they can.
                await asyncio.to_thread(backends.flush_events)
                await asyncio.to_thread(observability.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)


def freeze_startup_heap(gen0_threshold: int | None = None) -> None:
    """Move everything allocated while starting (models, indexes, modules, protobuf
    descriptors: a few hundred thousand objects) out of the cyclic collector's reach, and
    collect the young generation every ``gen0_threshold`` allocations (``server.
    gc_gen0_threshold``; None keeps the interpreter's).

    Otherwise every full collection walks that heap again: measured 110-220 ms pauses in the
    whole mesh's process, each one a p99 spike of every call in flight. What a request
    allocates is still collected as before.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold is not None:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def _embedded_observability(
    config: MeshConfig, backends: Backends, tokens: TokenStore | None
) -> Observability | None:
    """In embedded mode: migrate the chdb schema and start the in-process sinks."""
    if config.mode is not Mode.EMBEDDED or not config.sink.embedded:
        return None
    from llmops.clickhouse.migrations import apply_migrations
    from llmops.observability import Observability

    store = backends.clickhouse()
    applied = apply_migrations(store)
    if applied:
        log.info("clickhouse_migrated", applied=applied)
    return Observability.from_config(config, backends, tokens=tokens).start()


def run(config: MeshConfig, names: Sequence[str]) -> None:
    """Blocking entry point: ``serve`` on a uvloop event loop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, names))
