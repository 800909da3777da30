"""Service plug-ins: discovery from entry points, config sections from their settings models,
declared backends, generic typed clients, and the audit-event builder of ``ctx.events``."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import Field, ValidationError

from llmops.backends import Backends
from llmops.callcontext import call_var, request_id_var
from llmops.clients import MeshClient
from llmops.config import MeshConfig, _with_sections, load_config
from llmops.errors import FailedPrecondition
from llmops.events.port import ServiceEvents
from llmops.identity import current_identity, system
from llmops.mesh import SERVICES
from llmops.plugin import PluginError, ServicePlugin, check_plugins, discover
from llmops.server.app import build_context
from llmops.settings import Settings
from llmops.v1 import events_pb2, experiment_pb2_grpc, feature_pb2_grpc, guardrail_pb2_grpc


class PricingSettings(Settings):
    """A new service's settings."""

    currency: str = Field("EUR", min_length=3, max_length=3, description="ISO 4217 code.")
    cache_size: int = Field(1000, ge=1, description="Prices held in memory.")


PRICING = ServicePlugin(
    name="pricing",
    ports=(50058, 9158),
    summary="dynamic prices",
    settings=PricingSettings,
    backends=frozenset({"state_dir"}),
)


def test_the_seven_services_are_discovered_in_port_order() -> None:
    assert list(SERVICES) == [
        "feature", "embedding", "inference", "guardrail", "experiment", "feedback", "governance",
    ]  # fmt: skip
    assert [p.port for p in SERVICES.values()] == sorted(p.port for p in SERVICES.values())
    assert SERVICES["guardrail"].grpc_admin_service == "llmops.v1.GuardrailAdminService"
    assert PRICING.proto_service == "PricingService"
    assert PRICING.factory == "services.pricing.service:create"
    assert (PRICING.port, PRICING.admin_port) == (50058, 9158)


@pytest.fixture
def installed_pricing(tmp_path: Path) -> Iterator[None]:
    """An eighth service installed the way pip would: a distribution whose metadata
    declares one ``llmops.services`` entry point (its module lives in this test file)."""
    dist = tmp_path / "llmops_pricing-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llmops-pricing\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[llmops.services]\npricing = {__name__}:PRICING\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        importlib.invalidate_caches()


def test_a_new_service_is_discovered_without_touching_the_runtime(installed_pricing: None) -> None:
    found = discover()
    assert list(found)[-1] == "pricing" and found["pricing"] is PRICING
    model = _with_sections(found)
    config = model.model_validate({"pricing": {"currency": "GBP"}})
    assert config.settings_of("feature") is not None
    section = getattr(config, "pricing")  # noqa: B009  (a section the runtime never named)
    assert section == PricingSettings(currency="GBP")
    with pytest.raises(ValidationError, match=r"pricing\.colour"):
        model.model_validate({"pricing": {"colour": "red"}})
    with pytest.raises(ValidationError, match=r"pricing\.currency"):
        model.model_validate({"pricing": {"currency": "euro"}})


def test_service_sections_take_environment_overrides_and_reject_unknown_keys() -> None:
    config = load_config(environ={"LLMOPS__EXPERIMENTS__HOLDOUT_BPS": "250"})
    assert config.settings_of("experiment").holdout_bps == 250  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"guardrails.nope: Extra inputs are not permitted"):
        load_config(environ={"LLMOPS__GUARDRAILS__NOPE": "1"})


def test_plugin_clashes_are_refused() -> None:
    with pytest.raises(PluginError, match="two plug-ins are named 'pricing'"):
        check_plugins([PRICING, PRICING])
    other = ServicePlugin(
        name="prices", ports=(50059, 9159), summary="", factory="x:create",
        settings_key="pricing",
    )  # fmt: skip
    with pytest.raises(PluginError, match="both use the config key 'pricing'"):
        check_plugins([PRICING, other])
    with pytest.raises(PluginError, match=r"cannot load nowhere\.module:create"):
        ServicePlugin(
            name="ghost", ports=(1, 0), summary="", factory="nowhere.module:create",
        ).load_factory()  # fmt: skip


