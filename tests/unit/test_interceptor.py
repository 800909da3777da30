"""The runtime's call pipeline on a real grpc.aio server over loopback, and the same
pipeline serving in-process calls (:mod:`llmops.local_calls`): every test runs both ways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from llmops.callcontext import REQUEST_ID_KEY, current_request_id, remaining_time
from llmops.errors import InvalidArgument, NotFound
from llmops.local_calls import LocalChannel, LocalServers
from llmops.server.interceptor import (
    RpcMetrics,
    RuntimeInterceptor,
    ServerState,
)
from llmops.v1 import common_pb2

SERVICE = "test.v1.Probe"


def _id(b: bytes) -> bytes:
    return b


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def whoami(request: bytes, context: Any) -> bytes:
    return (current_request_id() or "").encode()


async def remaining(request: bytes, context: Any) -> bytes:
    left = remaining_time()
    return b"none" if left is None else f"{left:.6f}".encode()


async def peer(request: bytes, context: Any) -> bytes:
    return str(context.peer()).encode()


async def slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(2)
    return b"late"


async def invalid(request: bytes, context: Any) -> bytes:
    raise InvalidArgument("entities[0].key", "must not be empty")


async def missing(request: bytes, context: Any) -> bytes:
    raise NotFound("feature view 'user_profile' not found")


async def crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("secret connection string redis://:hunter2@db")


async def count_to(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield str(i).encode()
    if int(request) == 3:
        raise InvalidArgument("n", "three is not allowed to finish")


HANDLERS = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo, _id, _id),
    "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami, _id, _id),
    "Remaining": grpc.unary_unary_rpc_method_handler(remaining, _id, _id),
    "Peer": grpc.unary_unary_rpc_method_handler(peer, _id, _id),
    "Slow": grpc.unary_unary_rpc_method_handler(slow, _id, _id),
    "Invalid": grpc.unary_unary_rpc_method_handler(invalid, _id, _id),
    "Missing": grpc.unary_unary_rpc_method_handler(missing, _id, _id),
    "Crash": grpc.unary_unary_rpc_method_handler(crash, _id, _id),
    "Count": grpc.unary_stream_rpc_method_handler(count_to, _id, _id),
}


class Harness:
    """A server with the pipeline attached either way the runtime supports it."""

    def __init__(self, attach: str) -> None:
        self.registry = CollectorRegistry()
        self.state = ServerState()
        runtime = RuntimeInterceptor(SERVICE, RpcMetrics(self.registry), self.state)
        generic = grpc.method_handlers_generic_handler(SERVICE, HANDLERS)
        if attach == "interceptor":
            self.server = grpc.aio.server(interceptors=[runtime])
        else:  # how GrpcService registers servicers
            self.server = grpc.aio.server()
            generic = runtime.wrap_generic_handler(generic)
        self.server.add_generic_rpc_handlers((generic,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.channel: Any = None
        self.local: LocalServers | None = None
        if attach == "local":  # unary calls in-process, streams over the network
            self.local = LocalServers()
            self.local.register(self.address, (generic,))

    def open(self) -> None:
        if self.local is None:
            self.channel = grpc.aio.insecure_channel(self.address)
        else:
            self.channel = LocalChannel(
                self.local,
                self.address,
                lambda: grpc.aio.insecure_channel(self.address),
                lambda timeout, metadata: (timeout, tuple(metadata or ())),
                {},
            )

    def unary(self, name: str) -> Any:
        assert self.channel is not None
        return self.channel.unary_unary(f"/{SERVICE}/{name}", _id, _id)

    def stream(self, name: str) -> Any:
        assert self.channel is not None
        return self.channel.unary_stream(f"/{SERVICE}/{name}", _id, _id)

    def handled(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_type": "unary" if method != "Count" else "server_stream",
             "grpc_service": SERVICE, "grpc_method": method, "grpc_code": code},
        )  # fmt: skip
        return value or 0.0

    async def settled(self, method: str, code: str, expected: float) -> float:
        """The count once the server has finished the call: an abort sends the status to the
        client before the server-side bookkeeping runs, so poll briefly."""
        for _ in range(100):
            if self.handled(method, code) >= expected:
                break
            await asyncio.sleep(0.01)
        return self.handled(method, code)


@pytest.fixture(params=["wrapped", "interceptor", "local"])
async def probe(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(request.param)
    await h.server.start()
    h.open()
    yield h
    await h.channel.close()
    await h.server.stop(None)


async def test_request_id_is_kept_and_returned(probe: Harness) -> None:
    call = probe.unary("WhoAmI")(b"", metadata=((REQUEST_ID_KEY, "req-123"),))
    assert await call == b"req-123"
    assert (REQUEST_ID_KEY, "req-123") in tuple(await call.trailing_metadata())


async def test_request_id_is_minted_when_absent(probe: Harness) -> None:
    call = probe.unary("WhoAmI")(b"")
    minted = (await call).decode()
    assert uuid.UUID(minted).version == 7  # time-ordered: compact in the prediction log
    assert str(uuid.UUID(minted)) == minted
    assert (REQUEST_ID_KEY, minted) in tuple(await call.trailing_metadata())


async def test_deadline_is_visible_to_the_handler(probe: Harness) -> None:
    left = float(await probe.unary("Remaining")(b"", timeout=1.0))
    assert 0.5 < left <= 1.1  # grpc rounds the wire timeout up a little
    assert await probe.unary("Remaining")(b"") == b"none"


async def test_past_deadline_is_deadline_exceeded(probe: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe.unary("Slow")(b"", timeout=0.2)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert await probe.settled("Slow", "DEADLINE_EXCEEDED", 1) == 1
    assert probe.state.in_flight == 0


@pytest.mark.parametrize(
    ("method", "code", "text"),
    [
        ("Invalid", grpc.StatusCode.INVALID_ARGUMENT, "entities[0].key: must not be empty"),
        ("Missing", grpc.StatusCode.NOT_FOUND, "feature view 'user_profile' not found"),
    ],
)
async def test_domain_errors_map_to_precise_codes(
    probe: Harness, method: str, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe.unary(method)(b"")
    assert err.value.code() is code
    assert err.value.details() == text
    assert await probe.settled(method, code.name, 1) == 1


def error_detail(err: grpc.aio.AioRpcError) -> common_pb2.ErrorDetail | None:
    """The llmops.v1.ErrorDetail of a failed call's rich status, as grpcio-status reads it."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return None
    assert status.code == err.code().value[0] and status.message == err.details()
    (packed,) = status.details
    detail = common_pb2.ErrorDetail()
    assert packed.Unpack(detail)
    return detail


