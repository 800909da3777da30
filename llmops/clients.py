"""Typed async clients for every service of the mesh.

``MeshClient`` keeps one channel per target for its whole life (connection reuse: HTTP/2
multiplexes concurrent calls), and every call made through it

- gets a deadline: the caller's ``timeout=``, else the config's ``default_deadline_ms``, and
  never more than what is left of the RPC being served (deadline propagation);
- carries the current request id (``x-request-id``) so logs join up across services;
- is retried on UNAVAILABLE only, by gRPC's own retry policy (exponential backoff, at most
  4 attempts), never on other codes, and only for reads and idempotent writes
  (:data:`RETRY_VERBS`) — a retried create could otherwise apply twice — within a retry
  budget per channel (retry throttling: when most recent calls fail, retries stop instead
  of multiplying the load on a struggling service).

Clients are built generically from the generated stubs, for any service a plug-in declares:
``mesh.stub(feature_pb2_grpc.FeatureServiceStub)`` returns the typed
``FeatureServiceAsyncStub`` (the ``*_pb2_grpc.pyi`` overloads type it), on the channel of the
service that serves it. No client code is written per service.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2_grpc

from llmops.callcontext import REQUEST_ID_KEY, current_request_id, remaining_time
from llmops.config import MeshConfig
from llmops.local_calls import LocalChannel, LocalServers
from llmops.mesh import PROTO_PACKAGE, SERVICES
from llmops.security import ClientSecurity, client_security
from llmops.v1 import admin_pb2_grpc

StubT = TypeVar("StubT")

RETRY_VERBS = frozenset(
    {"Get", "List", "Check", "Assign", "Embed", "Search", "Query", "Verify", "Evaluate",
     "Test", "Submit", "Upsert", "Delete", "Push", "Set"}
)  # fmt: skip
"""Methods whose name starts with one of these are retried on UNAVAILABLE: reads, and writes
that are idempotent by contract (``Submit`` by its idempotency key, ``Upsert``/``Delete``/
``Push``/``Set`` by value). Everything else — creating, starting, transitioning, leasing,
reloading, generating (a model call costs money), exporting — is tried once: a retried call
whose first attempt did reach the server could apply twice."""


@functools.cache
def contract_methods() -> tuple[tuple[ServiceDescriptor, MethodDescriptor], ...]:
    """Every (service, method) of the ``llmops.v1`` contracts, from the generated modules."""
    import llmops.v1

    found: list[tuple[ServiceDescriptor, MethodDescriptor]] = []
    for module_info in pkgutil.iter_modules(llmops.v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"llmops.v1.{module_info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found.extend((service, method) for method in service.methods)
    return tuple(found)


@functools.cache
def retryable_methods() -> tuple[tuple[str, str], ...]:
    """(service, method) of every contract method :data:`RETRY_VERBS` allows, found from the
    generated descriptors (a new RPC needs no entry here), and the health check."""
    found = [
        (service.full_name, method.name)
        for service, method in contract_methods()
        if (verb := re.match(r"[A-Z][a-z]*", method.name)) and verb.group() in RETRY_VERBS
    ]
    found.append(("grpc.health.v1.Health", "Check"))
    return tuple(sorted(found))


def retry_service_config(extra: Iterable[str] = ()) -> str:
    """gRPC service config: UNAVAILABLE retried (exponential backoff, at most 4 attempts) on
    the retryable methods (and ``extra`` full method names, ``/pkg.Service/Method``), within
    a retry budget per channel."""
    names = [{"service": service, "method": method} for service, method in retryable_methods()]
    for path in extra:
        service, _, method = path.strip("/").partition("/")
        names.append({"service": service, "method": method})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # A retry budget per channel (gRPC's retry throttling): every failure spends a
            # token, every success earns a tenth of one, and retries stop while fewer than
            # half of the 10 are left — a struggling service gets its callers' load, not
            # four times it.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def channel_options(extra_retryable: Iterable[str] = ()) -> tuple[tuple[str, Any], ...]:
    return (
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config(extra_retryable)),
        ("grpc.keepalive_time_ms", 30_000),
    )


if TYPE_CHECKING:  # grpc-stubs makes these generic; at run time they are not subscriptable
    _UU = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _US = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _SU = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _SS = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _BlockingUU = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _BlockingUS = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UU = grpc.aio.UnaryUnaryClientInterceptor
    _US = grpc.aio.UnaryStreamClientInterceptor
    _SU = grpc.aio.StreamUnaryClientInterceptor
    _SS = grpc.aio.StreamStreamClientInterceptor
    _BlockingUU = grpc.UnaryUnaryClientInterceptor
    _BlockingUS = grpc.UnaryStreamClientInterceptor


class _CallPolicy(_UU, _US, _SU, _SS):
    """Puts the deadline, the request id and the bearer token on every outgoing call (only
    ever on TLS channels: MeshClient has a token only with security on)."""

    def __init__(self, default_timeout_s: float, fixed: tuple[tuple[str, str], ...] = ()) -> None:
        self._default = default_timeout_s
        self._fixed = fixed

    def outgoing(
        self, timeout: float | None, metadata: Any
    ) -> tuple[float, tuple[tuple[str, str], ...]]:
        """(timeout, metadata) the policy puts on a call: the caller's timeout (else the
        default), never beyond what is left of the RPC being served; the request id and the
        token added. Used by :meth:`_details` and by in-process calls
        (:mod:`llmops.local_calls`), which pass no interceptors."""
        timeout = timeout if timeout is not None else self._default
        left = remaining_time()
        if left is not None:
            timeout = max(min(timeout, left), 0.0)
        pairs: tuple[tuple[str, str], ...] = tuple(metadata or ())
        rid = current_request_id()
        if rid is not None and not any(k == REQUEST_ID_KEY for k, _ in pairs):
            pairs += ((REQUEST_ID_KEY, rid),)
        return timeout, pairs + self._fixed

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout, pairs = self.outgoing(details.timeout, details.metadata)
        metadata = grpc.aio.Metadata(*pairs) if pairs else details.metadata
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def channel_credentials(security: ClientSecurity) -> grpc.ChannelCredentials:
    """TLS to the mesh's servers (verified against its CA) and the client certificate when
    there is one. The bearer token goes on each call as metadata (:class:`_CallPolicy`):
    gRPC's call-credentials plugin would run a Python callback on another thread per call
    (measured: it doubled the cost of an empty call)."""
    return grpc.ssl_channel_credentials(
        root_certificates=security.ca,
        private_key=security.private_key,
        certificate_chain=security.cert_chain,
    )


def bearer_metadata(security: ClientSecurity | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization`` metadata of ``security``'s token (none without one)."""
    if security is None or not security.token:
        return ()
    return (("authorization", f"Bearer {security.token}"),)


