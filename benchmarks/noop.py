"""``llmops bench noop``: the shared runtime's per-call overhead.

Two servers run the *same* empty unary handler (bytes in, bytes out), each in its own process
on uvloop: ``llmops`` behind the runtime's :class:`RuntimeInterceptor` (request id, deadline,
error mapping, Prometheus metrics, a JSON access-log line per call written to a file),
registered the way every service's handlers are (pre-wrapped, not grpc's interceptor hook), and
``grpc-bare`` with no interceptor at all. One client process drives both over loopback in
interleaved rounds, so machine noise hits both alike. Cases: sequential calls
(concurrency 1, where the p50 overhead is plainest) and concurrent calls.

The same pair runs again secured (``llmops-tls-auth`` and ``grpc-bare-tls``): mutual TLS with
the certificates embedded mode makes, and for llmops every call authenticated by its bearer
token and authorised by the Rego policy (:class:`~llmops.server.auth.CallGuard`), as
``llmops up`` serves by default; the bare server only terminates TLS. The issue's bound is
llmops-tls-auth within +30% of grpc-bare-tls.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import grpc

from benchmarks.report import Case, emit

METHOD = "/benchmarks.Noop/Call"
SYSTEMS = ("llmops", "grpc-bare", "llmops-tls-auth", "grpc-bare-tls")
PAIRS = (("llmops", "grpc-bare"), ("llmops-tls-auth", "grpc-bare-tls"))


def _identity(b: bytes) -> bytes:
    return b


async def _noop(request: bytes, context: Any) -> bytes:
    return b""


def _config(state_dir: str) -> Any:
    from llmops.config import MeshConfig

    return MeshConfig.model_validate({"state_dir": state_dir})


async def _serve(system: str, port: int, state_dir: str) -> None:
    from prometheus_client import CollectorRegistry

    from llmops.logging import configure_logging
    from llmops.security import server_security
    from llmops.server.access_log import AccessLog
    from llmops.server.auth import CallGuard
    from llmops.server.interceptor import RpcMetrics, RuntimeInterceptor, ServerState

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _noop, request_deserializer=_identity, response_serializer=_identity
    )
    generic = grpc.method_handlers_generic_handler("benchmarks.Noop", {"Call": handler})
    configure_logging("info", "json")  # stderr: the parent points it at a file (stdout: READY)
    secured = system.endswith("tls") or system.endswith("tls-auth")
    security = server_security(_config(state_dir)) if secured else None
    if system.startswith("llmops"):
        access_log = AccessLog("json")  # as `llmops up` logs every RPC, on stderr
        registry = CollectorRegistry()
        runtime = RuntimeInterceptor(
            "benchmarks.Noop",
            RpcMetrics(registry),
            ServerState(),
            access_log=access_log,
            guard=CallGuard(security, registry) if security is not None else None,
        )

        def stop(*_: object) -> None:  # terminate(): write the buffered lines, then exit
            access_log.close()
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        # the way GrpcService registers every service's handlers: pre-wrapped once
        generic = runtime.wrap_generic_handler(generic)
    server.add_generic_rpc_handlers((generic,))
    if security is None:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        credentials = grpc.ssl_server_credentials(
            [(security.private_key, security.cert_chain)],
            root_certificates=security.client_ca,
            require_client_auth=True,
        )
        bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    print(f"READY {bound}", flush=True)
    await server.wait_for_termination()


def _start_server(system: str, log: IO[str], state_dir: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.noop", "serve", system, "0", state_dir],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "READY":
        proc.kill()
        raise RuntimeError(f"{system} bench server failed to start")
    return proc, int(line[1])


async def _drive(stub: Any, n: int, concurrency: int, sink: list[float]) -> float:
    """Run ``n`` calls from ``concurrency`` workers; append latencies; return wall seconds."""
    per_worker = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def worker(count: int) -> None:
        perf = time.perf_counter
        for _ in range(count):
            t0 = perf()
            await stub(b"", timeout=5)
            sink.append(perf() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in per_worker))
    return time.perf_counter() - start


def _channel(system: str, port: int, state_dir: str) -> tuple[grpc.aio.Channel, Any]:
    """The channel to ``system`` and the metadata of each call (the bearer token, as the
    mesh's clients send it)."""
    if not system.endswith(("tls", "tls-auth")):
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}"), None
    from llmops.clients import bearer_metadata, channel_credentials
    from llmops.security import client_security

    security = client_security(_config(state_dir), as_operator=system.startswith("llmops"))
    assert security is not None
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(security))
    return channel, bearer_metadata(security) or None


async def _run(
    ports: dict[str, int], calls: int, concurrency: int, rounds: int, state_dir: str
) -> list[Case]:
    cases = {
        (label, s): Case(label, s, concurrency=c)
        for label, c in (("noop_unary_seq", 1), ("noop_unary", concurrency))
        for s in SYSTEMS
    }
    opened = {s: _channel(s, p, state_dir) for s, p in ports.items()}
    channels = {s: ch for s, (ch, _) in opened.items()}
    stubs = {
        s: functools.partial(
            ch.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity),
            metadata=md,
        )
        for s, (ch, md) in opened.items()
    }
    try:
        for s in SYSTEMS:  # warm-up: connections, code paths, metric children
            await _drive(stubs[s], 500, concurrency, [])
        for r in range(rounds):
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]  # each pair's members adjacent
            for label, conc in (("noop_unary_seq", 1), ("noop_unary", concurrency)):
                for s in order:
                    case = cases[(label, s)]
                    case.wall_s += await _drive(stubs[s], calls // rounds, conc, case.latencies_s)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        for ch in channels.values():
            await ch.close(None)
    return list(cases.values())


def main(*, quick: bool, concurrency: int, calls: int | None) -> None:
    calls = calls or (3000 if quick else 20000)
    rounds = 4 if quick else 10
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        log_path = Path(tmp, "access.log")
        state_dir = str(Path(tmp, "state"))
        from llmops.security import provision

        provision(_config(state_dir))  # the local CA, certificates and operator token
        try:
            ports = {}
            for s in SYSTEMS:
                with log_path.open("a") as log:
                    proc, port = _start_server(s, log, state_dir)
                procs.append(proc)
                ports[s] = port
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                cases = runner.run(_run(ports, calls, concurrency, rounds, state_dir))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
        with log_path.open() as log:
            logged = sum(1 for line in log if '"event":"rpc"' in line)
    summaries = [c.summary() for c in cases]
    by = {(c["case"], c["system"]): c for c in summaries}
    ratios: dict[str, float] = {}
    for label in ("noop_unary_seq", "noop_unary"):
        for ours, theirs in PAIRS:
            mine, bare = by[(label, ours)], by[(label, theirs)]
            for stat in ("p50_ms", "p99_ms"):
                ratios[f"{label}.{stat}.{ours}/{theirs}"] = round(mine[stat] / bare[stat], 3)
            ratios[f"{label}.rps.{ours}/{theirs}"] = round(mine["rps"] / bare["rps"], 3)
    for c in summaries:
        if c["system"].startswith("llmops"):
            c["access_log_lines_total"] = logged
    emit("noop", summaries, ratios)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    import uvloop

    uvloop.run(_serve(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
