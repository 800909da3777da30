"""``llmops status``: ask every service for its health and identity, concurrently."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import grpc
from grpc_health.v1 import health_pb2

from llmops.clients import MeshClient
from llmops.config import MeshConfig
from llmops.mesh import SERVICES
from llmops.security import INSECURE
from llmops.v1 import admin_pb2


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    grpc_service: str
    address: str
    health: str
    """SERVING / NOT_SERVING / UNKNOWN from the gRPC health protocol, or UNREACHABLE."""
    version: str
    mode: str
    uptime_s: float | None
    metrics: str
    error: str
    security: str = ""
    """How the service authenticates callers (GetInfo), e.g. ``mTLS + bearer tokens``."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


async def _one(mesh: MeshClient, name: str, address: str, timeout_s: float) -> ServiceStatus:
    entry = SERVICES[name]
    try:
        health = await mesh.health(name).Check(
            health_pb2.HealthCheckRequest(service=entry.grpc_service), timeout=timeout_s
        )
        info = await mesh.admin(name).GetInfo(admin_pb2.GetInfoRequest(), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return ServiceStatus(
            name, entry.grpc_service, address, "UNREACHABLE", "", "", None, "",
            f"{exc.code().name}: {exc.details()}",
        )  # fmt: skip
    return ServiceStatus(
        service=name,
        grpc_service=entry.grpc_service,
        address=address,
        health=health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
        version=info.version,
        mode=admin_pb2.ServingMode.Name(info.mode).removeprefix("SERVING_MODE_").lower(),
        uptime_s=info.uptime.ToMilliseconds() / 1000,
        metrics=f"http://{info.metrics_address}/metrics" if info.metrics_address else "",
        error="",
        security=info.security,
    )


async def collect_status(config: MeshConfig, timeout_s: float = 2.0) -> list[ServiceStatus]:
    enabled = {n: s for n, s in config.services.items() if s.enabled}
    async with MeshClient(config, default_timeout_s=timeout_s) as mesh:
        return list(
            await asyncio.gather(*(_one(mesh, n, s.address, timeout_s) for n, s in enabled.items()))
        )


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def render_table(rows: list[ServiceStatus]) -> str:
    header = ("SERVICE", "HEALTH", "VERSION", "ADDRESS", "UPTIME", "MODE", "SECURITY", "METRICS")
    body = [
        (r.service, r.health, r.version or "-", r.address, format_uptime(r.uptime_s),
         r.mode or "-", r.security or "-", r.metrics or r.error or "-")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    table = "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *body)
    )
    insecure = [r.service for r in rows if r.security == INSECURE]
    if insecure:
        table += (
            f"\nWARNING: {', '.join(insecure)} run with security.insecure: plaintext gRPC, no "
            "authentication, every caller may call every method (drain included)."
        )
    return table
