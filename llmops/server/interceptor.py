"""The server-side call pipeline every RPC of every service goes through.

One ``grpc.aio.ServerInterceptor`` does five jobs, each a small step of the same wrapper:

1. **request id** — taken from the ``x-request-id`` metadata or minted, bound to the logging
   context and returned in the trailing metadata;
2. **deadline propagation** — the caller's deadline is kept in a context variable that the
   typed clients read, so a downstream call never outlives its caller; grpc itself cancels a
   handler when its deadline passes (the caller sees DEADLINE_EXCEEDED, and so do the
   metrics and the access log);
3. **error mapping** — :class:`~llmops.errors.LLMOpsError` becomes its status code with its
   message; any other exception becomes INTERNAL naming only the request id;
4. **metrics** — started/handled counters, a latency histogram and an in-flight gauge, labelled
   like go-grpc-prometheus (``grpc_service``, ``grpc_method``, ``grpc_code``);
5. **access log** — one structured line per call (written off the request path by
   :class:`~llmops.server.access_log.AccessLog`).

They share one wrapper rather than five chained interceptors because each aio interceptor
layer costs an extra coroutine hop per call. The runtime's servers go further and do not use
grpc's interceptor hook at all: they register each servicer's handlers already wrapped
(:meth:`RuntimeInterceptor.wrap_generic_handler`), which keeps the method lookup
synchronous. The class still works as a plain ``interceptors=[...]`` interceptor, and the
tests run both ways. Wrappers are built once per method; ``llmops bench noop`` measures what
is left.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import structlog
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker
from google.rpc import status_pb2  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmops.callcontext import (
    REQUEST_ID_KEY,
    call_var,
    deadline_var,
    durable_var,
    principal_var,
    request_id_var,
)
from llmops.errors import InvalidArgument, LLMOpsError, NotDurable
from llmops.events.ids import uuid7
from llmops.server.access_log import AccessLog
from llmops.server.auth import PUBLIC_METHODS, CallGuard
from llmops.server.context_limits import context_problem, identifier_problem
from llmops.server.times import invalid_time
from llmops.v1 import common_pb2

_MAX_REQUEST_ID = 128
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _status_details(code: grpc.StatusCode, exc: LLMOpsError) -> tuple[tuple[str, str | bytes], ...]:
    """The trailers of a failure that says why: the request id again (abort's trailers
    replace the ones set at the start) and ``google.rpc.Status`` with one
    ``llmops.v1.ErrorDetail`` (what grpcio-status's ``rpc_status.from_call`` reads)."""
    detail = any_pb2.Any()
    detail.Pack(
        common_pb2.ErrorDetail(
            reason=exc.reason, message=exc.message, field=exc.field, metadata=exc.metadata
        )
    )
    status = status_pb2.Status(code=code.value[0], message=exc.message, details=[detail])
    return (
        (REQUEST_ID_KEY, request_id_var.get() or ""),
        (_STATUS_DETAILS_KEY, status.SerializeToString()),
    )


_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# grpc-stubs makes the handler generic; at run time it is not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
GenericHandler: TypeAlias = "grpc.GenericRpcHandler[Any, Any]"

_STATUS_BY_NAME = {code.name: code for code in grpc.StatusCode}

# Services whose calls are not turned away while draining: operators must still see health.
_ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.", "/llmops.v1.AdminService/")


@dataclass(slots=True)
class ServerState:
    """Mutable run state of one gRPC server, shared by its interceptor and admin service.

    ``in_flight`` counts data-plane calls only: health watches, reflection and admin calls
    never block a drain.
    """

    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class RpcMetrics:
    """Prometheus instruments of one server, in its own registry (one admin port each)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its completion, in seconds.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight", "RPCs being handled now.", labels, registry=registry
        )
        self.undecodable = Counter(
            "llmops_rpc_refused_requests_total",
            "Requests refused where they are parsed, INVALID_ARGUMENT: bytes that are not the "
            "message (invalid UTF-8 in a string field too), an out-of-range time, a context "
            "field over its cap.",
            labels,
            registry=registry,
        )


class _MethodInstruments:
    """Label children resolved once per method so the hot path does no label lookups."""

    __slots__ = (
        "_handled", "_handled_family", "_labels", "in_flight", "latency", "method", "started",
        "undecodable",
    )  # fmt: skip

    def __init__(self, metrics: RpcMetrics, full_method: str, kind: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.method = full_method
        self._labels = (kind, service, method)
        self.started = metrics.started.labels(*self._labels)
        self.latency = metrics.latency.labels(*self._labels)
        self.in_flight = metrics.in_flight.labels(*self._labels)
        self.undecodable = metrics.undecodable.labels(*self._labels)
        self._handled: dict[str, Any] = {}
        self._handled_family = metrics.handled

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        return child


def _kind(handler: Handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


if TYPE_CHECKING:  # grpc-stubs makes these generic; at run time they are not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _GenericRpcHandler = grpc.GenericRpcHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _GenericRpcHandler = grpc.GenericRpcHandler


class RuntimeInterceptor(_ServerInterceptor):
    """Request id, deadline, error mapping, metrics and access log for every RPC."""

    def __init__(
        self,
        service: str,
        metrics: RpcMetrics,
        state: ServerState,
        *,
        access_log: AccessLog | None = None,
        guard: CallGuard | None = None,
    ) -> None:
        """``guard``: authenticates and authorises every call but the public ones (None:
        the mesh runs with ``security.insecure``)."""
        self._service = service
        self._guard = guard
        self._metrics = metrics
        self._state = state
        self._access_log = access_log
        self._log = structlog.get_logger("llmops.access")
        # method -> (handler as registered, its wrapper)
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED
            return handler
        return self.wrapped(handler_call_details.method, handler)

    def wrap_generic_handler(self, inner: GenericHandler) -> GenericHandler:
        """``inner`` with every method handler it returns wrapped by this pipeline.

        Registering wrapped handlers does the same as ``interceptors=[self]`` without grpc's
        per-call interceptor machinery (a coroutine chain around each method lookup): the
        lookup stays synchronous and the wrapper is found in a dict.
        """
        return _WrappedGenericHandler(inner, self)

    def wrapped(self, method: str, handler: Handler) -> Handler:
        """The wrapper of ``handler``, built on the first call of ``method`` and cached."""
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    # -- building wrappers (once per method) -------------------------------------------

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kind = _kind(handler)
        inst = _MethodInstruments(self._metrics, method, kind)
        gate = not method.startswith(_ALWAYS_OPEN)
        guard = None if method.startswith(PUBLIC_METHODS) else self._guard
        ser = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if kind == "unary":
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, inst, gate, guard), **ser
            )
        if kind == "client_stream":
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, inst, gate, guard, streamed=True), **ser
            )
        behavior = handler.unary_stream if kind == "server_stream" else handler.stream_stream
        wrapped_stream: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]
        streamed = kind == "bidi_stream"
        if inspect.isasyncgenfunction(behavior):
            wrapped_stream = self._stream(behavior, inst, gate, guard, streamed)
        else:  # a coroutine that writes with context.write(): wrap it like a unary call
            wrapped_stream = self._unary(behavior, inst, gate, guard, streamed)
        factory = (
            grpc.unary_stream_rpc_method_handler
            if kind == "server_stream"
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(wrapped_stream, **ser)

    def _unary(
        self,
        behavior: Any,
        inst: _MethodInstruments,
        gate: bool,
        guard: CallGuard | None,
        streamed: bool = False,
    ) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            tokens, start = self._enter(context, inst, gate)
            code = "OK"
            try:
                if guard is not None:
                    principal_var.set(guard.admit(inst.method, context))
                if gate and self._state.draining:
                    raise _Draining()
                request = _checked(request, inst, streamed)
                response = await behavior(request, context)
                await _settle()
                return response
            except BaseException as exc:
                code = await self._fail(exc, context)
                raise  # reached for cancellation; mapped errors leave through abort
            finally:
                self._leave(tokens, start, inst, code, context, gate)

        return call

    def _stream(
        self,
        behavior: Any,
        inst: _MethodInstruments,
        gate: bool,
        guard: CallGuard | None,
        streamed: bool = False,
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            tokens, start = self._enter(context, inst, gate)
            code = "OK"
            try:
                if guard is not None:
                    principal_var.set(guard.admit(inst.method, context))
                if gate and self._state.draining:
                    raise _Draining()
                request = _checked(request, inst, streamed)
                async for item in behavior(request, context):
                    yield item
                await _settle()
            except BaseException as exc:
                code = await self._fail(exc, context)
                raise
            finally:
                self._leave(tokens, start, inst, code, context, gate)

        return call

    # -- per call ----------------------------------------------------------------------

    def _enter(
        self, context: grpc.aio.ServicerContext[Any, Any], inst: _MethodInstruments, gate: bool
    ) -> tuple[tuple[contextvars.Token[Any], ...], float]:
        start = time.perf_counter()
        rid = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                rid = value if isinstance(value, str) else value.decode()
                break
        if rid is None or len(rid) > _MAX_REQUEST_ID:  # an oversized id is not logged or kept
            # UUIDv7: time-ordered, so the prediction log stores it compactly (request_id is
            # a UUID column there; migration 0003)
            rid = uuid7()
        remaining = context.time_remaining()
        tokens = (
            request_id_var.set(rid),
            deadline_var.set(None if remaining is None else time.monotonic() + remaining),
            call_var.set((inst.method, context)),
            principal_var.set(None),
            durable_var.set({}),
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        if gate:
            self._state.enter()
        inst.started.inc()
        inst.in_flight.inc()
        return tokens, start

    async def _fail(self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Turn ``exc`` into a status on ``context``; return the status code's name."""
        if isinstance(exc, LLMOpsError):
            code = _STATUS_BY_NAME.get(exc.code, grpc.StatusCode.UNKNOWN)
            if exc.reason or exc.field or exc.metadata:
                await context.abort(code, exc.message, _status_details(code, exc))
            await context.abort(code, exc.message)
        if isinstance(exc, _Draining):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._service} is draining")
        if isinstance(exc, TimeoutError):  # a handler's own asyncio timeout
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        if isinstance(exc, asyncio.CancelledError):
            # grpc cancels the handler when the caller's deadline passes or it hangs up.
            left = context.time_remaining()
            return "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"
        if isinstance(exc, Exception):
            self._log.exception("rpc_internal_error", service=self._service)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (request_id={request_id_var.get()}); see the server log",
            )
        return "UNKNOWN"

    def _leave(
        self,
        tokens: tuple[contextvars.Token[Any], ...],
        start: float,
        inst: _MethodInstruments,
        code: str,
        context: grpc.aio.ServicerContext[Any, Any],
        gate: bool,
    ) -> None:
        elapsed = time.perf_counter() - start
        if code == "OK":  # an abort inside _fail, or a handler that set a code itself
            set_code = context.code()
            if isinstance(set_code, grpc.StatusCode):
                code = set_code.name
        if gate:
            self._state.leave()
        inst.in_flight.dec()
        inst.latency.observe(elapsed)
        inst.handled(code).inc()
        if self._access_log is not None:
            self._access_log.record(
                inst.method, code, elapsed, request_id_var.get(), context.peer()
            )
        try:
            request_id_var.reset(tokens[0])
            deadline_var.reset(tokens[1])
            call_var.reset(tokens[2])
            principal_var.reset(tokens[3])
            durable_var.reset(tokens[4])
        except ValueError:  # a stream finalised from another context: nothing to restore
            pass


