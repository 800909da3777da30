"""The Helm chart (deploy/helm/llmops-mesh): it lints, renders, every rendered Kubernetes
object validates against the Kubernetes schemas offline (kubernetes-validate, strict), and
what it renders is what the mesh accepts (the config ConfigMap loads as a production config,
the registries are the repository's files)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmops.config import Mode, load_config
from llmops.mesh import SERVICES
from tests.infra import unavailable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "llmops-mesh"
K8S_VERSION = "1.37.0"
CUSTOM_GROUPS = ("kafka.strimzi.io/", "clickhouse.altinity.com/")
"""Operators' custom resources: kubernetes-validate holds Kubernetes' own schemas only."""


@functools.cache
def _helm() -> str:
    found = shutil.which("helm") or str(Path.home() / "go" / "bin" / "helm")
    if not os.access(found, os.X_OK):
        unavailable("helm is not installed: bash deploy/local/install.sh helm")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)


@functools.cache
def _render(*sets: str) -> tuple[dict[str, Any], ...]:
    argv = ["template", "shop", str(CHART), "--namespace", "llmops"]
    for s in sets:
        argv += ["--set", s]
    done = _run(*argv)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


WITH_SECRETS = (
    "security.create=true", "security.ca=CA", "security.serverCert=CRT",
    "security.serverKey=KEY", "security.clientCert=CCRT", "security.clientKey=CKEY",
    "security.tokens=tokens: []",
)  # fmt: skip
WITH_OPERATORS = (
    "operators.strimzi.enabled=true", "operators.altinity.enabled=true",
    "migrations.enabled=false",
)  # fmt: skip


def _named(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_the_chart_lints() -> None:
    done = _run("lint", str(CHART), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "sets", [(), WITH_SECRETS, WITH_OPERATORS], ids=["default", "secrets", "operators"]
)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    sets: tuple[str, ...],
) -> None:
    objects = _render(*sets)
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 40


def test_each_service_and_the_sinks_get_a_deployment_service_hpa_pdb_and_policy() -> None:
    objects = _render()
    deployments = _named(objects, "Deployment")
    assert set(deployments) == {f"shop-llmops-mesh-{n}" for n in [*SERVICES, "sink"]}
    assert {n.removeprefix("shop-llmops-mesh-") for n in _named(objects, "Service")} == set(
        SERVICES
    )
    hpas = _named(objects, "HorizontalPodAutoscaler")
    assert "shop-llmops-mesh-governance" not in hpas and "shop-llmops-mesh-feature" in hpas
    metrics = {m["type"]: m for m in hpas["shop-llmops-mesh-feature"]["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "grpc_server_in_flight"
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert len(_named(objects, "PodDisruptionBudget")) == len(SERVICES) + 1
    for name, entry in SERVICES.items():
        pod = deployments[f"shop-llmops-mesh-{name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["run", name]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[0] == "grpc_health_probe" and f"-service={entry.grpc_service}" in probe
        assert "-tls" in probe and any(a.startswith("-tls-client-cert=") for a in probe)
        env = {e["name"]: e for e in container["env"]}
        assert env[f"LLMOPS__SERVICES__{name.upper()}__HOST"]["value"] == "0.0.0.0"
        assert env["LLMOPS__GOVERNANCE__DSN"]["valueFrom"]["secretKeyRef"]["key"] == "dsn"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_admin_listeners_admit_operators_only() -> None:
    policies = _named(_render(), "NetworkPolicy")
    assert len(policies) == len(SERVICES) + 1
    rules = policies["shop-llmops-mesh-experiment"]["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r["from"] for r in rules}
    assert set(by_port) == {"grpc", "admin-grpc", "metrics"}
    admins = by_port["admin-grpc"]
    assert admins == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"llmops.io/operator": "true"}}}
    ]
    assert {"podSelector": {"matchLabels": {"llmops.io/mesh": "true"}}} in by_port["grpc"]


def test_the_config_it_renders_is_a_production_config_the_mesh_accepts(tmp_path: Path) -> None:
    config_map = _named(_render(), "ConfigMap")["shop-llmops-mesh-config"]
    path = tmp_path / "llmops.yaml"
    path.write_text(config_map["data"]["llmops.yaml"])
    config = load_config(path)
    assert config.mode is Mode.PRODUCTION
    assert config.services["inference"].address == "shop-llmops-mesh-inference:50053"
    assert config.services["inference"].admin_listener_port(config.mode) == 50153
    assert config.backends.clickhouse.backend == "server"
    assert config.security.client_certificates == "require" and not config.security.insecure
    assert config.security.metrics_auth == "always"
    assert str(config.security.ca_file) == "/etc/llmops/tls/server/ca.crt"
    assert [str(p) for p in config.inference.tasks] == ["/etc/llmops/registries/tasks"]
    assert config.sink.embedded is False


def test_the_registries_are_the_repository_files_byte_for_byte() -> None:
    maps = _named(_render(), "ConfigMap")
    for kind in ("tasks", "inference", "features", "guardrails", "feedback"):
        data = maps[f"shop-llmops-mesh-registry-{kind}"]["data"]
        files = {p.name: p.read_text() for p in (REPO / "deploy" / kind).glob("*.yaml")}
        assert files and data == files, kind


def test_strimzi_topics_follow_the_topic_spec() -> None:
    topics = _named(_render(*WITH_OPERATORS), "KafkaTopic")
    spec = yaml.safe_load((REPO / "deploy" / "kafka" / "topics.yaml").read_text())["topics"]
    assert len(topics) == len(spec)
    first = topics[spec[0]["name"].replace(".", "-")]["spec"]
    assert (first["topicName"], first["partitions"]) == (spec[0]["name"], spec[0]["partitions"])
    ddl = _named(_render(*WITH_OPERATORS), "ConfigMap")["shop-llmops-mesh-clickhouse-cluster-ddl"]
    assert set(ddl["data"]) == {p.name for p in (REPO / "deploy/clickhouse/cluster").glob("*.sql")}


def test_contradictory_values_are_refused_with_the_reason() -> None:
    done = _run("template", "shop", str(CHART), "--set", "operators.altinity.enabled=true")
    assert done.returncode != 0 and "apply the cluster DDL" in done.stderr
    done = _run("template", "shop", str(CHART), "--set", "security.create=true")
    assert done.returncode != 0 and "security.create needs security.ca" in done.stderr


def test_the_image_is_built_with_the_readme_install_step() -> None:
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert "RUN bash scripts/install.sh '.[prod]'" in dockerfile
    assert "bash scripts/install.sh" in (REPO / "README.md").read_text()
    assert "grpc-health-probe@" in dockerfile and 'ENTRYPOINT ["llmops"]' in dockerfile
