"""Local servers for benchmarks: reuse one that answers, else start it with deploy/local.

Mirrors what ``tests/infra.py`` does for tests: a server already answering on its port is
reused and left running; one this helper starts is stopped on exit. Works from a source
checkout (the deploy/local scripts are not part of an installed package).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"
HOST = "127.0.0.1"


def kafka_port() -> int:
    return int(os.environ.get("LLMOPS_KAFKA_PORT") or 19092)


def probe_kafka(port: int) -> bool:
    """The broker answers an ApiVersions v0 request (the probe kafka.sh uses)."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as s:
            s.sendall(bytes.fromhex("0000000a0012000000000007ffff"))
            reply = s.recv(10)
    except OSError:
        return False
    return len(reply) == 10 and reply[4:10] == bytes.fromhex("000000070000")


def _script(name: str, command: str, timeout_s: float) -> None:
    script = DEPLOY_LOCAL / f"{name}.sh"
    if not script.exists():
        raise RuntimeError(f"{script} not found: benchmarks start servers from a source checkout")
    proc = subprocess.run(
        ["bash", str(script), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"deploy/local/{name}.sh {command} failed:\n{proc.stdout}{proc.stderr}")


@contextmanager
def _running(name: str, label: str, where: str, up: bool, start_s: float, stop_s: float
             ) -> Iterator[None]:  # fmt: skip
    """The deploy/local server ``name``: reused when ``up``, else started here and stopped
    on exit."""
    if not up:
        print(f"starting {label} on {where} (deploy/local/{name}.sh)", file=sys.stderr)
        _script(name, "start", start_s)
    try:
        yield
    finally:
        if not up:
            _script(name, "stop", stop_s)


@contextmanager
def kafka() -> Iterator[str]:
    """Bootstrap address of a Kafka broker: ``LLMOPS_KAFKA_BOOTSTRAP`` if set, else the
    deploy/local broker (started here, and stopped on exit, if it was not running)."""
    configured = os.environ.get("LLMOPS_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    port = kafka_port()
    with _running("kafka", "Kafka", f"{HOST}:{port}", probe_kafka(port), 240, 120):
        yield f"{HOST}:{port}"


def redis_port() -> int:
    return int(os.environ.get("LLMOPS_REDIS_PORT") or 16379)


def probe_redis(port: int) -> bool:
    """The server answers PING with +PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(7)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


@contextmanager
def redis() -> Iterator[tuple[str, int]]:
    """(host, port) of a Redis: the deploy/local one (started here, and stopped on exit, if
    it was not running)."""
    port = redis_port()
    with _running("redis", "Redis", f"{HOST}:{port}", probe_redis(port), 60, 60):
        yield HOST, port


def opa_url() -> str:
    return f"http://{HOST}:{int(os.environ.get('LLMOPS_OPA_PORT') or 18181)}"


def probe_opa(url: str) -> bool:
    """GET /health answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextmanager
def opa() -> Iterator[str]:
    """URL of an OPA server serving deploy/opa/policies: the deploy/local one (started here,
    and stopped on exit, if it was not running)."""
    url = opa_url()
    with _running("opa", "OPA", url, probe_opa(url), 120, 60):
        yield url


def postgres_port() -> int:
    return int(os.environ.get("LLMOPS_POSTGRES_PORT") or 15432)


def probe_postgres(port: int) -> bool:
    """``SELECT 1`` answers as role ``llmops`` on database ``llmops`` (trust auth)."""
    import psycopg

    try:
        with psycopg.connect(
            host=HOST, port=port, user="llmops", dbname="llmops", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


@contextmanager
def postgres() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database of its own (created here, dropped on exit) on
    the deploy/local server (started here, and stopped on exit, if it was not running)."""
    import uuid

    import psycopg

    port = postgres_port()
    database = f"llmops_bench_{uuid.uuid4().hex[:8]}"
    admin = {"host": HOST, "port": port, "user": "llmops", "dbname": "llmops", "autocommit": True}
    with _running("postgres", "PostgreSQL", f"{HOST}:{port}", probe_postgres(port), 180, 120):
        with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
            conn.execute(f"CREATE DATABASE {database}")
        try:
            yield f"postgresql+psycopg://llmops@{HOST}:{port}/{database}"
        finally:
            with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def start_service(name: str, env: dict[str, str], log: Any) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m services.<name>`` on a free port with ``env`` (``LLMOPS__...``
    settings) on top of ours; wait until it reports SERVING. (process, address)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    upper = name.upper()
    full = {
        **os.environ,
        f"LLMOPS__SERVICES__{upper}__PORT": str(port),
        f"LLMOPS__SERVICES__{upper}__ADMIN_PORT": "0",
        "LLMOPS__SERVER__ACCESS_LOG": "false",  # the baselines run without access logs too
        "LLMOPS__LOGGING__LEVEL": "warning",
        # plaintext, as the baselines are served; `llmops bench noop` measures what TLS and
        # authentication add
        "LLMOPS__SECURITY__INSECURE": "true",
        f"LLMOPS__SERVICES__{upper}__ADMIN_GRPC_PORT": "0",  # admin calls on the same port
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=full,
                            stdout=log, stderr=log)  # fmt: skip
    address = f"{HOST}:{port}"
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} service exited at start; see its log")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the {name} service did not become SERVING within 60 s")
