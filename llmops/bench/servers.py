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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
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
def kafka() -> Iterator[str]:
    """Bootstrap address of a Kafka broker: ``LLMOPS_KAFKA_BOOTSTRAP`` if set, else the
    deploy/local broker (started here, and stopped on exit, if it was not running)."""
    configured = os.environ.get("LLMOPS_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    port = kafka_port()
    started = False
    if not probe_kafka(port):
        print(f"starting Kafka on {HOST}:{port} (deploy/local/kafka.sh)", file=sys.stderr)
        _script("kafka", "start", 240)
        started = True
    try:
        yield f"{HOST}:{port}"
    finally:
        if started:
            _script("kafka", "stop", 120)


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
    started = False
    if not probe_redis(port):
        print(f"starting Redis on {HOST}:{port} (deploy/local/redis.sh)", file=sys.stderr)
        _script("redis", "start", 60)
        started = True
    try:
        yield HOST, port
    finally:
        if started:
            _script("redis", "stop", 60)
