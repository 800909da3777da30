"""Typed clients: deadline and request-id propagation, retries on UNAVAILABLE only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from llmops.callcontext import REQUEST_ID_KEY, current_request_id, remaining_time
from llmops.clients import MeshClient
from llmops.server.interceptor import (
    RpcMetrics,
    RuntimeInterceptor,
    ServerState,
)

SERVICE = "test.v1.Hop"


def _id(b: bytes) -> bytes:
    return b


class Hop:
    """Two servers: 'front' calls 'back' through a MeshClient inside its own RPC."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"Flaky": 0, "Broken": 0, "Down": 0, "CreateThing": 0}
        self.servers: dict[str, grpc.aio.Server] = {}
        self.ports: dict[str, int] = {}
        self.mesh: MeshClient | None = None
        self.inner: MeshClient | None = None

    async def back_remaining(self, request: bytes, context: Any) -> bytes:
        return f"{remaining_time():.6f}|{current_request_id()}".encode()

    async def front_remaining(self, request: bytes, context: Any) -> bytes:
        assert self.inner is not None
        stub = self.inner.channel("back").unary_unary(f"/{SERVICE}/Remaining", _id, _id)
        return await stub(b"")  # no timeout given: inherits what is left of ours

    async def flaky(self, request: bytes, context: Any) -> bytes:
        self.calls["Flaky"] += 1
        if self.calls["Flaky"] < 3:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok"

    async def down(self, request: bytes, context: Any) -> bytes:
        self.calls["Down"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")
        return b""

    async def create_thing(self, request: bytes, context: Any) -> bytes:
        self.calls["CreateThing"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "backend down")
        return b""

    async def broken(self, request: bytes, context: Any) -> bytes:
        self.calls["Broken"] += 1
        await context.abort(grpc.StatusCode.INTERNAL, "broken")
        return b""

    async def start(self) -> None:
        handlers = {
            "front": {"Remaining": self.front_remaining},
            "back": {
                "Remaining": self.back_remaining,
                "Flaky": self.flaky,
                "Broken": self.broken,
                "Down": self.down,
                "CreateThing": self.create_thing,
            },
        }
        for name, methods in handlers.items():
            server = grpc.aio.server(
                interceptors=[
                    RuntimeInterceptor(name, RpcMetrics(CollectorRegistry()), ServerState())
                ]
            )
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        SERVICE,
                        {
                            m: grpc.unary_unary_rpc_method_handler(f, _id, _id)
                            for m, f in methods.items()
                        },
                    ),
                )
            )
            self.ports[name] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.servers[name] = server
        targets = {n: f"127.0.0.1:{p}" for n, p in self.ports.items()}
        retried = [f"/{SERVICE}/{m}" for m in ("Flaky", "Down", "Broken")]
        self.mesh = MeshClient(targets=targets, default_timeout_s=5, extra_retryable=retried)
        self.inner = MeshClient(targets=targets, default_timeout_s=30)

    def call(self, service: str, method: str) -> Any:
        assert self.mesh is not None
        return self.mesh.channel(service).unary_unary(f"/{SERVICE}/{method}", _id, _id)

    async def stop(self) -> None:
        for client in (self.mesh, self.inner):
            if client is not None:
                await client.close()
        for server in self.servers.values():
            await server.stop(None)


@pytest.fixture
async def hop() -> AsyncIterator[Hop]:
    h = Hop()
    await h.start()
    yield h
    await h.stop()


async def test_downstream_call_inherits_the_remaining_deadline(hop: Hop) -> None:
    reply = await hop.call("front", "Remaining")(
        b"", timeout=1.0, metadata=((REQUEST_ID_KEY, "rid-7"),)
    )
    left, rid = reply.decode().split("|")
    # The inner client's own default is 30 s; the caller's 1 s deadline wins.
    assert 0 < float(left) < 1.1  # grpc rounds the wire timeout up a little
    assert rid == "rid-7"


async def test_default_deadline_applies_when_caller_sets_none(hop: Hop) -> None:
    reply = await hop.call("back", "Remaining")(b"")
    assert 4.0 < float(reply.decode().split("|")[0]) <= 5.1


async def test_unavailable_is_retried(hop: Hop) -> None:
    assert await hop.call("back", "Flaky")(b"") == b"ok"
    assert hop.calls["Flaky"] == 3


async def test_retries_stop_when_a_service_keeps_failing(hop: Hop) -> None:
    calls = 20
    for _ in range(calls):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hop.call("back", "Down")(b"")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    # without a budget every call would be tried 4 times (80); the channel's retry tokens
    # run out after a few failures and each later call is tried once
    assert calls <= hop.calls["Down"] <= calls + 8


async def test_a_method_that_is_not_idempotent_is_tried_once(hop: Hop) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hop.call("back", "CreateThing")(b"")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert hop.calls["CreateThing"] == 1


def test_reads_and_idempotent_writes_of_the_contracts_are_retryable() -> None:
    from llmops.clients import retryable_methods

    methods = set(retryable_methods())
    assert ("llmops.v1.FeatureService", "GetOnlineFeatures") in methods
    assert ("llmops.v1.FeedbackService", "SubmitBatch") in methods  # idempotency keys
    assert ("grpc.health.v1.Health", "Check") in methods
    assert ("llmops.v1.ExperimentAdminService", "CreateExperiment") not in methods
    assert ("llmops.v1.InferenceService", "Generate") not in methods  # a model call costs
    assert ("llmops.v1.AdminService", "Drain") not in methods


async def test_other_codes_are_not_retried(hop: Hop) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hop.call("back", "Broken")(b"")
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert hop.calls["Broken"] == 1


async def test_channel_is_reused(hop: Hop) -> None:
    assert hop.mesh is not None
    assert hop.mesh.channel("back") is hop.mesh.channel("back")
    with pytest.raises(KeyError, match="nowhere"):
        hop.mesh.channel("nowhere")
