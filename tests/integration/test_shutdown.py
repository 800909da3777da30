"""Graceful shutdown: SIGTERM stops new work, lets in-flight RPCs finish, exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmops.config import load_config
from llmops.server import Binding, ServiceContext, ServiceDefinition
from llmops.v1 import feature_pb2, feature_pb2_grpc
from tests.support import mesh_env, port_is_free, running, wait_serving


class SlowFeatures(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def GetOnlineFeatures(self, request: Any, context: Any) -> Any:
        self.started.set()
        await asyncio.sleep(0.5)
        return feature_pb2.GetOnlineFeaturesResponse()


def serving(servicer: SlowFeatures) -> Callable[[ServiceContext[Any]], ServiceDefinition]:
    """A factory for the feature service that serves ``servicer``."""

    def factory(ctx: ServiceContext[Any]) -> ServiceDefinition:
        descriptor = feature_pb2.DESCRIPTOR.services_by_name["FeatureService"]
        add = feature_pb2_grpc.add_FeatureServiceServicer_to_server
        return ServiceDefinition([Binding(descriptor, add, servicer)])

    return factory


async def test_sigterm_drains_in_flight_then_returns(tmp_path: Path) -> None:
    from llmops.server import serve

    env, ports, _ = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"  # in-process: this pytest process's chdb is taken
    config = load_config(environ=env)
    servicer = SlowFeatures()

    factory = serving(servicer)
    ready = asyncio.Event()
    server = asyncio.create_task(
        serve(config, ["feature"], ready=ready, factories={"feature": factory})
    )
    await asyncio.wait_for(ready.wait(), 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feature']}") as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=10)
        )
        await asyncio.wait_for(servicer.started.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=2)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert isinstance(await in_flight, feature_pb2.GetOnlineFeaturesResponse)
    await asyncio.wait_for(server, 15)
    assert port_is_free(ports["feature"])


def test_standalone_service_exits_0_on_sigterm(tmp_path: Path) -> None:
    env, ports, admin_ports = mesh_env(tmp_path, insecure=True)
    # a service needing no server in production mode (the others need Redis, PostgreSQL, ...)
    with running(["services.inference"], tmp_path, env) as (proc, log_path):
        wait_serving(f"127.0.0.1:{ports['inference']}", "llmops.v1.InferenceService", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-2000:]
    events = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    started = [e for e in events if e.get("event") == "service_started"]
    assert [e["mode"] for e in started] == ["production"]
    assert any(e.get("event") == "service_stopped" for e in events)
    assert port_is_free(ports["inference"]) and port_is_free(admin_ports["inference"])


async def test_admin_drain_waits_for_in_flight_and_turns_health_off(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from llmops.server import serve
    from llmops.v1 import admin_pb2, admin_pb2_grpc

    env, ports, _ = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"  # in-process: this pytest process's chdb is taken
    config = load_config(environ=env)
    servicer = SlowFeatures()

    factory = serving(servicer)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve(config, ["feature"], ready=ready, stop=stop, factories={"feature": factory})
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feature']}") as channel:
            features = feature_pb2_grpc.FeatureServiceStub(channel)
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            in_flight = asyncio.ensure_future(
                features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=10)
            )
            await asyncio.wait_for(servicer.started.wait(), 5)
            request = admin_pb2.DrainRequest(reason="test")
            request.timeout.FromSeconds(5)
            reply = await admin.Drain(request, timeout=10)
            assert reply.draining and reply.drained and reply.in_flight == 0
            assert reply.waited.ToMilliseconds() >= 200  # it waited for the slow call
            assert in_flight.done() and in_flight.exception() is None
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="llmops.v1.FeatureService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest())
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            info = await admin.GetInfo(admin_pb2.GetInfoRequest(), timeout=5)
            assert info.draining and info.service_name == "llmops.v1.FeatureService"

            # Resume undoes it (a drain was one-way: one call per replica emptied a fleet)
            resumed = await admin.Resume(admin_pb2.ResumeRequest(reason="test"), timeout=5)
            assert resumed.was_draining
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="llmops.v1.FeatureService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            await features.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=5)
            info = await admin.GetInfo(admin_pb2.GetInfoRequest(), timeout=5)
            assert not info.draining
            again = await admin.Resume(admin_pb2.ResumeRequest(), timeout=5)
            assert not again.was_draining  # idempotent
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    env, ports, _ = mesh_env(tmp_path, insecure=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["feature"]))
        squatter.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "llmops", "run", "feature"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{ports['feature']}" in proc.stderr
    assert "services.feature.port" in proc.stderr