def secure_options(security: ClientSecurity | None) -> tuple[tuple[str, Any], ...]:
    if security is not None and security.server_name:
        return (("grpc.ssl_target_name_override", security.server_name),)
    return ()


_FROM_CONFIG: Any = object()


@functools.cache
def _served_by() -> dict[str, str]:
    """Full protobuf service name -> the mesh service that serves it."""
    return {proto: name for name, plugin in SERVICES.items() for proto in plugin.proto_services}


def _served_stub(cache: dict[Any, Any], stub_class: Callable[[Any], Any],
                 channel_of: Callable[..., Any]) -> Any:  # fmt: skip
    """The client of the protobuf service ``stub_class`` (a generated ``*Stub``) calls, on
    the channel of the mesh service serving it (its admin listener for ``*AdminService``);
    built once into ``cache`` and reused."""
    cached = cache.get(stub_class)
    if cached is None:
        full = f"{PROTO_PACKAGE}.{getattr(stub_class, '__name__', '').removesuffix('Stub')}"
        service = _served_by().get(full)
        if service is None:
            raise KeyError(f"no service of the mesh serves {full}")
        admin = full.endswith("AdminService")
        cached = cache[stub_class] = stub_class(channel_of(service, admin=admin))
    return cached


class MeshClient:
    """Async clients of all services; use ``async with MeshClient(config) as mesh``."""

    def __init__(
        self,
        config: MeshConfig | None = None,
        *,
        targets: Mapping[str, str] | None = None,
        default_timeout_s: float | None = None,
        extra_retryable: Iterable[str] = (),
        security: ClientSecurity | None = _FROM_CONFIG,
        local: LocalServers | None = None,
    ) -> None:
        """``extra_retryable``: full method names (``/pkg.Service/Method``) outside the
        contracts to retry like the retryable ones (tests' own services). ``security``: the
        credentials to call with; by default those ``config`` gives the CLI (TLS, the
        operator's token: :func:`llmops.security.client_security`), plaintext without a
        config or with ``security.insecure``. ``local``: the servers of this process; calls
        to them are served in-process (:mod:`llmops.local_calls`)."""
        if security is _FROM_CONFIG:
            security = client_security(config, as_operator=True) if config else None
        config = config or MeshConfig.model_validate({})
        self.security = security
        self._credentials = channel_credentials(security) if security else None
        self._options = channel_options(extra_retryable) + secure_options(security)
        self.targets = dict(targets or {n: s.address for n, s in config.services.items()})
        self.admin_targets = (
            dict(targets)
            if targets
            else {n: s.admin_address(config.mode) for n, s in config.services.items()}
        )
        self._policy = _CallPolicy(
            default_timeout_s
            if default_timeout_s is not None
            else config.server.default_deadline_ms / 1000,
            bearer_metadata(security),
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._local = local
        # What a local call's server sees of the transport: the client certificate a TLS
        # handshake would have verified (only where the listeners ask for one).
        self._local_auth: dict[str, list[bytes]] = (
            {"transport_security_type": [b"ssl"], "x509_pem_cert": [security.cert_chain]}
            if security is not None
            and security.cert_chain
            and config.security.client_certificates == "require"
            else {}
        )
        self._stubs: dict[Any, Any] = {}

    def channel(self, service: str, *, admin: bool = False) -> grpc.aio.Channel:
        """The one channel to ``service`` (its admin listener with ``admin``), created on
        first use and reused after (one per address: a shared port gets one channel)."""
        try:
            target = (self.admin_targets if admin else self.targets)[service]
        except KeyError:
            raise KeyError(f"no address configured for service {service!r}") from None
        channel = self._channels.get(target)
        if channel is None:
            if self._local is not None:
                channel = cast(
                    grpc.aio.Channel,
                    LocalChannel(
                        self._local,
                        target,
                        functools.partial(self._network_channel, target),
                        self._policy.outgoing,
                        self._local_auth,
                    ),
                )
            else:
                channel = self._network_channel(target)
            self._channels[target] = channel
        return channel

    def _network_channel(self, target: str) -> grpc.aio.Channel:
        interceptors: Any = [self._policy]  # grpc-stubs types the list too narrowly
        if self._credentials is None:
            return grpc.aio.insecure_channel(
                target, options=self._options, interceptors=interceptors
            )
        return grpc.aio.secure_channel(
            target, self._credentials, options=self._options, interceptors=interceptors
        )

    def health(self, service: str) -> health_pb2_grpc.HealthAsyncStub:
        return health_pb2_grpc.HealthStub(self.channel(service))

    def admin(self, service: str) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel(service, admin=True))

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """A client of the protobuf service that ``stub_class`` (a generated ``*Stub``)
        calls, on the channel of the mesh service serving it; built once and reused."""
        stub: StubT = _served_stub(self._stubs, stub_class, self.channel)
        return stub

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for channel in channels.values():
            await channel.close(None)

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _BlockingDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_BlockingDetails, grpc.ClientCallDetails):
    """grpc's ClientCallDetails is an interface without a constructor: a named tuple with
    its fields, as grpc's own examples make one."""


