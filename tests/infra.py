"""pytest plugin: real infrastructure for integration tests (loaded by tests/conftest.py).

Session-scoped fixtures, each the address of a real server on 127.0.0.1:

    redis_url         redis://127.0.0.1:16379/0                    (LLMOPS_REDIS_PORT)
    kafka_bootstrap   127.0.0.1:19092                              (LLMOPS_KAFKA_PORT)
    clickhouse_dsn    clickhouse://default@127.0.0.1:19000/default (LLMOPS_CLICKHOUSE_PORT)
    opa_url           http://127.0.0.1:18181                       (LLMOPS_OPA_PORT)
    postgres_dsn      postgresql+psycopg://llmops@127.0.0.1:15432/llmops (LLMOPS_POSTGRES_PORT)
    chdb_session      a chdb ``session.Session`` on a temporary directory (in-process engine)

A server already answering on its port is reused and left running. Otherwise the fixture runs
``deploy/local/<name>.sh start`` and ``stop`` at the end of the session. When a server's
prerequisites are not installed (``<name>.sh check`` exits 2) the test is skipped with the
install command - except with ``CI=true`` or ``LLMOPS_REQUIRE_INFRA=1``, where it fails: CI must
never go green on skipped infra tests.

Every test that uses one of the server fixtures is marked ``infra`` automatically, so
``pytest -m "not infra"`` runs without servers and ``pytest -m infra`` runs only these tests.

With pytest-xdist, start the servers first (``bash deploy/local/all.sh start``): the workers
then all reuse them (a lock serializes starts, but the worker that started a server would stop
it when it finishes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"
HOST = "127.0.0.1"
INSTALL_CMD = "bash deploy/local/install.sh"

START_TIMEOUT_S = 240
SERVER_FIXTURES = frozenset(
    {"redis_url", "kafka_bootstrap", "clickhouse_dsn", "opa_url", "postgres_dsn", "zookeeper"}
)


def _port(env: str, default: int) -> int:
    raw = os.environ.get(env)
    return int(raw) if raw else default


def redis_port() -> int:
    return _port("LLMOPS_REDIS_PORT", 16379)


def kafka_port() -> int:
    return _port("LLMOPS_KAFKA_PORT", 19092)


def clickhouse_port() -> int:
    return _port("LLMOPS_CLICKHOUSE_PORT", 19000)


def clickhouse_http_port() -> int:
    return _port("LLMOPS_CLICKHOUSE_HTTP_PORT", 18123)


def opa_port() -> int:
    return _port("LLMOPS_OPA_PORT", 18181)


def postgres_port() -> int:
    return _port("LLMOPS_POSTGRES_PORT", 15432)


def zookeeper_port() -> int:
    return _port("LLMOPS_ZOOKEEPER_PORT", 12181)


def infra_required() -> bool:
    """CI=true or LLMOPS_REQUIRE_INFRA=1: a missing server fails the test instead of skipping."""
    truthy = {"1", "true", "yes", "on"}
    return (
        os.environ.get("CI", "").strip().lower() in truthy
        or os.environ.get("LLMOPS_REQUIRE_INFRA", "").strip().lower() in truthy
    )


# ---------------------------------------------------------------------------------------------
# Readiness probes (the same ones the shell scripts use, in Python).


def _exchange(port: int, payload: bytes, want: int, timeout: float = 2.0) -> bytes | None:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(payload)
            buf = b""
            while len(buf) < want:
                chunk = s.recv(want - len(buf))
                if not chunk:
                    break
                buf += chunk
            return buf
    except OSError:
        return None


def probe_redis() -> bool:
    return (_exchange(redis_port(), b"PING\r\n", 7) or b"").startswith(b"+PONG")


def probe_kafka() -> bool:
    # ApiVersions v0: size 10, api_key 18, version 0, correlation id 7, null client id.
    reply = _exchange(kafka_port(), bytes.fromhex("0000000a0012000000000007ffff"), 10)
    return reply is not None and len(reply) == 10 and reply[4:10] == bytes.fromhex("000000070000")


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except OSError:
        return None


def probe_clickhouse() -> bool:
    res = _http_get(f"http://{HOST}:{clickhouse_http_port()}/?query=SELECT%201")
    return res is not None and res[0] == 200 and res[1].strip() == b"1"


def probe_zookeeper() -> bool:
    """``srvr`` names the mode only while the server serves (``ruok`` says imok before)."""
    reply = _exchange(zookeeper_port(), b"srvr", 4096) or b""
    return b"Mode: standalone" in reply


def probe_opa() -> bool:
    res = _http_get(f"http://{HOST}:{opa_port()}/health")
    return res is not None and res[0] == 200


def probe_postgres(user: str = "llmops", database: str = "llmops") -> bool:
    """A v3 StartupMessage as ``user`` on ``database`` is answered by ReadyForQuery (trust auth).

    An ErrorResponse (no such role/database) or a password request is "not ready".
    """
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    body = struct.pack("!i", 196608) + params  # protocol 3.0
    try:
        with socket.create_connection((HOST, postgres_port()), timeout=2.0) as s:
            s.sendall(struct.pack("!i", len(body) + 4) + body)
            rfile = s.makefile("rb")
            while True:
                header = rfile.read(5)
                if len(header) < 5:
                    return False
                kind, size = header[:1], struct.unpack("!i", header[1:])[0]
                payload = rfile.read(size - 4)
                if kind == b"Z":
                    s.sendall(b"X\0\0\0\4")  # Terminate
                    return True
                if kind == b"E" or (kind == b"R" and payload[:4] != b"\0\0\0\0"):
                    return False
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------


def unavailable(message: str) -> None:
    if infra_required():
        pytest.fail(
            f"{message}\n(CI=true or LLMOPS_REQUIRE_INFRA=1: infra tests fail instead of skipping)",
            pytrace=False,
        )
    pytest.skip(message)


def _script(name: str, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY_LOCAL / f"{name}.sh"), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return ((proc.stdout or "") + (proc.stderr or "")).strip()


@contextlib.contextmanager
def _start_lock(name: str) -> Iterator[None]:
    state = Path(os.environ.get("LLMOPS_LOCAL_DIR") or REPO_ROOT / ".llmops" / "local")
    state.mkdir(parents=True, exist_ok=True)
    with open(state / f".{name}.start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _server(name: str, probe: Callable[[], bool]) -> Iterator[bool]:
    """Context: the server answers inside; True when this session started it (and stops it)."""
    with _start_lock(name):
        started = False if probe() else _start(name, probe)
    try:
        yield started
    finally:
        if started:
            stop = _script(name, "stop", 90)
            if stop.returncode != 0:
                print(f"warning: deploy/local/{name}.sh stop failed:\n{_output(stop)}")


def _start(name: str, probe: Callable[[], bool]) -> bool:
    check = _script(name, "check", 60)
    if check.returncode == 2:
        unavailable(f"{name} is not installed: {_output(check)}\nInstall everything: {INSTALL_CMD}")
    elif check.returncode != 0:
        pytest.fail(f"deploy/local/{name}.sh check failed:\n{_output(check)}", pytrace=False)
    try:
        start = _script(name, "start", START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _script(name, "stop", 90)
        pytest.fail(f"deploy/local/{name}.sh start took over {START_TIMEOUT_S}s", pytrace=False)
    if start.returncode == 2:
        unavailable(f"{name} is not installed: {_output(start)}\nInstall: {INSTALL_CMD}")
    elif start.returncode != 0:
        _script(name, "stop", 90)  # whatever half-started (e.g. Kafka up, topics not applied)
        pytest.fail(
            f"deploy/local/{name}.sh start failed (exit {start.returncode}):\n{_output(start)}",
            pytrace=False,
        )
    if not probe():
        _script(name, "stop", 90)
        pytest.fail(f"{name} started but does not answer its readiness probe", pytrace=False)
    return True


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with _server("redis", probe_redis):
        yield f"redis://{HOST}:{redis_port()}/0"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a KRaft broker with the topics of deploy/kafka/topics.yaml."""
    bootstrap = f"{HOST}:{kafka_port()}"
    with _server("kafka", probe_kafka) as started:
        if not started:  # kafka.sh start applies the spec; a reused broker gets it here
            apply = subprocess.run(
                [
                    sys.executable,
                    str(DEPLOY_LOCAL / "kafka_topics.py"),
                    "apply",
                    "--local",
                    "--bootstrap",
                    bootstrap,
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if apply.returncode != 0:
                pytest.fail(
                    f"applying deploy/kafka/topics.yaml failed:\n{_output(apply)}", pytrace=False
                )
        yield bootstrap


@pytest.fixture(scope="session")
def clickhouse_dsn() -> Iterator[str]:
    """Native-protocol DSN of a ClickHouse 18.16 server (clickhouse-driver)."""
    with _server("clickhouse", probe_clickhouse):
        yield f"clickhouse://default@{HOST}:{clickhouse_port()}/default"


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[str]:
    """``host:port`` of the ZooKeeper that the ClickHouse server's Replicated tables use
    (deploy/local/clickhouse.sh points the server at it; the server need not restart)."""
    with _server("zookeeper", probe_zookeeper):
        yield f"{HOST}:{zookeeper_port()}"


@pytest.fixture(scope="session")
def opa_url() -> Iterator[str]:
    """OPA server serving the bundle in deploy/opa/policies."""
    with _server("opa", probe_opa):
        yield f"http://{HOST}:{opa_port()}"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL 15 server: role ``llmops`` (trust auth, CREATEDB, not a
    superuser) owning database ``llmops``. psycopg takes it without the ``+psycopg`` suffix."""
    with _server("postgres", probe_postgres):
        yield f"postgresql+psycopg://llmops@{HOST}:{postgres_port()}/llmops"


@pytest.fixture(scope="session")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The in-process ClickHouse engine (modern DDL: TTL, codecs, Map, AggregatingMergeTree).

    chdb keeps one data directory per process: share this session instead of opening others.
    """
    from chdb import session as chdb_sessions

    sess = chdb_sessions.Session(str(tmp_path_factory.mktemp("chdb")))
    try:
        yield sess
    finally:
        sess.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "infra: needs a real server started by deploy/local"
        " (Redis, Kafka, ClickHouse, ZooKeeper, PostgreSQL, OPA)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.infra)
