"""OPA started by deploy/local/opa.sh with the bundle in deploy/opa/policies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from opa_client import AsyncOpaClient, OpaClient

from tests.infra import REPO_ROOT, infra_required

pytestmark = pytest.mark.infra

CARD = {
    "intended_use": "property description summaries",
    "human_oversight_contact": "ml-oncall@example.com",
    "evaluation_results": [{"metric": "rougeL", "value": 0.41}],
}


def promote(card: dict, subject_team: str = "search") -> dict:
    return {
        "subject": {"id": "user:alice", "roles": ["ml-engineer"], "team": subject_team},
        "action": "alias.set",
        "resource": {
            "type": "model",
            "name": "property-summary-llm",
            "version": "7",
            "owner_team": "search",
            "created_by": "user:alice",
            "alias": "champion",
            "risk_tier": "high",
            "card": card,
        },
    }


def client_for(opa_url: str) -> OpaClient:
    u = urlparse(opa_url)
    assert u.hostname and u.port
    return OpaClient(host=u.hostname, port=u.port, timeout=5)


def test_policy_allows_and_denies(opa_url: str) -> None:
    client = client_for(opa_url)
    try:
        assert client.check_health()
        assert any("authz.rego" in p for p in client.get_policies_list())

        allowed = client.query_rule(promote(CARD), "llmops.authz", "decision")
        assert allowed["result"] == {"allow": True, "reasons": []}

        no_oversight = {k: v for k, v in CARD.items() if k != "human_oversight_contact"}
        denied = client.query_rule(promote(no_oversight), "llmops.authz", "decision")
        assert denied["result"]["allow"] is False
        assert denied["result"]["reasons"] == [
            'high risk model needs model card field "human_oversight_contact" '
            'before alias "champion"'
        ]

        other_team = client.query_rule(promote(CARD, subject_team="ads"), "llmops.authz", "allow")
        assert other_team["result"] is False

        # Governance records which bundle revision decided: OPA reports it as provenance.
        with_rev = client.query_rule(
            promote(CARD), "llmops.authz", "decision", query_params={"provenance": "true"}
        )
        revisions = {b["revision"] for b in with_rev["provenance"]["bundles"].values()}
        assert revisions == {"llmops-authz-2026.12.1"}

        # Role grants come from the bundle's data document.
        roles = client.get_data("llmops/config/roles")["result"]
        assert "alias.set" in roles["ml-engineer"]["actions"]
    finally:
        client.close_connection()


async def test_policy_async_client(opa_url: str) -> None:
    u = urlparse(opa_url)
    async with AsyncOpaClient(host=u.hostname, port=u.port, timeout=5) as client:
        res = await client.query_rule({}, "llmops.authz", "decision")
        assert res["result"]["allow"] is False
        assert res["result"]["reasons"] == ['action "" is not granted to roles []']


def test_policy_unit_tests_pass() -> None:
    """`opa test` over the bundle and deploy/opa/tests (the Rego unit tests)."""
    opa = shutil.which("opa") or str(Path.home() / "go" / "bin" / "opa")
    if not Path(opa).is_file():
        msg = "opa binary not installed: bash deploy/local/install.sh opa"
        if infra_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    out = subprocess.run(
        [opa, "test", "deploy/opa/policies", "deploy/opa/tests"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout
