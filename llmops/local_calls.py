"""Calls between services hosted in the same process, without the network.

``llmops up`` runs the whole mesh in one process (DESIGN.md §6), and a task ``Run`` makes up
to nine calls to other services of that process. Through gRPC each one costs a TLS record,
HTTP/2 framing, and two trips through the C core and the event loop on both ends: measured
~2-3 ms a hop on this 2-core box, most of a ``Run``'s overhead. A :class:`LocalChannel`
serves such a call by handing it straight to the target server's handler — **the same
wrapped handler** its listener serves (:class:`llmops.server.interceptor.RuntimeInterceptor`:
authentication and authorisation by the same credentials the network call would carry,
deadline, request id, metrics, access log, error mapping, durable events), with the request
and response still serialised and parsed so no message object is shared between services
and the runtime's request checks (undecodable bytes, times, context caps) still apply.

What it leaves out, on purpose: the listener's ``server.max_concurrent_rpcs`` bound (the
caller is already inside a call that passed it) and gRPC's retry policy (a call in the same
process cannot be lost on the way). Only unary calls go local; streams, and every call
while the target is not (yet, or any more) serving in this process, go through the network
channel as before. ``server.local_calls: false`` turns it off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc

if TYPE_CHECKING:  # the server's types; importing the server here would load all of it
    from llmops.server.interceptor import GenericHandler, Handler

LOCAL_PEER = "local"
"""The peer address a local call shows the server (access log, identity when insecure)."""


@dataclass(frozen=True, slots=True)
class _CallDetails:
    """What a generic handler looks a method up by (a ``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class LocalServers:
    """The listeners of this process: address -> the (wrapped) handlers it serves."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[GenericHandler, ...]] = {}
        self._found: dict[tuple[str, str], Handler | None] = {}

    def register(self, address: str, handlers: Sequence[GenericHandler]) -> None:
        self._handlers[address] = tuple(handlers)
        self._found.clear()

    def unregister(self, address: str) -> None:
        self._handlers.pop(address, None)
        self._found.clear()

    def serves(self, address: str) -> bool:
        return address in self._handlers

    def handler(self, address: str, method: str) -> Handler | None:
        """The unary handler of ``method`` at ``address``; None when that address is not
        served here or the method is not a unary one there (the network answers it)."""
        key = (address, method)
        try:
            return self._found[key]
        except KeyError:
            pass
        found = None
        details = _CallDetails(method)
        for generic in self._handlers.get(address, ()):
            handler = generic.service(details)  # type: ignore[arg-type]
            if handler is not None:
                if not handler.request_streaming and not handler.response_streaming:
                    found = handler
                break
        if address in self._handlers:  # cache only what a serving address answered
            self._found[key] = found
        return found


class _LocalContext:
    """The servicer context of a local call: the subset of ``grpc.aio.ServicerContext``
    a unary handler uses."""

    __slots__ = (
        "_auth", "_code", "_deadline", "_details", "_metadata", "_trailing", "expired",
    )  # fmt: skip

    def __init__(
        self,
        metadata: tuple[tuple[str, str], ...],
        deadline: float | None,
        auth: dict[str, list[bytes]],
    ) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._auth = auth
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self.expired = False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self.expired:
            return 0.0
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return LOCAL_PEER

    def peer_identities(self) -> list[bytes] | None:
        return self._auth.get("x509_common_name")

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(metadata)

    def trailing(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:
        return self._details

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def cancelled(self) -> bool:
        return self.expired

    def done(self) -> bool:
        return False


Outgoing = tuple[float | None, tuple[tuple[str, str], ...]]
OutgoingPolicy = Callable[[float | None, Any], Outgoing]
"""(the caller's timeout, its metadata) -> (the call's timeout, the metadata it carries):
what the client's call policy would put on the network call (deadline, request id, token)."""


class _LocalCall:
    """What a unary stub call returns, like ``grpc.aio.UnaryUnaryCall``: awaitable for the
    response, then its status and trailing metadata."""

    __slots__ = ("_code", "_details", "_handler", "_outgoing", "_request", "_trailing", "_unary")

    def __init__(
        self, unary: _LocalUnaryUnary, handler: Handler, request: Any, outgoing: Outgoing
    ) -> None:
        self._unary = unary
        self._handler = handler
        self._request = request
        # The policy ran when the call was made, as an interceptor does: in the caller's
        # context (its deadline, its request id).
        self._outgoing = outgoing
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, Any], ...] = ()

    def __await__(self) -> Generator[Any, None, Any]:
        awaiting: Generator[Any, None, Any] = self._run().__await__()
        return awaiting

    async def _run(self) -> Any:
        unary, handler = self._unary, self._handler
        timeout_s, metadata = self._outgoing
        if timeout_s is not None and timeout_s <= 0:
            raise self._failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        data = unary.serialize(self._request) if unary.serialize else self._request
        parse = handler.request_deserializer
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        context = _LocalContext(metadata, deadline, unary.channel.auth)
        # Its own task, as on a server: its context variables are its own, and the deadline
        # cancels it alone.
        behavior = cast(Callable[..., Awaitable[Any]], handler.unary_unary)
        task = asyncio.ensure_future(behavior(parse(data) if parse else data, context))

        def expire() -> None:
            context.expired = True
            task.cancel()

        timer = (
            asyncio.get_running_loop().call_later(timeout_s, expire)
            if timeout_s is not None
            else None
        )
        try:
            response = await task
        except grpc.aio.AbortError:
            raise self._failed(context.code(), context.details(), context.trailing()) from None
        except asyncio.CancelledError:
            if context.expired:
                raise self._failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            task.cancel()  # the caller was cancelled: so is the call
            raise
        except Exception as exc:  # the pipeline maps errors; this is a handler outside it
            raise self._failed(
                grpc.StatusCode.UNKNOWN, f"Exception calling application: {exc}"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        code = context.code()
        if code is not None and code is not grpc.StatusCode.OK:
            raise self._failed(code, context.details(), context.trailing())
        self._code, self._trailing = grpc.StatusCode.OK, context.trailing()
        out = handler.response_serializer(response) if handler.response_serializer else response
        return unary.parse(out) if unary.parse else out

    def _failed(
        self,
        code: grpc.StatusCode | None,
        details: str | None,
        trailing: tuple[tuple[str, Any], ...] = (),
    ) -> grpc.aio.AioRpcError:
        self._code = code or grpc.StatusCode.UNKNOWN
        self._details, self._trailing = details, trailing
        return grpc.aio.AioRpcError(
            self._code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*trailing),
            details,
            f"local call: {self._code.name}",
        )

    async def code(self) -> grpc.StatusCode | None:
        return self._code

    async def details(self) -> str | None:
        return self._details

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*self._trailing)


