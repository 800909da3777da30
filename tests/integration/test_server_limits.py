"""Server limits from the config, as a client meets them: message sizes, streams per
connection, connection age, the concurrency bound, undecodable requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmops.config import ServerConfig, load_config
from llmops.server.app import server_options
from llmops.v1 import feature_pb2, feature_pb2_grpc
from tests.integration.test_shutdown import SlowFeatures, serving
from tests.support import mesh_env


def test_the_options_carry_the_configured_limits() -> None:
    options = dict(server_options(ServerConfig(max_message_bytes=2048, max_connection_age_s=60)))
    assert options["grpc.max_receive_message_length"] == 2048
    assert options["grpc.max_send_message_length"] == 2048
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_concurrent_streams"] == 1000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.so_reuseport"] == 0


class CountingFeatures(SlowFeatures):
    """Also records each call's peer (its client address) and the most calls inside."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []
        self.inside = self.most = 0

    async def GetOnlineFeatures(self, request: Any, context: Any) -> Any:
        self.peers.append(context.peer())
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            return await super().GetOnlineFeatures(request, context)
        finally:
            self.inside -= 1


@contextlib.asynccontextmanager
async def feature_server(
    tmp_path: Path, servicer: SlowFeatures | None = None, **settings: str
) -> AsyncIterator[tuple[grpc.aio.Channel, SlowFeatures, int]]:
    """The feature service (a stand-in servicer) served by the runtime with ``settings``
    (``LLMOPS__`` variables); yields a channel to it, the servicer and its admin port."""
    from llmops.server import serve

    env, ports, admin_ports = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"
    env.update(settings)
    servicer = servicer or SlowFeatures()
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve(load_config(environ=env), ["feature"], ready=ready, stop=stop,
              factories={"feature": serving(servicer)})
    )  # fmt: skip
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feature']}") as channel:
            yield channel, servicer, admin_ports["feature"]
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


async def test_streams_beyond_the_per_connection_limit_wait_their_turn(tmp_path: Path) -> None:
    """``server.max_concurrent_streams`` as the client sees it: three slow calls on one
    connection whose server allows one stream at a time run one after the other."""
    servicer = CountingFeatures()
    one = {"LLMOPS__SERVER__MAX_CONCURRENT_STREAMS": "1"}
    async with feature_server(tmp_path, servicer, **one) as (channel, _, _):
        features = feature_pb2_grpc.FeatureServiceStub(channel)
        request = feature_pb2.GetOnlineFeaturesRequest()
        await channel.channel_ready()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.gather(*(features.GetOnlineFeatures(request, timeout=10) for _ in range(3)))
        took = loop.time() - began
    assert servicer.most == 1 and len(servicer.peers) == 3
    assert took >= 1.4  # 3 x 0.5 s, in turn


async def test_a_connection_older_than_its_age_is_replaced(tmp_path: Path) -> None:
    """``server.max_connection_age_s``: the server ends a connection once it is that old
    (GOAWAY); the client's next call goes over a new one (another client port), unharmed."""
    servicer = CountingFeatures()
    age = {
        "LLMOPS__SERVER__MAX_CONNECTION_AGE_S": "1",
        "LLMOPS__SERVER__MAX_CONNECTION_AGE_GRACE_S": "1",
    }
    async with feature_server(tmp_path, servicer, **age) as (channel, _, _):
        features = feature_pb2_grpc.FeatureServiceStub(channel)
        request = feature_pb2.GetOnlineFeaturesRequest()
        await features.GetOnlineFeatures(request, timeout=10)
        await features.GetOnlineFeatures(request, timeout=10)  # same connection, still young
        await asyncio.sleep(2.5)
        await features.GetOnlineFeatures(request, timeout=10)
    first, second, third = servicer.peers
    assert first == second and third != first, servicer.peers


