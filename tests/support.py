"""Helpers shared by tests: free ports, and a mesh started as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmops.mesh import SERVICES


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """No listener on the port. SO_REUSEADDR, as servers set it, so that connections of the
    stopped server lingering in TIME_WAIT do not count; a live listener still does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def mesh_credentials(state_dir: Path, token: str | None = "operator") -> grpc.ChannelCredentials:
    """What a caller of a mesh started with ``state_dir`` presents: TLS against the mesh's
    local CA, the mesh's client certificate, and the bearer token ``<token>.token`` of
    ``state_dir/security`` (``token=None``: none; the certificate names the caller
    ``service:mesh``). Raises FileNotFoundError until the mesh has made them."""
    sec = state_dir / "security"
    creds = grpc.ssl_channel_credentials(
        (sec / "ca.pem").read_bytes(),
        (sec / "mesh.key").read_bytes(),
        (sec / "mesh.pem").read_bytes(),
    )
    if token is None:
        return creds
    secret = (sec / f"{token}.token").read_text().strip()
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(secret))


_REPO = Path(__file__).resolve().parents[1]


@dataclass
class RunningMesh:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    ports: dict[str, int]
    admin_ports: dict[str, int]
    log_path: Path

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def state_dir(self) -> Path:
        return Path(self.env["LLMOPS__STATE_DIR"])

    def channel(self, name: str, token: str | None = "operator") -> grpc.Channel:
        """A blocking channel to service ``name``, as the operator by default."""
        return grpc.secure_channel(self.address(name), mesh_credentials(self.state_dir, token))

    def aio_channel(self, name: str, token: str | None = "operator") -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address(name), mesh_credentials(self.state_dir, token))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_sink_caught_up(self, topic: str, within_s: float = 120) -> None:
        """Until the embedded sink of ``topic`` has stored and committed every record the
        log held: its lag gauge (``llmops_sink_lag_records``, exported every 5 s) reads 0
        on every partition."""
        url = f"http://127.0.0.1:{self.env['LLMOPS__SINK__ADMIN_PORT']}/metrics"
        deadline = time.monotonic() + within_s
        lags: list[float] = []
        while True:
            with urllib.request.urlopen(url, timeout=10) as reply:
                text = reply.read().decode()
            lags = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("llmops_sink_lag_records{") and f'topic="{topic}"' in line
            ]
            if lags and not any(lags):
                return
            assert time.monotonic() < deadline, f"the {topic} sink still lags: {lags}"
            time.sleep(1)

    def stop(self, within_s: float = 60) -> None:
        """Stop the mesh as an operator would (SIGTERM: a graceful shutdown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(within_s)

    def stored_rows(self, sql: str) -> list[dict[str, object]]:
        """Rows of ``sql`` read straight from the stopped mesh's ClickHouse (no row cap, no
        endpoint), in a process of their own: chdb opens one data directory per process."""
        assert self.proc.poll() is not None, "stop the mesh first: chdb has one owner"
        done = subprocess.run(
            [sys.executable, "-m", "tests.read_clickhouse", sql],
            env=self.env, capture_output=True, text=True, timeout=120, cwd=_REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        rows: list[dict[str, object]] = json.loads(done.stdout)
        return rows


def mesh_env(
    tmp: Path, names: list[str] | None = None, *, insecure: bool = False
) -> tuple[dict[str, str], dict, dict]:
    """Environment of a mesh on free ports with its state under ``tmp``. ``insecure``:
    plaintext without authentication, for tests of a service's behaviour that talk to it
    over plain channels (the security tests and `llmops up` tests use the credentials)."""
    names = names or list(SERVICES)
    ports = free_ports(2 * len(SERVICES) + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS__")}
    env["LLMOPS__STATE_DIR"] = str(tmp / "state")
    grpc_ports, admin_ports = {}, {}
    for i, name in enumerate(SERVICES):
        grpc_ports[name], admin_ports[name] = ports[2 * i], ports[2 * i + 1]
        env[f"LLMOPS__SERVICES__{name.upper()}__PORT"] = str(grpc_ports[name])
        env[f"LLMOPS__SERVICES__{name.upper()}__ADMIN_PORT"] = str(admin_ports[name])
    env["LLMOPS__SINK__ADMIN_PORT"] = str(ports[-1])
    if insecure:
        env["LLMOPS__SECURITY__INSECURE"] = "true"
    return env, grpc_ports, admin_ports


def wait_serving(
    address: str,
    service: str,
    timeout: float,
    state_dir: Path | None = None,
    proc: subprocess.Popen[str] | None = None,
) -> float:
    """Poll the standard gRPC health protocol until SERVING; return seconds waited.
    ``state_dir``: the mesh's, when it serves TLS (its credentials appear once it starts);
    None for a plaintext server. ``proc``: the server's process — its exit ends the wait
    at once (a config error, say) instead of at the timeout."""
    start = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise TimeoutError(f"{service}: the process exited with {proc.returncode}")
        try:
            channel = (
                grpc.insecure_channel(address)
                if state_dir is None
                else grpc.secure_channel(address, mesh_credentials(state_dir, None))
            )
        except FileNotFoundError:  # the mesh has not made its credentials yet
            channel = None
        if channel is not None:
            with channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - start
                except grpc.RpcError:
                    pass
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{service} at {address} not SERVING after {timeout}s")
        time.sleep(0.1)


@contextmanager
def running(
    argv: list[str], tmp: Path, env: dict[str, str], **kw: object
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    log_path = tmp / "server.log"
    runs = 1
    while log_path.exists():  # an earlier run's log is kept: a restart's test reads both
        runs += 1
        log_path = tmp / f"server.{runs}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def llmops_up(
    tmp: Path, within_s: float = 60, extra_env: dict[str, str] | None = None
) -> Iterator[RunningMesh]:
    """`llmops up` as a newcomer runs it, in a subprocess, once every service is SERVING."""
    env, ports, admin_ports = mesh_env(tmp)
    env.update(extra_env or {})
    # a small demo collection: embedding 500 listings costs ~10 s of CPU that the other
    # services' tests (50 ms guardrail budgets) would share on 2 cores
    env["LLMOPS__EMBEDDING__DEMO_PROPERTIES"] = "80"
    # label queues fill within seconds, not the default 15 s + 10 s
    env["LLMOPS__FEEDBACK__QUEUE_FILL_INTERVAL_S"] = "1"
    env["LLMOPS__FEEDBACK__QUEUE_SETTLE_S"] = "0.5"
    env["LLMOPS__FEEDBACK__STATS_REFRESH_INTERVAL_S"] = "1"
    with running(["llmops", "up"], tmp, env) as (proc, log_path):
        mesh = RunningMesh(proc, env, ports, admin_ports, log_path)
        start = time.monotonic()
        try:
            for name, entry in SERVICES.items():
                wait_serving(
                    mesh.address(name),
                    entry.grpc_service,
                    within_s - (time.monotonic() - start),
                    mesh.state_dir,
                    proc,
                )
        except TimeoutError:
            raise AssertionError(
                f"mesh did not come up within {within_s:.0f} s (or exited):\n{mesh.log()[-3000:]}"
            ) from None
        yield mesh


def run_llmops(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    """One `llmops` CLI command against ``mesh`` (its config through the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "llmops", *args],
        env=mesh.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
