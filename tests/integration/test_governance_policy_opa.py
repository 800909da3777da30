"""The shared decision table on the OPA server (deploy/local/opa.sh, the ``opa_url`` fixture)
and on the embedded Wasm engine: identical results, revisions and decision paths, through
the engines and through the decisions domain."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmops.errors import NotFound, Unavailable
from llmops.policy.wasm import WasmPolicyEngine
from services.governance.policy_decisions import PolicyDecisions
from services.governance.policy_opa import OpaConnection, OpaServerEngine, opa_engine_loader
from tests.governance_policy_cases import CASES, DECISION_PATHS, Case
from tests.infra import REPO_ROOT
from tests.unit.test_governance_policy import FakeEvents

pytestmark = pytest.mark.infra

POLICIES = REPO_ROOT / "deploy" / "opa" / "policies"


@pytest.fixture(scope="module")
async def opa(opa_url: str) -> AsyncIterator[OpaServerEngine]:
    connection = OpaConnection(opa_url, timeout_s=5)
    engine = OpaServerEngine(connection)
    try:
        yield engine
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def wasm() -> WasmPolicyEngine:
    return WasmPolicyEngine()


def test_the_server_serves_this_checkouts_policies(opa: OpaServerEngine) -> None:
    """A server left running from an older checkout would make every comparison below
    meaningless: say so plainly."""
    on_disk = {
        str(p.relative_to(POLICIES)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(POLICIES.rglob("*.rego"))
    }
    served = {m.path: m.sha256 for m in opa.bundle.modules}
    assert served == on_disk, (
        "the OPA server answering on the opa_url port serves other policies than "
        "deploy/opa/policies: restart it (bash deploy/local/opa.sh restart)"
    )


def test_both_engines_describe_the_same_bundle(
    opa: OpaServerEngine, wasm: WasmPolicyEngine
) -> None:
    assert opa.bundle.revision == wasm.bundle.revision
    assert opa.bundle.decision_paths == wasm.bundle.decision_paths == tuple(sorted(DECISION_PATHS))
    assert [m.path for m in opa.bundle.modules] == [m.path for m in wasm.bundle.modules]
    assert [m.package_name for m in opa.bundle.modules] == [
        m.package_name for m in wasm.bundle.modules
    ]
    assert opa.bundle.source.startswith("http://")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_identical_decisions_on_the_shared_table(
    opa: OpaServerEngine, wasm: WasmPolicyEngine, case: Case
) -> None:
    served = await opa.evaluate(case.path, case.input)
    embedded = await wasm.evaluate(case.path, case.input)
    assert served.result == embedded.result == case.expected
    assert served.revision == embedded.revision


async def test_identical_decisions_through_the_domain(opa_url: str) -> None:
    connection = OpaConnection(opa_url, timeout_s=5)
    served_events, embedded_events = FakeEvents(), FakeEvents()
    served = PolicyDecisions(opa_engine_loader(connection), served_events.port)
    embedded = PolicyDecisions(WasmPolicyEngine, embedded_events.port)
    try:
        for case in CASES:
            if case.expected.get("invalid"):
                continue  # INVALID_ARGUMENT, not a decision (the unit tests cover it)
            a = await served.evaluate(case.path, case.input)
            b = await embedded.evaluate(case.path, case.input)
            assert (a.allowed, a.reasons, a.result, a.bundle_revision, a.input) == (
                b.allowed,
                b.reasons,
                b.result,
                b.bundle_revision,
                b.input,
            ), case.name
        assert len(served_events.published) == len(embedded_events.published) > 0
        assert await served.health()
        reload = await served.reload(dry_run=True)
        assert not reload.applied and reload.revision == reload.candidate_revision
        assert served.bundle().decision_paths == embedded.bundle().decision_paths
    finally:
        await served.close()


async def test_unknown_path_is_refused_before_asking_the_server(opa: OpaServerEngine) -> None:
    with pytest.raises(NotFound, match="not a decision path"):
        await opa.evaluate("llmops/authz/allow", {})


def test_a_server_that_is_down_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="did not answer"):
        OpaServerEngine(OpaConnection(f"http://127.0.0.1:{port}", timeout_s=1))
