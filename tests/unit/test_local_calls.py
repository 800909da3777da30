"""In-process calls between the services of one process (:mod:`llmops.local_calls`) are
authenticated and authorised exactly as over the network: the mesh's clients present the
same identity (the mesh's client certificate, or the token they would send), and the
target's guard decides by the same policy. Deadlines propagate and cancellation reaches the
handler. (tests/unit/test_interceptor.py runs the rest of the pipeline both ways.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from llmops.callcontext import principal_var, remaining_time
from llmops.clients import MeshClient
from llmops.config import MeshConfig
from llmops.local_calls import LocalServers
from llmops.security import client_security, server_security
from llmops.server.auth import CallGuard
from llmops.server.interceptor import RpcMetrics, RuntimeInterceptor, ServerState

ADDRESS = "127.0.0.1:1"  # never listened on: a call that left the process would fail
CHECK = "/llmops.v1.GuardrailService/Check"
DRAIN = "/llmops.v1.AdminService/Drain"
SLOW = "/llmops.v1.GuardrailService/CheckBatch"


def _id(b: bytes) -> bytes:
    return b


class Probe:
    """Handlers registered under real method names (the policy decides by them)."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.remaining: list[float | None] = []

    async def whoami(self, request: bytes, context: Any) -> bytes:
        principal = principal_var.get()
        who = principal.id if principal is not None else "nobody"
        return f"{who}|{context.peer()}".encode()

    async def slow(self, request: bytes, context: Any) -> bytes:
        self.remaining.append(remaining_time())
        try:
            await asyncio.sleep(float(request or b"5"))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"

    def generic(self) -> Any:
        whoami = grpc.unary_unary_rpc_method_handler(self.whoami, _id, _id)
        slow = grpc.unary_unary_rpc_method_handler(self.slow, _id, _id)
        return grpc.method_handlers_generic_handler(
            "llmops.v1.GuardrailService", {"Check": whoami, "CheckBatch": slow}
        ), grpc.method_handlers_generic_handler("llmops.v1.AdminService", {"Drain": whoami})


def _config(tmp_path: Path, **security: Any) -> MeshConfig:
    return MeshConfig.model_validate({"state_dir": str(tmp_path), "security": security})


def _serve(config: MeshConfig, probe: Probe) -> LocalServers:
    security = server_security(config)
    guard = CallGuard(security, CollectorRegistry()) if security is not None else None
    runtime = RuntimeInterceptor(
        "test", RpcMetrics(CollectorRegistry()), ServerState(), guard=guard
    )
    servers = LocalServers()
    servers.register(ADDRESS, [runtime.wrap_generic_handler(g) for g in probe.generic()])
    return servers


def _client(config: MeshConfig, servers: LocalServers, *, as_operator: bool) -> MeshClient:
    return MeshClient(
        config,
        targets={"guardrail": ADDRESS},
        security=client_security(config, as_operator=as_operator),
        local=servers,
    )


async def _call(mesh: MeshClient, method: str, body: bytes = b"", **kw: Any) -> bytes:
    result: bytes = await mesh.channel("guardrail").unary_unary(method, _id, _id)(body, **kw)
    return result


async def test_the_mesh_certificate_authenticates_a_local_call_and_the_policy_applies(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    servers = _serve(config, Probe())
    async with _client(config, servers, as_operator=False) as mesh:
        assert await _call(mesh, CHECK) == b"service:mesh|local"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(mesh, DRAIN)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "Drain is not granted to service:mesh" in (refused.value.details() or "")
    async with _client(config, servers, as_operator=True) as operator:
        assert await _call(operator, DRAIN) == b"token:operator|local"


async def test_without_client_certificates_the_service_token_names_the_caller(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, client_certificates="none")
    servers = _serve(config, Probe())
    async with _client(config, servers, as_operator=False) as mesh:
        assert (await _call(mesh, CHECK)).startswith(b"token:")


async def test_a_local_caller_without_credentials_is_unauthenticated(tmp_path: Path) -> None:
    config = _config(tmp_path)
    servers = _serve(config, Probe())
    async with MeshClient(
        config, targets={"guardrail": ADDRESS}, security=None, local=servers
    ) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(anonymous, CHECK)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_deadline_is_the_smaller_of_the_timeout_and_what_the_caller_has_left(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    probe = Probe()
    servers = _serve(config, probe)
    async with _client(config, servers, as_operator=False) as mesh:
        assert await _call(mesh, SLOW, b"0", timeout=0.5) == b"done"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await _call(mesh, SLOW, b"5", timeout=0.1)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(probe.cancelled.wait(), 1)  # the handler was stopped too
    first, second = probe.remaining
    assert first is not None and 0.3 < first <= 0.5
    assert second is not None and second <= 0.1


async def test_a_cancelled_caller_cancels_the_local_call(tmp_path: Path) -> None:
    config = _config(tmp_path)
    probe = Probe()
    servers = _serve(config, probe)
    async with _client(config, servers, as_operator=False) as mesh:
        caller = asyncio.ensure_future(_call(mesh, SLOW, b"5", timeout=10))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(probe.cancelled.wait(), 1)


async def test_insecure_meshes_call_locally_without_credentials(tmp_path: Path) -> None:
    config = _config(tmp_path, insecure=True)
    servers = _serve(config, Probe())
    async with _client(config, servers, as_operator=False) as mesh:
        assert await _call(mesh, CHECK) == b"nobody|local"