async def test_a_failure_that_says_why_carries_an_error_detail(probe: Harness) -> None:
    call = probe.unary("Invalid")(b"", metadata=((REQUEST_ID_KEY, "req-why"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    detail = error_detail(err.value)
    assert detail is not None
    assert (detail.field, detail.message) == ("entities[0].key", err.value.details())
    assert (REQUEST_ID_KEY, "req-why") in tuple(err.value.trailing_metadata() or ())
    with pytest.raises(grpc.aio.AioRpcError) as plain:
        await probe.unary("Missing")(b"")
    assert error_detail(plain.value) is None  # nothing machine-readable to add


async def test_unexpected_errors_hide_internals(probe: Harness) -> None:
    call = probe.unary("Crash")(b"", metadata=((REQUEST_ID_KEY, "req-crash"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert "hunter2" not in (err.value.details() or "")
    assert "req-crash" in (err.value.details() or "")
    assert await probe.settled("Crash", "INTERNAL", 1) == 1


async def test_server_stream_and_error_mid_stream(probe: Harness) -> None:
    assert [m async for m in probe.stream("Count")(b"2")] == [b"0", b"1"]
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for m in probe.stream("Count")(b"3"):
            got.append(m)
    assert got == [b"0", b"1", b"2"]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await probe.settled("Count", "OK", 1) == 1
    assert await probe.settled("Count", "INVALID_ARGUMENT", 1) == 1


async def test_metrics_count_and_time_calls(probe: Harness) -> None:
    for _ in range(3):
        await probe.unary("Echo")(b"x")
    assert await probe.settled("Echo", "OK", 3) == 3
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Echo"}
    assert probe.registry.get_sample_value("grpc_server_started_total", labels) == 3
    assert probe.registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 3
    assert probe.registry.get_sample_value("grpc_server_in_flight", labels) == 0


async def test_draining_server_turns_new_work_away(probe: Harness) -> None:
    probe.state.draining = True
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe.unary("Echo")(b"x")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "draining" in (err.value.details() or "")


async def test_local_calls_skip_the_network_while_the_server_is_registered(
    probe: Harness,
) -> None:
    seen = await probe.unary("Peer")(b"")
    if probe.local is None:
        assert seen.startswith(b"ipv4:127.0.0.1:")
        return
    assert seen == b"local"
    assert await probe.settled("Peer", "OK", 1) == 1  # the server's own metrics count it
    probe.local.unregister(probe.address)  # a stopping server: its callers use the network
    assert (await probe.unary("Peer")(b"")).startswith(b"ipv4:127.0.0.1:")