async def test_a_client_that_pings_too_often_is_told_to_calm_down(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Keepalive enforcement (``server.min_client_ping_interval_s``, 10 s, two strikes): a
    client pinging an idle connection every 200 ms gets GOAWAY ENHANCE_YOUR_CALM
    "too_many_pings" from the server (its gRPC core says so on stderr) and backs off; its
    calls still go through."""
    async with feature_server(tmp_path) as (channel, _, _):
        port = channel._channel.target.decode().rpartition(":")[2]
        pushy_options = [
            ("grpc.keepalive_time_ms", 200),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=pushy_options) as pushy:
            features = feature_pb2_grpc.FeatureServiceStub(pushy)
            request = feature_pb2.GetOnlineFeaturesRequest()
            await features.GetOnlineFeatures(request, timeout=5)
            deadline = asyncio.get_running_loop().time() + 10
            seen = ""
            while "too_many_pings" not in seen and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
                seen += capfd.readouterr().err
            assert "ENHANCE_YOUR_CALM" in seen and "too_many_pings" in seen
            await features.GetOnlineFeatures(request, timeout=5)  # reconnects, unharmed


async def test_a_message_over_the_limit_is_refused_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    limit = {"LLMOPS__SERVER__MAX_MESSAGE_BYTES": "4096"}
    async with feature_server(tmp_path, **limit) as (channel, servicer, _):
        features = feature_pb2_grpc.FeatureServiceStub(channel)
        big = feature_pb2.GetOnlineFeaturesRequest(feature_service="v" * 10_000)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await features.GetOnlineFeatures(big, timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not servicer.started.is_set()  # refused before the servicer saw it
        await features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=5)


async def test_calls_beyond_the_concurrency_bound_are_shed_at_once(tmp_path: Path) -> None:
    assert ServerConfig().max_concurrent_rpcs == 2048  # on by default
    bound = {"LLMOPS__SERVER__MAX_CONCURRENT_RPCS": "2"}
    async with feature_server(tmp_path, **bound) as (channel, servicer, _):
        features = feature_pb2_grpc.FeatureServiceStub(channel)
        request = feature_pb2.GetOnlineFeaturesRequest()
        calls = [asyncio.ensure_future(features.GetOnlineFeatures(request, timeout=5))
                 for _ in range(2)]  # fmt: skip
        await asyncio.wait_for(servicer.started.wait(), 5)
        await asyncio.sleep(0.05)  # both slow calls are in the servicer now
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await features.GetOnlineFeatures(request, timeout=5)
        assert shed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert loop.time() - began < 0.4  # refused at once, not queued behind the slow two
        for call in calls:  # the admitted calls finish normally
            assert isinstance(await call, feature_pb2.GetOnlineFeaturesResponse)


async def test_undecodable_requests_are_invalid_argument_and_counted(tmp_path: Path) -> None:
    async with feature_server(tmp_path) as (channel, servicer, admin_port):
        raw = channel.unary_unary(
            "/llmops.v1.FeatureService/GetOnlineFeatures", lambda b: b, lambda b: b
        )
        # field 3 (feature_service, a string) holding invalid UTF-8; then plain garbage
        for body in (b"\x1a\x02\xff\xfe", b"\xff\xff\xff"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw(body, timeout=5)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "GetOnlineFeaturesRequest" in (refused.value.details() or "")
        assert not servicer.started.is_set()
        features = feature_pb2_grpc.FeatureServiceStub(channel)
        long_tenant = feature_pb2.GetOnlineFeaturesRequest()
        long_tenant.context.tenant = "t" * 100
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await features.GetOnlineFeatures(long_tenant, timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "context.tenant: at most 64 characters"
        await features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=5)
        metrics = await asyncio.to_thread(_metrics, admin_port)
        assert (
            'llmops_rpc_refused_requests_total{grpc_method="GetOnlineFeatures",'
            'grpc_service="llmops.v1.FeatureService",grpc_type="unary"} 3.0' in metrics
        )


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def test_an_undecodable_message_in_a_request_stream_is_invalid_argument() -> None:
    from prometheus_client import CollectorRegistry

    from llmops.errors import InvalidArgument
    from llmops.server.interceptor import RpcMetrics, _checked, _MethodInstruments, _Undecodable

    inst = _MethodInstruments(RpcMetrics(CollectorRegistry()), "/s.S/M", "bidi_stream")

    async def stream():  # type: ignore[no-untyped-def]
        yield "first"
        yield _Undecodable("request", "not a valid message: Error parsing message")

    got = []
    with pytest.raises(InvalidArgument, match="not a valid message"):
        async for item in _checked(stream(), inst, streamed=True):
            got.append(item)
    assert got == ["first"]
    assert inst.undecodable._value.get() == 1