def test_a_service_reaches_only_the_backends_it_declared(tmp_path: Path) -> None:
    config = load_config(environ={"LLMOPS__STATE_DIR": str(tmp_path)})
    with Backends(config) as backends:
        clients = MeshClient(config)
        inference = build_context(SERVICES["inference"], config, backends, clients)
        assert SERVICES["inference"].backends == {"events", "state_dir", "redis"}
        with pytest.raises(FailedPrecondition, match="backend 'clickhouse' without declaring"):
            inference.backends.clickhouse()
        guardrail = build_context(SERVICES["guardrail"], config, backends, clients)
        with pytest.raises(FailedPrecondition, match="backend 'redis' without declaring"):
            _ = guardrail.backends.redis_url
        experiment = build_context(SERVICES["experiment"], config, backends, clients)
        assert experiment.backends.state_dir == tmp_path.resolve()
        assert experiment.backends.redis_url == config.backends.redis.url
        assert experiment.settings is config.settings_of("experiment")
        assert experiment.name == "experiment" and experiment.mode == "embedded"


async def test_typed_clients_are_built_from_the_generated_stubs() -> None:
    config = MeshConfig.model_validate({"security": {"insecure": True}})
    async with MeshClient(config) as mesh:
        features = mesh.stub(feature_pb2_grpc.FeatureServiceStub)
        assert mesh.stub(feature_pb2_grpc.FeatureServiceStub) is features  # built once
        assert hasattr(features, "GetOnlineFeatures")
        mesh.stub(guardrail_pb2_grpc.GuardrailAdminServiceStub)
        mesh.stub(experiment_pb2_grpc.ExperimentServiceStub)
        # one channel per address: embedded mode serves the admin services on the main port
        assert set(mesh._channels) == {
            config.services[n].address for n in ("feature", "guardrail", "experiment")
        }
        with pytest.raises(KeyError, match="no service of the mesh serves"):
            mesh.stub(grpc.aio.Channel)  # type: ignore[arg-type]


async def test_admin_stubs_go_to_the_admin_listener_in_production() -> None:
    config = MeshConfig.model_validate({"mode": "production", "security": {"insecure": True}})
    async with MeshClient(config) as mesh:
        mesh.stub(guardrail_pb2_grpc.GuardrailAdminServiceStub)
        mesh.stub(guardrail_pb2_grpc.GuardrailServiceStub)
        mesh.admin("feature")
        port = SERVICES["guardrail"].port
        assert set(mesh._channels) == {
            f"127.0.0.1:{port}",
            f"127.0.0.1:{port + 100}",
            f"127.0.0.1:{SERVICES['feature'].port + 100}",
        }


class _FakeContext:
    def __init__(self, peer: str, auth: dict[str, list[bytes]]) -> None:
        self._peer, self._auth = peer, auth

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def test_audit_events_take_the_actor_from_the_caller_never_from_the_request() -> None:
    published: list[events_pb2.EventEnvelope] = []

    class Publisher:
        def publish(self, envelope: events_pb2.EventEnvelope) -> None:
            published.append(envelope)

    publisher: Any = Publisher()
    events = ServiceEvents("llmops.v1.ExperimentAdminService", lambda: publisher, lambda: 1.5)
    method = "/llmops.v1.ExperimentAdminService/StartExperiment"
    tokens = (
        call_var.set((method, _FakeContext("ipv4:10.1.2.3:40000", {}))),
        request_id_var.set("req-1"),
    )
    try:
        identity = current_identity()
        assert identity is not None and not identity.authenticated
        env = events.audit_event(
            "experiment.start", "experiment", "ranking", version="3",
            before={"status": "DRAFT"}, after={"status": "RUNNING"}, tenant="brand-a",
        )  # fmt: skip
        events.publish(env)
    finally:
        call_var.reset(tokens[0])
        request_id_var.reset(tokens[1])
    audit = published[0].audit
    assert audit.actor.id == "unauthenticated:10.1.2.3"
    assert audit.actor.via == "llmops.v1.ExperimentAdminService"
    assert audit.request_id == "req-1" and audit.tenant == "brand-a"
    assert audit.resource.name == "ranking" and audit.resource.version == "3"
    assert audit.before["status"] == "DRAFT" and audit.after["status"] == "RUNNING"
    assert audit.event_time.ToNanoseconds() == 1_500_000_000
    assert audit.event_id and audit.outcome == events_pb2.AUDIT_OUTCOME_SUCCESS

    tls = call_var.set((method, _FakeContext("ipv4:10.1.2.3:1", {"x509_common_name": [b"ci"]})))
    try:
        caller = current_identity()
        assert caller is not None and caller.principal == "svc:ci" and caller.authenticated
    finally:
        call_var.reset(tls)
    scheduled = events.audit_event("experiment.stop", "experiment", "x", actor=system("exp"))
    assert scheduled.audit.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
    assert scheduled.audit.actor.id == "system:exp"
    assert current_identity() is None  # outside an RPC
