"""The mesh's credentials and the per-call guard, without a running mesh: the local CA,
the tokens file, authentication from a token or a certificate, the Rego authorisation and
its cache, and the refusals of production mode."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from llmops.callcontext import Principal, call_var, principal_var
from llmops.config import ConfigError, MeshConfig
from llmops.errors import PermissionDenied, Unauthenticated
from llmops.identity import current_identity
from llmops.security import client_security, provision, server_security
from llmops.security.pki import ensure_local_pki, issue_client_certificate
from llmops.security.tokens import TokenStore, add_token, revoke_tokens, token_digest
from llmops.server.auth import AuthzPolicy, CallGuard
from llmops.v1 import events_pb2


def _config(tmp_path: Path, **security: Any) -> MeshConfig:
    return MeshConfig.model_validate({"state_dir": str(tmp_path), "security": security})


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), pem: bytes | None = None):
        self._metadata = metadata
        self._auth = {"x509_pem_cert": [pem]} if pem else {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


def test_embedded_mode_makes_a_ca_certificates_and_tokens_owner_only(tmp_path: Path) -> None:
    files = provision(_config(tmp_path))
    directory = tmp_path / "security"
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert files.ca == directory / "ca.pem" and files.token == directory / "operator.token"
    server = x509.load_pem_x509_certificate(files.cert.read_bytes())  # type: ignore[union-attr]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    # Idempotent: a second start keeps the CA and the tokens.
    ca, token = files.ca.read_bytes(), (directory / "operator.token").read_bytes()  # type: ignore[union-attr]
    provision(_config(tmp_path))
    assert files.ca.read_bytes() == ca  # type: ignore[union-attr]
    assert (directory / "operator.token").read_bytes() == token
    store = TokenStore(directory / "tokens.yaml")
    assert {(e.id, e.roles) for e in store.entries()} == {
        ("operator", ("operator",)),
        ("mesh", ("service",)),
    }
    assert token.decode() not in (directory / "tokens.yaml").read_text()


def test_a_new_bind_host_renews_the_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    pki = ensure_local_pki(tmp_path)
    ca, first = pki.ca.read_bytes(), pki.server_cert.read_bytes()
    ensure_local_pki(tmp_path, ["10.1.2.3"])
    assert pki.ca.read_bytes() == ca and pki.server_cert.read_bytes() != first
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.1.2.3" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def test_production_mode_refuses_to_run_without_tls(tmp_path: Path) -> None:
    config = MeshConfig.model_validate({"mode": "production", "state_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"security\.ca_file, security\.cert_file"):
        server_security(config)
    with pytest.raises(ConfigError, match=r"security\.insecure: true"):
        client_security(config, as_operator=True)
    assert not (tmp_path / "security").exists()  # nothing made behind production's back
    insecure = MeshConfig.model_validate({"mode": "production", "security": {"insecure": True}})
    assert server_security(insecure) is None and client_security(insecure, as_operator=True) is None


def test_the_cli_token_comes_from_the_environment_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    operator = client_security(config, as_operator=True)
    assert operator is not None and operator.token == (
        (tmp_path / "security" / "operator.token").read_text()
    )
    service = client_security(config, as_operator=False)
    assert service is not None and service.token is None and service.cert_chain
    tokens_only = client_security(_config(tmp_path, client_certificates="none"), as_operator=False)
    assert tokens_only is not None
    assert tokens_only.token == (tmp_path / "security" / "service.token").read_text()
    monkeypatch.setenv("LLMOPS_TOKEN", "llmops_from_env")
    again = client_security(config, as_operator=True)
    assert again is not None and again.token == "llmops_from_env"


def test_tokens_rotate_expire_and_survive_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    old = add_token(path, "web", ["storefront"])
    store = TokenStore(path, recheck_s=0)
    entry = store.lookup(old)
    assert entry is not None and entry.roles == ("storefront",)
    new = add_token(path, "web", ["storefront"])
    assert store.lookup(new) is not None and store.lookup(old) is not None
    assert revoke_tokens(path, "web", keep_digest=token_digest(new)) == 1
    _touch_later(path)
    assert store.lookup(old) is None and store.lookup(new) is not None
    expired = add_token(path, "batch", ["service"], dt.datetime.now(dt.UTC) - dt.timedelta(1))
    _touch_later(path)
    assert store.lookup(expired) is None
    # A half-edited file keeps the tokens in force rather than locking everyone out.
    path.write_text("tokens: [{id: web, roles: nope}]")
    _touch_later(path)
    assert store.lookup(new) is not None
    assert store.lookup("llmops_never_issued") is None


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def guard(tmp_path: Path) -> tuple[CallGuard, Path]:
    security = server_security(_config(tmp_path))
    assert security is not None
    return CallGuard(security, CollectorRegistry()), tmp_path / "security"


def test_a_bearer_token_names_the_caller(guard: tuple[CallGuard, Path]) -> None:
    check, directory = guard
    token = (directory / "operator.token").read_text()
    principal = check.admit(
        "/llmops.v1.AdminService/Drain", FakeContext((("authorization", f"Bearer {token}"),))
    )
    assert principal == Principal("token:operator", ("operator",), "token")


def test_unknown_or_malformed_credentials_are_unauthenticated_without_echo(
    guard: tuple[CallGuard, Path],
) -> None:
    check, _ = guard
    for header in ("Bearer llmops_secret_guess", "Basic dXNlcjpwYXNz", "Bearer "):
        with pytest.raises(Unauthenticated) as refused:
            check.admit("/llmops.v1.FeatureService/GetOnlineFeatures",
                        FakeContext((("authorization", header),)))  # fmt: skip
        assert "secret_guess" not in refused.value.message
        assert "dXNlcjpwYXNz" not in refused.value.message
    with pytest.raises(Unauthenticated, match="no credentials"):
        check.admit("/llmops.v1.FeatureService/GetOnlineFeatures", FakeContext())


def test_a_client_certificate_names_the_caller_and_its_roles(
    guard: tuple[CallGuard, Path], tmp_path: Path
) -> None:
    check, directory = guard
    mesh = (directory / "mesh.pem").read_bytes()
    principal = check.admit("/llmops.v1.GuardrailService/Check", FakeContext(pem=mesh))
    assert principal == Principal("service:mesh", ("service",), "mtls")
    with pytest.raises(PermissionDenied, match="Drain is not granted to service:mesh"):
        check.admit("/llmops.v1.AdminService/Drain", FakeContext(pem=mesh))
    from llmops.security.pki import LocalPki

    issue_client_certificate(
        LocalPki(directory), "auditor:kim", ["auditor"], tmp_path / "kim.pem", tmp_path / "kim.key"
    )
    kim = (tmp_path / "kim.pem").read_bytes()
    assert check.admit("/llmops.v1.GovernanceService/VerifyAudit", FakeContext(pem=kim)).roles == (
        "auditor",
    )
    with pytest.raises(PermissionDenied):
        check.admit("/llmops.v1.GovernanceService/SetAlias", FakeContext(pem=kim))


@pytest.mark.parametrize(
    ("roles", "method", "allowed"),
    [
        (("storefront",), "/llmops.v1.FeatureService/GetOnlineFeatures", True),
        (("storefront",), "/llmops.v1.InferenceService/Run", True),
        (("storefront",), "/llmops.v1.FeatureService/PushFeatures", False),
        (("storefront",), "/llmops.v1.FeatureAdminService/ReloadRegistry", False),
        (("storefront",), "/llmops.v1.AdminService/Resume", False),
        (("storefront",), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
        (("service",), "/llmops.v1.GovernanceService/Evaluate", True),
        (("service",), "/llmops.v1.GovernanceAdminService/ReloadPolicies", False),
        (("operator",), "/llmops.v1.GovernanceAdminService/ReloadPolicies", True),
        (("auditor",), "/llmops.v1.GovernanceService/QueryAudit", True),
        (("auditor",), "/llmops.v1.FeedbackService/Submit", False),
        ((), "/llmops.v1.FeatureService/GetOnlineFeatures", False),
        (("storefront", "auditor"), "/llmops.v1.GovernanceService/VerifyAudit", True),
    ],
)
def test_the_default_policy_by_role(roles: tuple[str, ...], method: str, allowed: bool) -> None:
    from llmops.policy.wasm import DEFAULT_WASM_BUNDLE

    policy = AuthzPolicy(DEFAULT_WASM_BUNDLE, "llmops/rpc/decision")
    why = policy.refusal(Principal("token:t", roles, "token"), method)
    assert (why == "") is allowed, why


def test_decisions_are_cached_and_a_rebuilt_bundle_clears_them(tmp_path: Path) -> None:
    import shutil

    from llmops.policy.wasm import DEFAULT_WASM_BUNDLE

    bundle = tmp_path / "bundle.tar.gz"
    shutil.copy(DEFAULT_WASM_BUNDLE, bundle)
    reloads: list[tuple[str, str]] = []
    policy = AuthzPolicy(
        bundle, "llmops/rpc/decision", recheck_s=0, on_reload=lambda *r: reloads.append(r)
    )
    who = Principal("token:t", ("storefront",), "token")
    assert policy.refusal(who, "/llmops.v1.FeatureService/GetOnlineFeatures") == ""
    assert len(policy._cache) == 1
    engine = policy._engine
    assert policy.refusal(who, "/llmops.v1.FeatureService/GetOnlineFeatures") == ""
    assert policy._engine is engine and len(policy._cache) == 1
    # A rewritten file is reloaded off the loop; the cache starts again.
    shutil.copy(DEFAULT_WASM_BUNDLE, bundle)
    _touch_later(bundle)
    policy.refusal(who, "/llmops.v1.FeatureService/GetOnlineFeatures")
    for _ in range(100):
        if policy._engine is not engine:
            break
        import time

        time.sleep(0.05)
    assert policy._engine is not engine and policy._cache == {}
    assert reloads == [(engine.bundle.revision, policy.revision)]  # the runtime audits it


def test_a_decision_path_the_bundle_lacks_is_refused_at_start(tmp_path: Path) -> None:
    from llmops.policy.wasm import DEFAULT_WASM_BUNDLE

    with pytest.raises(ValueError, match="llmops/nope/decision"):
        AuthzPolicy(DEFAULT_WASM_BUNDLE, "llmops/nope/decision")


def test_the_audit_actor_is_the_principal() -> None:
    call = call_var.set(("/llmops.v1.ExperimentAdminService/StartExperiment", FakeContext()))
    try:
        unauthenticated = current_identity()
        assert unauthenticated is not None and not unauthenticated.authenticated
        assert unauthenticated.principal == "unauthenticated:127.0.0.1"
        token = principal_var.set(Principal("token:alice", ("operator",), "token"))
        try:
            who = current_identity()
            assert who is not None and who.authenticated
            assert who.principal == "token:alice"
            assert who.actor_type == events_pb2.ACTOR_TYPE_USER
            assert who.via == "llmops.v1.ExperimentAdminService"
        finally:
            principal_var.reset(token)
    finally:
        call_var.reset(call)


def test_a_reload_of_the_authorisation_rules_is_audited() -> None:
    from llmops.events.port import ServiceEvents
    from llmops.server.app import _authz_audit

    published: list[Any] = []

    class Publisher:
        def publish(self, envelope: Any) -> int:
            published.append(envelope)
            return len(published)

    audit = _authz_audit(ServiceEvents("llmops.v1.AdminService", lambda: Publisher()))  # type: ignore[arg-type,return-value]
    audit("rev-1", "rev-1")  # touched, same rules: nothing to say
    audit("rev-1", "rev-2")
    (record,) = [e.audit for e in published]
    assert (record.action, record.actor.id) == ("authz.reload", "system:authz")
    assert record.before["revision"] == "rev-1" and record.after["revision"] == "rev-2"
