"""`llmops loadtest` against a real `llmops up`, as a newcomer runs it: a locust scenario and
a ghz probe, their reports, and the load's predictions in ClickHouse."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmops.v1 import embedding_pb2, embedding_pb2_grpc
from loadtests.storefront import COLLECTION, TENANT
from tests.infra import unavailable
from tests.support import RunningMesh, llmops_up, run_llmops


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with llmops_up(tmp_path_factory.mktemp("loadtest")) as m:
        _wait_for_the_demo_collection(m)
        yield m


def _wait_for_the_demo_collection(mesh: RunningMesh, within_s: float = 90) -> None:
    """`llmops up` embeds the demo listings after it serves; search pages need them."""
    deadline = time.monotonic() + within_s
    with mesh.channel("embedding") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        while True:
            try:
                stub.Search(embedding_pb2.SearchRequest(collection=COLLECTION, text="x", k=1),
                            timeout=5)  # fmt: skip
                return
            except grpc.RpcError as exc:
                assert time.monotonic() < deadline, f"no demo collection: {exc}"
                time.sleep(1)


def _loadtest(
    mesh: RunningMesh, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops", "loadtest", *args],
        env=mesh.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_scenario_writes_a_report_judged_against_the_slos(
    mesh: RunningMesh, tmp_path: Path
) -> None:
    out = tmp_path / "smoke"
    done = _loadtest(mesh, "smoke", "--duration", "15s", "--out", str(out), "--seed", "7")
    # The objectives may be missed on a busy CI box (exit 1); the report must still be whole,
    # and its verdict must be the exit code's.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is (done.returncode == 0)
    assert done.stdout.startswith("PASS" if summary["passed"] else "FAIL")
    stats = {s["name"]: s for s in summary["stats"]}
    for name in ("page:search_results", "ExperimentService/Assign",
                 "FeatureService/GetOnlineFeatures", "EmbeddingService/Search",
                 "InferenceService/Run[query_intent]"):  # fmt: skip
        assert stats[name]["calls"] > 0, name
    failed = {n: s["codes"] for n, s in stats.items() if s["errors"]}
    assert not failed, failed  # a loaded mesh still answers every call
    assert summary["checks"], "a run must judge something"
    for name in ("report.md", "report.html", "latency.png", "throughput.png"):
        assert (out / name).stat().st_size > 0, name
    assert "## Service-level objectives" in (out / "report.md").read_text()

    logs = run_llmops(mesh, "logs", "predictions", "--last", "10m", "--json", "--limit", "1000")
    assert logs.returncode == 0, logs.stderr
    tasks = {r["task"] for r in json.loads(logs.stdout)["rows"] if r["tenant"] == TENANT}
    assert {"query_intent"} <= tasks  # the load's own predictions reached ClickHouse


def test_a_ghz_probe_calls_one_rpc_through_reflection(mesh: RunningMesh, tmp_path: Path) -> None:
    if shutil.which("ghz") is None and not (Path.home() / "go" / "bin" / "ghz").is_file():
        unavailable("ghz is not installed: bash deploy/local/install.sh ghz")
    out = tmp_path / "probe"
    done = _loadtest(mesh, "assign-probe", "--duration", "3s", "--out", str(out), timeout=120)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    (stats,) = summary["stats"]
    assert stats["name"] == "ExperimentService/Assign"
    assert stats["calls"] > 100 and stats["errors"] == 0
    assert summary["run"]["tool"] == "ghz"


def test_bad_requests_are_refused_before_any_load(mesh: RunningMesh, tmp_path: Path) -> None:
    done = _loadtest(mesh, "nope")
    assert done.returncode == 2 and "no scenario 'nope'; known:" in done.stderr
    done = _loadtest(mesh, "smoke", "--duration", "soon")
    assert done.returncode == 2 and "--duration 'soon'" in done.stderr
    remote = {**mesh.env, "LLMOPS__SERVICES__FEATURE__HOST": "192.0.2.10"}
    done = subprocess.run([sys.executable, "-m", "llmops", "loadtest", "smoke"], env=remote,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "loopback only" in done.stderr
    assert not list(tmp_path.iterdir())


def test_the_charts_health_probe_passes_against_a_serving_mesh(mesh: RunningMesh) -> None:
    """The Helm chart's readiness probe (grpc_health_probe over mutual TLS) run as rendered,
    with the embedded mesh's credentials in place of the pod's mounted Secrets."""
    from tests.unit.test_helm_chart import _named, _render

    probe = shutil.which("grpc-health-probe") or str(Path.home() / "go/bin/grpc-health-probe")
    if not Path(probe).is_file():
        unavailable("grpc-health-probe is not installed: bash deploy/local/install.sh probe")
    deployment = _named(_render(), "Deployment")["shop-llmops-mesh-guardrail"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    security = mesh.state_dir / "security"
    files = {
        "/etc/llmops/tls/server/ca.crt": security / "ca.pem",
        "/etc/llmops/tls/client/tls.crt": security / "mesh.pem",
        "/etc/llmops/tls/client/tls.key": security / "mesh.key",
    }
    argv = [probe]
    for arg in command[1:]:
        flag, _, value = arg.partition("=")
        if flag == "-addr":
            value = mesh.address("guardrail")
        elif flag == "-tls-server-name":
            value = "localhost"  # the embedded certificate's name, not the cluster's
        argv.append(f"{flag}={files.get(value, value)}" if value else flag)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVING" in done.stdout + done.stderr
    wrong = [
        a if not a.startswith("-service=") else "-service=llmops.v1.NoSuchService" for a in argv
    ]
    refused = subprocess.run(wrong, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0  # an unknown service is not SERVING: the probe fails
