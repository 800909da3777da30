"""`llmops up --production`: every service its own process, the sinks too, on the real local
servers, supervised. A `Run` goes through it and its prediction is found in ClickHouse; the
storefront smoke scenario passes against it; a killed service comes back; a stop leaves
nothing running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from llmops.mesh import SERVICES
from llmops.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from loadtests.storefront import COLLECTION
from tests.support import free_ports, mesh_credentials, wait_serving

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "local" / "production.yaml"


class ProductionMesh:
    def __init__(self, proc: subprocess.Popen[str], env: dict[str, str], log: Path) -> None:
        self.proc, self.env, self.log_path = proc, env, log

    @property
    def state_dir(self) -> Path:
        return Path(self.env["LLMOPS__STATE_DIR"])

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.env[f'LLMOPS__SERVICES__{name.upper()}__PORT']}"

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self) -> dict[str, int]:
        """The newest pid the supervisor reported for each process."""
        found: dict[str, int] = {}
        for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", self.log()):
            found[name] = int(pid)
        return found

    def llmops(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "llmops", *args]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )


def _database(postgres_dsn: str) -> str:
    """A database of this test's own: the registry seeds its demo into an empty one."""
    name = f"prod_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def production(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    kafka_bootstrap: str,
    postgres_dsn: str,
    opa_url: str,
) -> Iterator[ProductionMesh]:
    tmp = tmp_path_factory.mktemp("production")
    ports = free_ports(3 * len(SERVICES) + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS__")}
    database = _database(postgres_dsn)
    run = uuid.uuid4().hex[:8]
    env.update({
        "LLMOPS_CONFIG": str(CONFIG),
        "LLMOPS__STATE_DIR": str(tmp / "state"),
        "LLMOPS__BACKENDS__REDIS__URL": redis_url,
        "LLMOPS__BACKENDS__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LLMOPS__BACKENDS__OPA__URL": opa_url,
        "LLMOPS__GOVERNANCE__DSN": database,
        "LLMOPS__FEEDBACK__LABELS_DSN": database,
        # Redis keys of this run only (the session's Redis is shared with other tests)
        "LLMOPS__FEATURES__NAMESPACE": f"prod{run}",
        "LLMOPS__EXPERIMENTS__NAMESPACE": f"prod{run}:exp",
        "LLMOPS__FEEDBACK__NAMESPACE": f"prod{run}",
        "LLMOPS__EMBEDDING__DEMO_PROPERTIES": "80",
        "LLMOPS__SINK__ADMIN_PORT": str(ports[-1]),
    })  # fmt: skip
    for i, name in enumerate(SERVICES):
        key = f"LLMOPS__SERVICES__{name.upper()}"
        env[f"{key}__PORT"] = str(ports[3 * i])
        env[f"{key}__ADMIN_PORT"] = str(ports[3 * i + 1])
        env[f"{key}__ADMIN_GRPC_PORT"] = str(ports[3 * i + 2])
    security = tmp / "state" / "security"
    files = {"CA_FILE": "ca.pem", "CLIENT_CERT_FILE": "mesh.pem",
             "CLIENT_KEY_FILE": "mesh.key", "TOKEN_FILE": "operator.token"}  # fmt: skip
    for key, file in files.items():
        env[f"LLMOPS__SECURITY__{key}"] = str(security / file)
    log = tmp / "supervisor.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmops", "up", "--production", "--no-servers"],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
    mesh = ProductionMesh(proc, env, log)
    try:
        start = time.monotonic()
        for name, entry in SERVICES.items():
            wait_serving(mesh.address(name), entry.grpc_service,
                         240 - (time.monotonic() - start), mesh.state_dir, proc)  # fmt: skip
        _wait_for_the_demo(mesh)
        yield mesh
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{mesh.log()[-4000:]}", pytrace=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_for_the_demo(mesh: ProductionMesh, within_s: float = 120) -> None:
    """The services serve before their demo data is in: the registry's prompts (a Run needs
    its prompt) and the embedded listings (search pages need them)."""
    deadline = time.monotonic() + within_s
    with grpc.secure_channel(mesh.address("embedding"), mesh_credentials(mesh.state_dir)) as ch:
        search = embedding_pb2_grpc.EmbeddingServiceStub(ch)
        while True:
            try:
                _run(mesh, "warm-up")
                search.Search(embedding_pb2.SearchRequest(collection=COLLECTION, text="x", k=1),
                              timeout=10)  # fmt: skip
                return
            except grpc.RpcError as exc:
                assert time.monotonic() < deadline, f"no demo data: {exc}\n{mesh.log()[-3000:]}"
                time.sleep(1)