class _BlockingCallPolicy(_BlockingUU, _BlockingUS):
    """:class:`_CallPolicy` for blocking channels: the same deadline, request id and token."""

    def __init__(self, policy: _CallPolicy) -> None:
        self._policy = policy

    def _details(self, details: Any) -> Any:
        timeout, pairs = self._policy.outgoing(details.timeout, details.metadata)
        return _ClientCallDetails(
            details.method, timeout, pairs, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class BlockingMeshClient:
    """Blocking clients of the mesh's services, for callers that cannot run an event loop:
    load generators (locust's gevent users, after ``grpc.experimental.gevent.init_gevent()``),
    scripts. The same addresses, credentials, retry policy, deadlines and token as
    :class:`MeshClient`; ``stub(feature_pb2_grpc.FeatureServiceStub)`` returns the typed
    blocking stub. Use ``with BlockingMeshClient(config) as mesh``."""

    def __init__(
        self,
        config: MeshConfig,
        *,
        default_timeout_s: float | None = None,
        as_operator: bool = False,
        interceptors: Sequence[Any] = (),
    ) -> None:
        """``as_operator``: call with the CLI's operator token (else the mesh's service
        identity: its client certificate, or its service token without one).
        ``interceptors``: more ``grpc`` client interceptors, run after the call policy."""
        security = client_security(config, as_operator=as_operator)
        self.targets = {n: s.address for n, s in config.services.items()}
        self.admin_targets = {n: s.admin_address(config.mode) for n, s in config.services.items()}
        self._credentials = channel_credentials(security) if security else None
        self._options = channel_options() + secure_options(security)
        self._policy = _BlockingCallPolicy(
            _CallPolicy(
                default_timeout_s
                if default_timeout_s is not None
                else config.server.default_deadline_ms / 1000,
                bearer_metadata(security),
            )
        )
        self._interceptors = (self._policy, *interceptors)
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[Any, Any] = {}

    def channel(self, service: str, *, admin: bool = False) -> grpc.Channel:
        try:
            target = (self.admin_targets if admin else self.targets)[service]
        except KeyError:
            raise KeyError(f"no address configured for service {service!r}") from None
        channel = self._channels.get(target)
        if channel is None:
            raw = (
                grpc.insecure_channel(target, options=self._options)
                if self._credentials is None
                else grpc.secure_channel(target, self._credentials, options=self._options)
            )
            channel = self._channels[target] = grpc.intercept_channel(raw, *self._interceptors)
        return channel

    def stub(self, stub_class: Callable[[grpc.Channel], StubT]) -> StubT:
        stub: StubT = _served_stub(self._stubs, stub_class, self.channel)
        return stub

    def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for channel in channels.values():
            channel.close()

    def __enter__(self) -> BlockingMeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