class _LocalUnaryUnary:
    """The multicallable of one unary method on a :class:`LocalChannel`."""

    __slots__ = ("_method", "_network", "channel", "parse", "serialize")

    def __init__(
        self,
        channel: LocalChannel,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self.channel = channel
        self._method = method
        self.serialize = request_serializer
        self.parse = response_deserializer
        self._network: Any = None

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ch = self.channel
        handler = ch.servers.handler(ch.address, self._method)
        if handler is None:  # not served here (yet, any more) or not unary: the network
            if self._network is None:
                self._network = ch.network().unary_unary(
                    self._method, request_serializer=self.serialize,
                    response_deserializer=self.parse,
                )  # fmt: skip
            return self._network(
                request, timeout=timeout, metadata=metadata, credentials=credentials,
                wait_for_ready=wait_for_ready, compression=compression,
            )  # fmt: skip
        return _LocalCall(self, handler, request, ch.policy(timeout, metadata))


class LocalChannel:
    """A channel to ``address`` that serves unary calls in-process while a server of this
    process listens there (:class:`LocalServers`), and everything else through ``network``
    (the ordinary ``grpc.aio`` channel, created on first need). Generated stubs take it as
    they take a channel."""

    def __init__(
        self,
        servers: LocalServers,
        address: str,
        network: Callable[[], grpc.aio.Channel],
        policy: OutgoingPolicy,
        auth: dict[str, list[bytes]],
    ) -> None:
        """``policy``: the caller's outgoing call policy; ``auth``: the transport identity
        the server sees (the client certificate a TLS handshake would have verified)."""
        self.servers = servers
        self.address = address
        self.policy = policy
        self.auth = auth
        self._make_network = network
        self._network: grpc.aio.Channel | None = None

    def network(self) -> grpc.aio.Channel:
        if self._network is None:
            self._network = self._make_network()
        return self._network

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _LocalUnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.network().unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.network().stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.network().stream_stream(method, *args, **kwargs)

    async def channel_ready(self) -> None:
        if not self.servers.serves(self.address):
            await self.network().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        if self._network is not None:
            await self._network.close(grace)
            self._network = None
