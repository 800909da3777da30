"""Authentication and authorisation of `llmops up`, tried as callers would (issue #15).

One mesh in tokens-only mode (``security.client_certificates: none``: server TLS, bearer
tokens), so that "no credentials" reaches the servers and must be answered UNAUTHENTICATED;
the default mode (mutual TLS) is tried in test_mesh.py. A table over reflection: every
method of every service each server lists →

- without credentials, or with a token the mesh never issued: UNAUTHENTICATED (the standard
  health check excepted: probes need no credentials);
- as a storefront (a token minted by `llmops token create`): every admin method
  PERMISSION_DENIED, while the storefront's own data-plane methods are let through.

Then rotation without restart, and the audit actor being the authenticated identity.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmops.clients import contract_methods
from llmops.mesh import SERVICES
from llmops.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    feature_pb2,
    feature_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
)
from tests.support import RunningMesh, llmops_up, run_llmops

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
# What the default policy (deploy/opa/policies/llmops/config/rpc/data.json) lets a
# storefront call: checked allowed here, everything else of the main services denied.
STOREFRONT = {
    "/llmops.v1.FeatureService/GetOnlineFeatures",
    "/llmops.v1.ExperimentService/Assign",
    "/llmops.v1.ExperimentService/GetExperiment",
    "/llmops.v1.GuardrailService/Check",
    "/llmops.v1.GuardrailService/CheckStream",
    "/llmops.v1.GuardrailService/CheckBatch",
    "/llmops.v1.EmbeddingService/Embed",
    "/llmops.v1.EmbeddingService/Search",
    "/llmops.v1.FeedbackService/Submit",
    "/llmops.v1.FeedbackService/SubmitBatch",
}
STOREFRONT_SERVICES = {"llmops.v1.InferenceService"}


def _credentials(mesh: RunningMesh, token: str | None) -> grpc.ChannelCredentials:
    creds = grpc.ssl_channel_credentials((mesh.state_dir / "security" / "ca.pem").read_bytes())
    if token is None:
        return creds
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))


def _operator(mesh: RunningMesh) -> str:
    return (mesh.state_dir / "security" / "operator.token").read_text().strip()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with llmops_up(
        tmp_path_factory.mktemp("secure"),
        extra_env={"LLMOPS__SECURITY__CLIENT_CERTIFICATES": "none"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def storefront_token(mesh: RunningMesh) -> str:
    done = run_llmops(mesh, "token", "create", "storefront-web", "--role", "storefront")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("llmops_")
    # Servers re-read the tokens file within a second of the change.
    through = grpc.StatusCode.INVALID_ARGUMENT
    assert _until(lambda: _features(mesh, token), through) == through
    return token


def _reflected(mesh: RunningMesh, name: str) -> list[str]:
    with grpc.secure_channel(mesh.address(name), _credentials(mesh, _operator(mesh))) as ch:
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        return sorted(s.name for r in replies for s in r.list_services_response.service)


def _table(mesh: RunningMesh) -> list[tuple[str, str, MethodDescriptor]]:
    """(service name, full method path, descriptor) of every method every server lists."""
    contract_methods()  # imports every generated module: the pool then knows the contracts
    pool = descriptor_pool.Default()
    rows = []
    for name in SERVICES:
        for service_name in _reflected(mesh, name):
            service = pool.FindServiceByName(service_name)
            rows.extend(
                (name, f"/{service.full_name}/{method.name}", method) for method in service.methods
            )
    return rows


_CHANNELS: dict[tuple[str, str | None], grpc.Channel] = {}


def _code(mesh: RunningMesh, name: str, path: str, method: MethodDescriptor,
          token: str | None) -> grpc.StatusCode:  # fmt: skip
    """The status of one call of ``path`` with an empty request. The blocking API: the
    asyncio client can report INTERNAL "Internal error from Core" instead of the server's
    status when the server ends a client stream before reading it (grpc/grpc#36066)."""
    same = (lambda b: b, lambda b: b)  # bytes in, bytes out
    key = (name, token)
    if key not in _CHANNELS:  # one connection per server and caller, as clients keep
        _CHANNELS[key] = grpc.secure_channel(mesh.address(name), _credentials(mesh, token))
    channel = _CHANNELS[key]
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, *same)(iter([b""]), timeout=10):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, *same)(iter([b""]), timeout=10)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, *same)(b"", timeout=10):
                pass
        else:
            channel.unary_unary(path, *same)(b"", timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_method_refuses_callers_without_credentials(mesh: RunningMesh) -> None:
    table = _table(mesh)
    # Reflection really listed the contracts: every method of them is in the table.
    listed = {path for _, path, _ in table}
    assert {f"/{s.full_name}/{m.name}" for s, m in contract_methods()} <= listed
    wrong: list[str] = []
    for name, path, method in table:
        if path == f"/{HEALTH}/Watch":
            continue  # a stream that stays open: Check stands for the health service
        for token in (None, "llmops_" + "A" * 43):
            code = _code(mesh, name, path, method, token)
            public = path == f"/{HEALTH}/Check"
            expected = grpc.StatusCode.OK if public else grpc.StatusCode.UNAUTHENTICATED
            if code != expected:
                wrong.append(f"{path} token={'forged' if token else 'none'}: {code.name}")
    assert not wrong, "\n".join(wrong)


def test_a_storefront_may_not_call_admin_methods(mesh: RunningMesh, storefront_token: str) -> None:
    wrong: list[str] = []
    for name, path, method in _table(mesh):
        service = path.strip("/").partition("/")[0]
        if service == HEALTH:
            continue
        allowed = path in STOREFRONT or service in STOREFRONT_SERVICES
        code = _code(mesh, name, path, method, storefront_token)
        refused = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        if allowed and refused:
            wrong.append(f"{path}: {code.name}, the storefront may call it")
        if not allowed and code != grpc.StatusCode.PERMISSION_DENIED:
            wrong.append(f"{path}: {code.name}, expected PERMISSION_DENIED")
    assert not wrong, "\n".join(wrong)
    # Drain in particular: one call per replica would take a fleet out of service.
    creds = _credentials(mesh, storefront_token)
    with (
        grpc.secure_channel(mesh.address("feature"), creds) as ch,
        pytest.raises(grpc.RpcError) as denied,
    ):
        admin_pb2_grpc.AdminServiceStub(ch).Drain(admin_pb2.DrainRequest(), timeout=5)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "AdminService/Drain is not granted to token:storefront-web" in denied.value.details()


def test_the_operator_drains_and_resumes(mesh: RunningMesh) -> None:
    with grpc.secure_channel(mesh.address("feature"), _credentials(mesh, _operator(mesh))) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        assert admin.Drain(admin_pb2.DrainRequest(reason="test"), timeout=5).draining
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert admin.Resume(admin_pb2.ResumeRequest(reason="test"), timeout=5).was_draining
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        info = admin.GetInfo(admin_pb2.GetInfoRequest(), timeout=5)
        assert info.security == "TLS + bearer tokens"
    # Both are in the audit trail, the operator's token as actor, once the writer has them.
    query = governance_pb2.QueryAuditRequest(action_prefix="service.", resource_name="feature")
    with grpc.secure_channel(mesh.address("governance"), _credentials(mesh, _operator(mesh))) as ch:
        governance = governance_pb2_grpc.GovernanceServiceStub(ch)
        deadline = time.monotonic() + 30
        while True:
            records = governance.QueryAudit(query, timeout=10).records
            if len(records) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert [(r.action, r.reason, r.actor.id) for r in records] == [
        ("service.drain", "test", "token:operator"),
        ("service.resume", "test", "token:operator"),
    ]
    assert records[1].after.fields["was_draining"].bool_value


def test_plaintext_callers_get_no_answer(mesh: RunningMesh) -> None:
    with (
        grpc.insecure_channel(mesh.address("feature")) as ch,
        pytest.raises(grpc.RpcError) as failed,
    ):
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


def _features(mesh: RunningMesh, token: str) -> grpc.StatusCode:
    with grpc.secure_channel(mesh.address("feature"), _credentials(mesh, token)) as ch:
        stub = feature_pb2_grpc.FeatureServiceStub(ch)
        try:
            stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _until(check: object, expected: grpc.StatusCode, within_s: float = 5.0) -> grpc.StatusCode:
    deadline = time.monotonic() + within_s
    while True:
        code = check()  # type: ignore[operator]
        if code == expected or time.monotonic() > deadline:
            return code  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_tokens_rotate_without_a_restart(mesh: RunningMesh) -> None:
    first = run_llmops(mesh, "token", "create", "checkout", "--role", "storefront").stdout.strip()
    # An empty request: INVALID_ARGUMENT from the servicer means the call got through.
    through = grpc.StatusCode.INVALID_ARGUMENT
    assert _until(lambda: _features(mesh, first), through) == through
    second = run_llmops(mesh, "token", "create", "checkout", "--role", "storefront").stdout.strip()
    assert _until(lambda: _features(mesh, second), through) == through
    listed = run_llmops(mesh, "token", "list").stdout
    assert listed.count("checkout") == 2 and first not in listed and second not in listed
    keep = next(
        line.split()[2]
        for line in listed.splitlines()
        if line.startswith("checkout")
        and __import__("hashlib").sha256(second.encode()).hexdigest().startswith(line.split()[2])
    )
    revoked = run_llmops(mesh, "token", "revoke", "checkout", "--keep", keep)
    assert revoked.returncode == 0, revoked.stderr
    refused = grpc.StatusCode.UNAUTHENTICATED
    assert _until(lambda: _features(mesh, first), refused) == refused
    assert _features(mesh, second) == through
    # The tokens file keeps digests only, owner-readable only.
    tokens_file = mesh.state_dir / "security" / "tokens.yaml"
    assert first not in tokens_file.read_text() and second not in tokens_file.read_text()
    assert tokens_file.stat().st_mode & 0o777 == 0o600


def test_the_audit_actor_is_the_authenticated_caller(mesh: RunningMesh, tmp_path: Path) -> None:
    model = tmp_path / "weights.bin"
    model.write_bytes(b"weights")
    done = run_llmops(
        mesh, "registry", "register", "model", "actor-check", "--file", str(model),
        "--owner", "search",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    audit = run_llmops(mesh, "audit", "query", "--resource", "model/actor-check", "--json")
    assert audit.returncode == 0, audit.stderr
    import json

    records = [r for r in json.loads(audit.stdout)["records"] if "actor-check" in str(r)]
    assert records, audit.stdout[-2000:]
    assert {r["actor"]["id"] for r in records} == {"token:operator"}


def test_the_logs_endpoint_answers_operators_and_auditors_only(
    mesh: RunningMesh, storefront_token: str
) -> None:
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{mesh.env['LLMOPS__SINK__ADMIN_PORT']}/v1/logs/audit?limit=1"

    def status(token: str | None) -> int:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(None) == 401
    assert status("llmops_forged") == 401
    assert status(storefront_token) == 403
    assert status(_operator(mesh)) == 200
    # the CLI sends the operator's token by itself
    assert run_llmops(mesh, "logs", "audit", "--json").returncode == 0


def test_production_serves_tls_from_configured_files_with_admin_on_its_own_port(
    tmp_path: Path,
) -> None:
    """A standalone service in production mode: refused without TLS settings, then served
    with configured certificate files (made here by the local CA, as an operator's PKI
    would), the data plane on its port and the admin services only on the admin port."""
    from llmops.config import MeshConfig
    from llmops.security import provision
    from tests.support import free_ports, mesh_env, running

    env, ports, _ = mesh_env(tmp_path)
    port, admin_port = ports["inference"], free_ports(1)[0]
    env["LLMOPS__SERVICES__INFERENCE__ADMIN_GRPC_PORT"] = str(admin_port)
    refused = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "services.inference"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "production mode needs TLS and authentication" in refused.stderr

    pki = provision(MeshConfig.model_validate({"state_dir": str(tmp_path / "pki")}))
    assert pki.ca and pki.cert and pki.key and pki.client_cert and pki.client_key and pki.tokens
    env.update({
        "LLMOPS__SECURITY__CA_FILE": str(pki.ca),
        "LLMOPS__SECURITY__CERT_FILE": str(pki.cert),
        "LLMOPS__SECURITY__KEY_FILE": str(pki.key),
        "LLMOPS__SECURITY__CLIENT_CERT_FILE": str(pki.client_cert),
        "LLMOPS__SECURITY__CLIENT_KEY_FILE": str(pki.client_key),
        "LLMOPS__SECURITY__TOKENS_FILE": str(pki.tokens),
    })  # fmt: skip
    operator = (tmp_path / "pki" / "security" / "operator.token").read_text().strip()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        ),
        grpc.access_token_call_credentials(operator),
    )
    with running(["services.inference"], tmp_path, env) as (proc, log_path):
        deadline = time.monotonic() + 60
        while True:
            try:
                with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                    health = health_pb2_grpc.HealthStub(ch)
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                break
            except grpc.RpcError:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.2)

        def listed(address: str) -> set[str]:
            with grpc.secure_channel(address, creds) as ch:
                replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
                return {s.name for r in replies for s in r.list_services_response.service}

        main, admin = listed(f"127.0.0.1:{port}"), listed(f"127.0.0.1:{admin_port}")
        assert "llmops.v1.InferenceService" in main
        assert not {n for n in main if n.endswith("AdminService")}
        assert {"llmops.v1.AdminService", "llmops.v1.InferenceAdminService"} <= admin
        assert "llmops.v1.InferenceService" not in admin
        with grpc.secure_channel(f"127.0.0.1:{admin_port}", creds) as ch:
            info = admin_pb2_grpc.AdminServiceStub(ch).GetInfo(
                admin_pb2.GetInfoRequest(), timeout=5
            )
        assert info.security == "mTLS + bearer tokens"
        assert info.admin_address == f"127.0.0.1:{admin_port}"
        with (
            grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch,
            pytest.raises(grpc.RpcError) as elsewhere,
        ):
            admin_pb2_grpc.AdminServiceStub(ch).Drain(admin_pb2.DrainRequest(), timeout=5)
        assert elsewhere.value.code() is grpc.StatusCode.UNIMPLEMENTED
