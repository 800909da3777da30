"""``llmops bench governance``: policy decisions, the embedded Wasm engine in-process vs the
OPA server's REST API, on the same policy (llmops/registry/alias/decision) and the same inputs.

Cases, each sequential from one caller after a warm-up (and OPA also with 16 concurrent
requests, its best throughput from one Python process):
  alias_allow  the SetAlias gate allowing a documented model (no host builtin call)
  alias_deny5  the same gate denying for 5 reasons (5 host ``sprintf`` calls from Wasm)
  domain_*     PolicyDecisions.evaluate over the Wasm engine: input checks, secrets
               stripped, UUIDv7, the AuditEvent built and buffered (into a list here)
  evaluate_grpc, registry_read_*_grpc
               Evaluate and GetArtifact through gRPC on a governance service of its own,
               interleaved with noop_grpc_bare (an empty RPC of a bare grpc.aio server: the
               floor of loopback and the Python gRPC stack on this machine)
  verify_audit VerifyAudit's check of one chain (200k records; --quick 50k) stored in a chdb
               database of the bench's own: ``records_per_s`` (best of 3); checked inside
               ClickHouse (the default), and as ``verify_audit_readback`` every record read
               back and recomputed in Python (governance.audit_verify_in_store: false)
  audit_append_publish
               producers' side of the audit trail: n audit records built by
               ServiceEvents.audit_event and published through the mesh's EventPublisher
               into the embedded event log (LocalLog, fsync on), timed until flush() says
               every record is durable: ``records_per_s``; latency = one build + publish
  audit_append_chain
               the audit writer's side: AuditWriter steps over those raw records (poll,
               chain with SHA-256, append to llmops.audit.chained.v1 durably, anchor the
               heads in a SQLite registry store, commit): ``records_per_s``; latency = one
               step (a batch of up to 5,000)
Systems: ``llmops`` (WasmPolicyEngine.evaluate_now), ``opa-rest`` (OpaServerEngine: the
pooled aiohttp session of opa-python-client, POST /v1/data/...?provenance=true).

The OPA server is the deploy/local one (LLMOPS_OPA_PORT, default 18181): reused when it
answers, else started here and stopped at the end. Prints the BENCH.md JSON line last on
stdout (target ``governance``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.events.port import ServiceEvents
from llmops.policy.wasm import WasmPolicyEngine
from services.governance.policy_decisions import PolicyDecisions
from services.governance.policy_opa import OpaConnection, OpaServerEngine

PATH = "llmops/registry/alias/decision"
CARD: dict[str, Any] = {
    "intended_use": "Summarize guest reviews on property pages",
    "risk_tier": "limited",
    "limitations": ["English and Dutch reviews only"],
    "evaluations": [{"metric": "rougeL", "value": 0.41}],
    "license": "Apache-2.0",
}
ALLOW: dict[str, Any] = {
    "alias": "champion",
    "artifact": {
        "kind": "model",
        "name": "property-summary-llm",
        "version": 7,
        "state": "approved",
        "created_by": "user:alice",
        "card": CARD,
    },
    "approvals": [{"by": "user:bob"}],
    "markets": ["NL", "FR"],
}
DENY5: dict[str, Any] = {
    **ALLOW,
    "artifact": {**ALLOW["artifact"], "card": {**CARD, "risk_tier": "high"}},
    "approvals": [{"by": "user:alice"}],
    "markets": ["NL", "FR", "XX"],
}
INPUTS = {"alias_allow": ALLOW, "alias_deny5": DENY5}


class ListEvents:
    """An event publisher that keeps what it is given (the domain's publish cost only)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def has_room(self, count: int) -> bool:
        return True

    def publish(self, envelope: Any) -> None:
        self.events.append(envelope)


def sync_case(name: str, call: Callable[[], object], n: int) -> Case:
    for _ in range(min(n // 10, 2000)):
        call()
    lat = []
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        t = clock()
        call()
        lat.append(clock() - t)
    return Case(name, "llmops", lat, clock() - start)


async def async_case(
    name: str, system: str, call: Callable[[], Awaitable[object]], n: int, concurrency: int
) -> Case:
    for _ in range(min(n // 10, 500)):
        await call()
    lat: list[float] = []
    clock = time.perf_counter

    async def worker(count: int) -> None:
        for _ in range(count):
            t = clock()
            await call()
            lat.append(clock() - t)

    start = clock()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return Case(name, system, lat, clock() - start, concurrency)


def main(*, quick: bool) -> None:
    with servers.opa() as url:
        cases, ratios = asyncio.run(_run(url, quick))
    cases += _grpc_cases(quick)
    cases += _verify_cases(50_000 if quick else 200_000)
    cases += _audit_append_cases(50_000 if quick else 200_000)
    emit("governance", [c.summary() for c in cases], ratios)


def _grpc_cases(quick: bool) -> list[Case]:
    """Evaluate and a registry read through gRPC on a governance service of its own
    (embedded Wasm engine, the demo artifacts), sequential: on SQLite, then the read again
    on PostgreSQL (a database of its own on the deploy/local server)."""
    n = 2_000 if quick else 20_000
    cases = _grpc_service({"LLMOPS__GOVERNANCE__STORE": "sqlite"}, n, evaluate=True, store="sqlite")
    with servers.postgres() as dsn:
        cases += _grpc_service(
            {"LLMOPS__GOVERNANCE__STORE": "postgres", "LLMOPS__GOVERNANCE__DSN": dsn},
            n,
            evaluate=False,
            store="postgres",
        )
    return cases


def _grpc_service(env: dict[str, str], n: int, *, evaluate: bool, store: str) -> list[Case]:
    import tempfile

    import uvloop

    with tempfile.TemporaryDirectory(prefix="llmops-bench-governance-") as tmp:
        log_path = Path(tmp) / "service.log"
        with log_path.open("wb") as log:
            proc, address = servers.start_service(
                "governance",
                {
                    "LLMOPS__STATE_DIR": tmp,
                    "LLMOPS__EVENTS__BACKEND": "local",
                    "LLMOPS__GOVERNANCE__POLICY_ENGINE": "wasm",
                    "LLMOPS__GOVERNANCE__DEMO_DATA": "on",
                    **env,
                },
                log,
            )
            try:
                return uvloop.run(_grpc_run(address, n, evaluate=evaluate, store=store))
            finally:
                proc.terminate()
                proc.wait(30)


def _verify_cases(n: int, runs: int = 3) -> list[Case]:
    """VerifyAudit (AuditTrail.verify) over one chain of ``n`` records chained by the audit
    writer's code and loaded into the ``audit`` table of a chdb database of the bench's own;
    the head anchored. ``records_per_s`` is the best of ``runs`` verifications."""
    import tempfile
    import uuid
    from datetime import UTC, datetime, timedelta

    from chdb import session as chdb_session

    from llmops.clickhouse.chdb_store import ChdbStore
    from llmops.clickhouse.migrations import apply_migrations
    from llmops.clickhouse.rows import audit_columns
    from llmops.events.topics import AUDIT_CHAINED_TOPIC
    from llmops.v1 import events_pb2
    from services.governance import audit_chain
    from services.governance.audit_store import ClickHouseAuditRecords
    from services.governance.audit_trail import AuditTrail

    t0 = datetime.now(UTC) - timedelta(days=1)
    records = []
    for i in range(n):
        event = events_pb2.AuditEvent(
            event_id=str(uuid.UUID(int=(0x0190B6A0 << 96) | (7 << 76) | (2 << 62) | i)),
            tenant="bench",
            action="artifact.register" if i % 3 else "alias.set",
            resource=events_pb2.Resource(type="model", name=f"model-{i % 50}", version=str(i)),
            outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
            reason=f"change {i}",
        )
        event.event_time.FromMilliseconds(int(t0.timestamp() * 1000) + i)
        event.actor.id = "user:alice"
        records.append(event)
    chained, heads = audit_chain.append(records, {})
    chain = "tenant:bench"

    class Anchored:
        def head(self, name: str) -> audit_chain.Head | None:
            return heads.get(name)

    with tempfile.TemporaryDirectory(prefix="llmops-bench-audit-") as tmp:
        session = chdb_session.Session(tmp)  # type: ignore[no-untyped-call]
        try:
            store = ChdbStore(session, database="bench_audit")
            apply_migrations(store)
            step = 50_000
            for k in range(0, n, step):
                items = [
                    (AUDIT_CHAINED_TOPIC, 0, k + j, events_pb2.EventEnvelope(audit=r))
                    for j, r in enumerate(chained[k : k + step])
                ]
                store.insert("audit", audit_columns(items))
            cases = []
            for name, in_store in (("verify_audit", True), ("verify_audit_readback", False)):
                trail = AuditTrail(ClickHouseAuditRecords(store), Anchored(), in_store=in_store)  # type: ignore[arg-type]
                lat = []
                for _ in range(runs):
                    start = time.perf_counter()
                    result = asyncio.run(trail.verify(chain))
                    lat.append(time.perf_counter() - start)
                    assert result.valid and result.records_checked == n, result.message
                extra = {"records": n, "records_per_s": round(n / min(lat))}
                cases.append(Case(name, "llmops", lat, sum(lat), extra=extra))
        finally:
            session.cleanup()  # type: ignore[no-untyped-call]
    return cases


def _audit_append_cases(n: int) -> list[Case]:
    """Audit append into the event log, producer side and audit-writer side (see the module
    docstring): the embedded default path (LocalLog with fsync, SQLite anchors), the
    publisher's default batch and linger, one tenant (one chain)."""
    import tempfile

    from llmops.events.local_log import LocalLog
    from llmops.events.publisher import EventPublisher
    from llmops.events.topics import AUDIT_CHAINED_TOPIC, KIND_TOPICS
    from llmops.identity import system
    from services.governance.audit_store import SqlAnchorStore
    from services.governance.audit_writer import AuditWriter
    from services.governance.store_sql import SqlRegistryStore

    actor = system("bench")
    with tempfile.TemporaryDirectory(prefix="llmops-bench-audit-append-") as tmp:
        log = LocalLog(Path(tmp) / "events", fsync=True)
        publisher = EventPublisher(log, capacity=n + 1, producer="bench").start()
        events = ServiceEvents("llmops.v1.GovernanceService", lambda: publisher)
        lat: list[float] = []
        clock = time.perf_counter
        start = clock()
        for i in range(n):
            t = clock()
            events.publish(
                events.audit_event(
                    "artifact.register",
                    "model",
                    f"model-{i % 50}",
                    version=str(i),
                    after={"digest": "sha256:" + "ab" * 32},
                    reason="bench",
                    tenant="bench",
                    actor=actor,
                )
            )
            lat.append(clock() - t)
        assert publisher.flush(120), "the publisher did not deliver every record"
        wall = clock() - start
        publisher.close()
        publish = Case(
            "audit_append_publish",
            "llmops",
            lat,
            wall,
            extra={"records": n, "records_per_s": round(n / wall), "log": "local+fsync"},
        )

        store = SqlRegistryStore.sqlite(Path(tmp) / "registry.sqlite3")
        asyncio.run(store.open())
        writer = AuditWriter(log, SqlAnchorStore(store.engine), poll_timeout_s=0.05)
        writer.open()
        steps: list[float] = []
        start = clock()
        while writer.appended < n:
            t = clock()
            if writer.step() == 0 and clock() - start > 120:
                raise AssertionError(f"the audit writer chained {writer.appended} of {n}")
            steps.append(clock() - t)
        wall = clock() - start
        writer.close()
        asyncio.run(store.close())
        chained = sum(1 for _ in _count(log, AUDIT_CHAINED_TOPIC, n))
        assert chained == n, f"{chained} chained records in the log, expected {n}"
        assert KIND_TOPICS["audit"] != AUDIT_CHAINED_TOPIC
        log.close()
    chain = Case(
        "audit_append_chain",
        "llmops",
        steps,
        wall,
        extra={"records": n, "records_per_s": round(n / wall), "log": "local+fsync"},
    )
    return [publish, chain]


def _count(log: Any, topic: str, n: int) -> Any:
    """The records of ``topic`` (read back, to check the bench wrote what it says)."""
    consumer = log.consumer(f"bench-count-{time.monotonic_ns()}", [topic])
    try:
        seen = 0
        while seen < n:
            got = consumer.poll(10_000, 0.5)
            if not got:
                break
            seen += len(got)
            yield from got
    finally:
        consumer.close()


async def _grpc_run(address: str, n: int, *, evaluate: bool, store: str) -> list[Case]:
    """Sequential calls from one client on uvloop, in 10 interleaved rounds with the same
    number of calls to a bare grpc.aio server's empty unary RPC (``benchmarks.noop``'s
    ``grpc-bare``, its own process): the floor that loopback, the Python gRPC stack and the
    client put under every number on this machine, measured beside them."""
    import subprocess
    import tempfile

    import grpc
    from google.protobuf import struct_pb2

    from benchmarks.noop import METHOD, _identity, _start_server
    from llmops.v1 import governance_pb2, governance_pb2_grpc

    with tempfile.TemporaryFile("w+") as bare_log:
        bare, bare_port = _start_server("grpc-bare", bare_log, "")
        try:
            async with (
                grpc.aio.insecure_channel(address) as channel,
                grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}") as bare_channel,
            ):
                stub = governance_pb2_grpc.GovernanceServiceStub(channel)
                document = struct_pb2.Struct()
                document.update(ALLOW)
                evaluate_request = governance_pb2.EvaluateRequest(path=PATH, input=document)
                ref = governance_pb2.ArtifactRef(
                    kind=governance_pb2.ARTIFACT_KIND_MODEL,
                    name="property-summary-llm",
                    alias="champion",
                )
                read = governance_pb2.GetArtifactRequest(ref=ref)
                deadline = time.monotonic() + 60
                while True:  # the demo artifacts are seeded in the background after SERVING
                    try:
                        await stub.GetArtifact(read, timeout=5)
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                noop = bare_channel.unary_unary(
                    METHOD, request_serializer=_identity, response_deserializer=_identity
                )
                calls: dict[tuple[str, str], Callable[[], Awaitable[object]]] = {
                    ("noop_grpc_bare", "grpc-bare"): partial(noop, b"", timeout=5),
                    (f"registry_read_{store}_grpc", "llmops"): partial(
                        stub.GetArtifact, read, timeout=5
                    ),
                }
                if evaluate:
                    calls[("evaluate_grpc", "llmops")] = partial(
                        stub.Evaluate, evaluate_request, timeout=5
                    )
                return await _interleaved(calls, n, rounds=10)
        finally:
            bare.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                bare.wait(10)


async def _interleaved(
    calls: dict[tuple[str, str], Callable[[], Awaitable[object]]], n: int, rounds: int
) -> list[Case]:
    """``n`` sequential calls of each, in ``rounds`` rounds that alternate their order, after
    a warm-up of each; one Case per call."""
    cases = {key: Case(key[0], key[1], []) for key in calls}
    for call in calls.values():
        for _ in range(min(n // 10, 500)):
            await call()
    clock = time.perf_counter
    order = list(calls)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            call, case = calls[key], cases[key]
            start = clock()
            for _ in range(n // rounds):
                t = clock()
                await call()
                case.latencies_s.append(clock() - t)
            case.wall_s += clock() - start
    return list(cases.values())


async def _run(url: str, quick: bool) -> tuple[list[Case], dict[str, float]]:
    n_wasm, n_opa = (5_000, 1_000) if quick else (50_000, 10_000)
    connection = OpaConnection(url, timeout_s=5)
    try:
        wasm = WasmPolicyEngine()
        opa = OpaServerEngine(connection)
        assert opa.bundle.revision == wasm.bundle.revision, "OPA serves another bundle"
        domain = PolicyDecisions(
            lambda: wasm,
            ServiceEvents("bench", lambda: ListEvents()),  # type: ignore[arg-type,return-value]
        )
        cases: list[Case] = []
        for name, doc in INPUTS.items():
            assert (await opa.evaluate(PATH, doc)).result == wasm.evaluate_now(PATH, doc).result
            cases.append(sync_case(name, partial(wasm.evaluate_now, PATH, doc), n_wasm))
            cases.append(
                await async_case(
                    f"domain_{name.removeprefix('alias_')}",
                    "llmops",
                    partial(domain.evaluate, PATH, doc),
                    n_wasm,
                    1,
                )
            )
            for concurrency in (1, 16):
                cases.append(
                    await async_case(
                        name,
                        "opa-rest",
                        partial(opa.evaluate, PATH, doc),
                        n_opa,
                        concurrency,
                    )
                )
    finally:
        await connection.close()
    rows = [c.summary() for c in cases]
    ratios = {}
    for name in INPUTS:
        ours = next(r for r in rows if r["case"] == name and r["system"] == "llmops")
        best_opa = max(r["rps"] for r in rows if r["case"] == name and r["system"] == "opa-rest")
        ratios[f"{name}.rps.llmops/opa-rest"] = round(ours["rps"] / best_opa, 2)
    return cases, ratios