def _run(mesh: ProductionMesh, query: str) -> inference_pb2.RunResponse:
    with grpc.secure_channel(mesh.address("inference"), mesh_credentials(mesh.state_dir)) as ch:
        reply: inference_pb2.RunResponse = inference_pb2_grpc.InferenceServiceStub(ch).Run(
            inference_pb2.RunRequest(
                task="query_intent",
                inputs={"query": common_pb2.Value(string_value=query)},
                context=common_pb2.RequestContext(tenant="production-test"),
            ),
            timeout=60,
        )
        return reply


def test_every_service_and_the_sink_run_as_processes_of_their_own(
    production: ProductionMesh,
) -> None:
    pids = production.pids()
    assert set(pids) == {*SERVICES, "sink"}
    assert len(set(pids.values())) == len(pids)
    assert production.proc.pid not in pids.values()
    log = production.log()
    for name in SERVICES:
        assert re.search(rf"^{name}\s+\| ", log, re.M), f"no output of {name} in the stream"
    assert re.search(r"^sink\s+\| .*applied|^sink\s+\| .*schema up to date", log, re.M)


def test_a_run_goes_through_and_its_prediction_reaches_clickhouse(
    production: ProductionMesh,
) -> None:
    reply = _run(production, "family hotel with a pool near the beach")
    assert reply.request_id and reply.HasField("output")
    deadline = time.monotonic() + 90
    while True:
        done = production.llmops("logs", "predictions", "--last", "10m", "--json", "--limit", "500")
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)["rows"]
        mine = [r for r in rows if r["request_id"] == reply.request_id]
        if mine:
            break
        assert time.monotonic() < deadline, f"{reply.request_id} not in ClickHouse: {rows[:3]}"
        time.sleep(2)
    assert mine[0]["task"] == "query_intent" and mine[0]["tenant"] == "production-test"


def test_the_smoke_scenario_runs_against_the_production_mesh(
    production: ProductionMesh, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = production.llmops("loadtest", "smoke", "--target", "production", "--duration", "12s",
                             "--out", str(out), timeout=240)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["mode"] == "production"
    failed = {s["name"]: s["codes"] for s in summary["stats"] if s["errors"]}
    assert not failed, failed
    assert {s["name"] for s in summary["stats"]} >= {
        "page:search_results",
        "ExperimentService/Assign",
    }


def test_a_killed_service_is_restarted_and_serves_again(production: ProductionMesh) -> None:
    before = production.pids()["guardrail"]
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while production.pids()["guardrail"] == before:
        assert time.monotonic() < deadline, production.log()[-3000:]
        time.sleep(0.5)
    wait_serving(production.address("guardrail"), SERVICES["guardrail"].grpc_service, 120,
                 production.state_dir)  # fmt: skip
    assert "guardrail exited with -9; restarting in 1 s" in production.log()


def test_a_stop_leaves_nothing_running(production: ProductionMesh) -> None:
    pids = production.pids()
    os.killpg(production.proc.pid, signal.SIGTERM)
    assert production.proc.wait(120) == 0, production.log()[-3000:]
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} ({pid}) still runs"
    assert "supervisor | stopped" in production.log()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
