"""Server limits from the config: message sizes, streams, connection age, keepalive."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


async def test_a_message_over_the_limit_is_refused_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path)
    env["LLMOPS__SINK__EMBEDDED"] = "false"
    env["LLMOPS__SERVER__MAX_MESSAGE_BYTES"] = "4096"
    config = load_config(environ=env)
    servicer = SlowFeatures()
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve(config, ["feature"], ready=ready, stop=stop, factories={"feature": serving(servicer)})
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feature']}") as channel:
            features = feature_pb2_grpc.FeatureServiceStub(channel)
            big = feature_pb2.GetOnlineFeaturesRequest(feature_service="v" * 10_000)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await features.GetOnlineFeatures(big, timeout=5)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not servicer.started.is_set()  # refused before the servicer saw it
            await features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)