class _WrappedGenericHandler(_GenericRpcHandler):
    __slots__ = ("_inner", "_runtime")

    def __init__(self, inner: GenericHandler, runtime: RuntimeInterceptor) -> None:
        self._inner = inner
        self._runtime = runtime

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._runtime.wrapped(handler_call_details.method, handler)


async def _settle() -> None:
    """Answer only once the events of durable kinds this call published are in the log
    (``events.durable``: audit and feedback by default), so an acknowledged change always
    has its audit record."""
    pending = durable_var.get()
    if not pending:
        return
    for publisher, (sequence, timeout_s) in pending.items():
        try:
            await publisher.wait_durable(sequence, timeout_s)
        except TimeoutError as exc:
            raise NotDurable(
                f"the change is applied and its events accepted, but the event log did not "
                f"make them durable within {timeout_s:g} s (events.durable_timeout_s); they "
                "will still be delivered" + (f" ({exc})" if str(exc) else "")
            ) from None


class _Draining(Exception):
    """Raised inside the wrapper when a drained server receives new work."""


class _Undecodable:
    """What the runtime's request deserializer returns for a request it refuses — bytes that
    do not parse (grpc itself would answer UNKNOWN naming a Python exception class), an
    out-of-range time, a context field over its cap: the handler wrapper answers
    INVALID_ARGUMENT with the field and the reason, before the servicer sees the request."""

    __slots__ = ("field", "reason")

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(self.field, self.reason)


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except Exception as exc:  # DecodeError: malformed bytes, invalid UTF-8 in a string
            return _Undecodable("request", f"not a valid message: {exc or type(exc).__name__}")
        if hasattr(message, "DESCRIPTOR"):
            problem = (
                context_problem(message) or identifier_problem(message) or invalid_time(message)
            )
            if problem is not None:  # "path: reason"
                field, _, reason = problem.partition(": ")
                return _Undecodable(field, reason)
        return message

    return parse


def _checked(request: Any, inst: _MethodInstruments, streamed: bool) -> Any:
    """``request`` (a message, or the iterator of a client stream) with an undecodable
    message turned into InvalidArgument where the handler would see it."""
    if not streamed:
        if type(request) is _Undecodable:
            inst.undecodable.inc()
            raise request.error()
        return request

    async def messages() -> AsyncIterator[Any]:
        async for item in request:
            if type(item) is _Undecodable:
                inst.undecodable.inc()
                raise item.error()
            yield item

    return messages()
