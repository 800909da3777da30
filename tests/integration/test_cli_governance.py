"""`llmops registry ...` and `llmops policy ...` against a running `llmops up`, as a user
types them: each command's happy path and its typical error, one line on stderr."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import RunningMesh, llmops_up, run_llmops

CARD = """\
intended_use: Rank search results for the CLI test
risk_tier: limited
risk_tier_rationale: ranks content shown to shoppers
limitations: [cold-start properties rank low]
evaluations: [{metric: ndcg@10, value: 0.4}]
human_oversight_contact: search-oncall@example.com
license: Apache-2.0
languages: [en]
"""
ACCESS = "llmops/inference/access/decision"
BLOCKED = 'model "review-sentiment-llm" may not be used in market "DE"'


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with llmops_up(tmp_path_factory.mktemp("mesh")) as m:
        deadline = time.monotonic() + 60
        while "governance_demo_data" not in m.log():  # seeded in the background
            assert time.monotonic() < deadline, m.log()[-3000:]
            time.sleep(0.5)
        yield m


_llmops = run_llmops


def _ok(mesh: RunningMesh, *args: str) -> str:
    proc = _llmops(mesh, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _fails(mesh: RunningMesh, status: str, *args: str) -> str:
    proc = _llmops(mesh, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmops: {status}: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def registered(mesh: RunningMesh, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model cli-ranker v1, registered from a weights file with a card and lineage."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "card.yaml").write_text(CARD)
    (tmp / "weights.bin").write_bytes(b"cli-ranker weights v1")
    out = _ok(
        mesh, "registry", "register", "model", "cli-ranker", "--file", str(tmp / "weights.bin"),
        "--uri", "s3://models/cli-ranker/1/", "--card", str(tmp / "card.yaml"),
        "--description", "Ranker of the CLI test", "--owner", "search-team",
        "--upstream", "trained_on=dataset/search-sessions",
    )  # fmt: skip
    assert out.startswith("registered: model cli-ranker v1  registered  sha256:")
    return tmp


def test_register_is_idempotent_on_the_file_digest(mesh: RunningMesh, registered: Path) -> None:
    again = json.loads(
        _ok(
            mesh, "registry", "register", "model", "cli-ranker",
            "--file", str(registered / "weights.bin"), "--card", str(registered / "card.yaml"),
            "--json",
        )
    )  # fmt: skip
    assert again["already_exists"] is True
    assert again["version"]["version"] == "1"
    assert again["version"]["model_card"]["risk_tier"] == "RISK_TIER_LIMITED"


def test_register_rejects_a_malformed_card(mesh: RunningMesh, tmp_path: Path) -> None:
    (tmp_path / "card.yaml").write_text(CARD.replace("license: Apache-2.0", "license: nope!"))
    line = _fails(
        mesh, "INVALID_ARGUMENT", "registry", "register", "model", "cli-bad-card",
        "--digest", "sha256:" + "ab" * 32, "--card", str(tmp_path / "card.yaml"),
    )  # fmt: skip
    assert "model_card.license" in line


def test_list_pages_through_artifacts(mesh: RunningMesh, registered: Path) -> None:
    out = _ok(mesh, "registry", "list", "--kind", "model")
    assert out.splitlines()[0].split()[:3] == ["KIND", "NAME", "LATEST"]
    assert "cli-ranker" in out and "property-summary-llm" in out and "dataset" not in out
    first = _ok(mesh, "registry", "list", "--page-size", "2")
    assert len(first.splitlines()) == 4 and "more: --page-token " in first
    token = first.splitlines()[-1].split()[-1]
    rest = json.loads(_ok(mesh, "registry", "list", "--page-token", token, "--json"))
    names = {a["name"] for a in rest["artifacts"]}
    assert names and not names & {line.split()[1] for line in first.splitlines()[1:3]}


def test_show_lists_versions_and_aliases(mesh: RunningMesh) -> None:
    out = _ok(mesh, "registry", "show", "property-summary", "--kind", "prompt")
    assert "aliases: challenger -> v4, champion -> v3" in out
    assert all(f"v{n} " in out for n in (1, 2, 3, 4))
    assert "template:" in out
    doc = json.loads(_ok(mesh, "registry", "show", "ranker-lgbm", "--alias", "champion", "--json"))
    assert doc["version"]["aliases"] == ["champion"] and doc["artifact"]["name"] == "ranker-lgbm"
    assert "model_card" in doc["version"]


def test_show_unknown_is_not_found(mesh: RunningMesh) -> None:
    assert "no-such-model" in _fails(mesh, "NOT_FOUND", "registry", "show", "no-such-model")


def test_history_shows_versions_and_every_alias_move(mesh: RunningMesh) -> None:
    out = _ok(mesh, "registry", "history", "property-summary", "--kind", "prompt")
    lines = out.splitlines()
    assert lines[2].startswith("v1 ") and lines[5].startswith("v4 ")  # oldest first
    moves = [
        line for line in lines if "system:governance-demo-review" in line and " -> " not in line
    ]
    assert any(" champion " in m and " v3 " in m for m in moves), out
    assert any(" challenger " in m and " v4 " in m for m in moves), out
    assert "aliases now: challenger -> v4, champion -> v3" in out
    # which version was champion at a time: before the demo ran, none; now, v3
    before = _ok(mesh, "registry", "history", "property-summary", "--kind", "prompt",
                 "--alias", "champion", "--at", "2020-01-01T00:00:00Z")  # fmt: skip
    assert "aliases at 2020-01-01 00:00:00 UTC: none" in before
    assert "challenger" not in before.split("alias moves")[1].split("aliases now")[0]
    now = json.loads(_ok(mesh, "registry", "history", "property-summary", "--kind", "prompt",
                         "--at", "0s", "--json"))  # fmt: skip
    assert now["aliases_at"] == {"challenger": "4", "champion": "3"}  # int64 as JSON strings
    assert [c["alias"] for c in now["changes"]] == ["champion", "challenger"]
    _fails(mesh, "NOT_FOUND", "registry", "history", "no-such-model")
    _fails(mesh, "INVALID_ARGUMENT", "registry", "history", "ranker-lgbm", "--at", "someday")
    _fails(mesh, "INVALID_ARGUMENT", "registry", "history", "ranker-lgbm", "--alias", "Bad Alias")


def test_compliance_report_of_a_route_and_a_model(mesh: RunningMesh) -> None:
    out = _ok(mesh, "compliance", "route", "summary-small")
    assert out.startswith("compliance report: route summary-small")
    assert "model property-summary-llm v1 (approved), aliases: champion" in out
    assert "risk tier: LIMITED" in out
    assert "model card: 7/7 required fields (complete)" in out
    assert "four eyes: yes" in out
    assert "rougeL = 0.38 on summary-eval-set at 2026-11-02 00:00:00" in out
    assert "serving routes: summary-small" in out
    assert "predictions" in out and "90 days" in out and "audit" in out and "no TTL" in out

    doc = json.loads(_ok(mesh, "compliance", "model", "ranker-lgbm", "--alias", "champion",
                         "--json"))  # fmt: skip
    (m,) = doc["models"]
    assert m["version"]["name"] == "ranker-lgbm" and m["risk_tier"] == "RISK_TIER_LIMITED"
    assert m["card"]["complete"] and m["four_eyes"]
    assert [a["state"] for a in m["approvals"]] == ["VERSION_STATE_REGISTERED",
                                                    "VERSION_STATE_APPROVED"]  # fmt: skip
    assert m["approvals"][1]["actor_id"] == "system:governance-demo-review"
    assert m["alias_history"][0]["alias"] == "champion"
    assert m["routes"] == ["rank-lgbm-v3"]
    assert "findings" not in m  # none for a demo model
    retention = {r["table"]: r for r in doc["retention"]}
    assert retention["audit"]["meets_minimum"] and retention["audit"]["required_log"]
    assert retention["predictions"]["ttl_days"] == 90
    assert doc["minimum_retention_days"] == 180

    _fails(mesh, "NOT_FOUND", "compliance", "model", "no-such-model")
    _fails(mesh, "INVALID_ARGUMENT", "compliance", "route", "Not A Route")
    proc = _llmops(mesh, "compliance", "route", "summary-small", "--version", "2")
    assert proc.returncode == 2 and "--version and --alias are for a model" in proc.stderr


def test_approve_then_alias_moves_and_the_gate_refuses_self_approval(
    mesh: RunningMesh, registered: Path
) -> None:
    out = _ok(mesh, "registry", "approve", "cli-ranker", "1", "--reason", "reviewed")
    assert out.strip() == "model cli-ranker v1: registered -> approved"
    # the CLI registered and approved it itself: champion (a serving alias) needs four eyes
    line = _fails(mesh, "PERMISSION_DENIED", "registry", "alias", "cli-ranker", "champion", "1")
    assert "approval by someone other than the registrant" in line and "decision_id=" in line
    moved = _ok(mesh, "registry", "alias", "cli-ranker", "staging", "1", "--expected-version", "0")
    assert moved.startswith("model cli-ranker alias staging: none -> v1  (decision ")
    stale = _fails(
        mesh, "ABORTED", "registry", "alias", "cli-ranker", "staging", "1",
        "--expected-version", "0",
    )  # fmt: skip
    assert "expected_version" in stale
    assert "staging -> v1" in _ok(mesh, "registry", "show", "cli-ranker")


def test_approve_unknown_version_is_not_found(mesh: RunningMesh) -> None:
    _fails(mesh, "NOT_FOUND", "registry", "approve", "ranker-lgbm", "99")


def test_lineage_prints_a_tree_both_ways(mesh: RunningMesh, registered: Path) -> None:
    out = _ok(mesh, "registry", "lineage", "property-summary-llm")
    assert out.splitlines()[0] == "model property-summary-llm v1"
    assert "├─ upstream" in out and "└─ downstream" in out
    assert "trained_on  dataset guest-reviews v1" in out
    assert "derived_from  prompt property-summary v3" in out
    assert "served_by  route summary-small" in out
    up = _ok(
        mesh, "registry", "lineage", "summary-small", "--kind", "route",
        "--direction", "upstream", "--depth", "1",
    )  # fmt: skip
    assert "served_by  prompt property-summary v4" in up and "dataset" not in up
    mine = _ok(mesh, "registry", "lineage", "cli-ranker", "--direction", "upstream")
    assert "trained_on  dataset search-sessions v1" in mine
    edges = json.loads(_ok(mesh, "registry", "lineage", "ranker-lgbm", "--json"))["edges"]
    assert {e["relation"] for e in edges} == {"LINEAGE_RELATION_TRAINED_ON",
                                              "LINEAGE_RELATION_SERVED_BY"}  # fmt: skip


def test_lineage_errors(mesh: RunningMesh) -> None:
    _fails(mesh, "NOT_FOUND", "registry", "lineage", "no-such-model")
    assert "depth" in _fails(
        mesh, "INVALID_ARGUMENT", "registry", "lineage", "ranker-lgbm", "--depth", "11"
    )


def test_policy_eval_prints_the_decision(mesh: RunningMesh, tmp_path: Path) -> None:
    model = {"name": "review-sentiment-llm", "version": 3, "risk_tier": "limited"}
    doc = {"market": "DE", "tenant": "acme", "model": model}
    out = _ok(mesh, "policy", "eval", ACCESS, "--input", json.dumps(doc))
    fields = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert fields["allowed"] == "no" and fields["reason"] == BLOCKED
    assert fields["decision"] and fields["revision"] and fields["latency"].endswith("µs")
    yaml_input = "market: NL\ntenant: acme\nmodel: {name: m, version: 1, risk_tier: minimal}\n"
    (tmp_path / "input.yaml").write_text(yaml_input)
    decided = json.loads(
        _ok(mesh, "policy", "eval", ACCESS, "--input", f"@{tmp_path / 'input.yaml'}", "--json")
    )
    assert decided["allowed"] is True and decided["decision_id"] and decided["bundle_revision"]


def test_policy_eval_errors(mesh: RunningMesh) -> None:
    assert "input.market" in _fails(mesh, "INVALID_ARGUMENT", "policy", "eval", ACCESS)
    assert "--input" in _fails(mesh, "INVALID_ARGUMENT", "policy", "eval", ACCESS, "--input", "[1")
    assert "known:" in _fails(mesh, "NOT_FOUND", "policy", "eval", "llmops/nope/decision")


CASES = f"""\
- name: NL may use the summary model
  path: {ACCESS}
  input: {{market: NL, tenant: acme,
          model: {{name: property-summary-llm, version: 3, risk_tier: high}}}}
  expect: true
- name: DE blocks review-sentiment
  path: {ACCESS}
  input: {{market: DE, tenant: acme,
          model: {{name: review-sentiment-llm, version: 3, risk_tier: limited}}}}
  expect: {{allowed: false, reasons: ['{BLOCKED}']}}
- name: market missing
  path: {ACCESS}
  input: {{}}
  expect: {{error: INVALID_ARGUMENT}}
"""


def test_policy_test_passes_and_fails(mesh: RunningMesh, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    out = _ok(mesh, "policy", "test", str(cases))
    assert out.splitlines()[-1] == "3 passed, 0 failed"
    assert all(line.startswith("PASS  ") for line in out.splitlines()[:3])
    cases.write_text(CASES.replace("expect: true", "expect: false"))
    proc = _llmops(mesh, "policy", "test", str(cases), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["passed"], report["failed"]) == (2, 1)
    assert report["cases"][0]["detail"] == "allowed is True, expected False"


def test_policy_test_rejects_a_malformed_case_file(mesh: RunningMesh, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"- path: {ACCESS}\n  input: {{}}\n")
    assert "cases[0].expect" in _fails(mesh, "INVALID_ARGUMENT", "policy", "test", str(cases))


def test_audit_query_and_verify(mesh: RunningMesh) -> None:
    # the demo registrations reach ClickHouse through the audit writer and the sink
    deadline = time.monotonic() + 90
    while True:
        page = json.loads(
            _ok(mesh, "audit", "query", "--chain", "tenant:default", "--page-size", "5", "--json")
        )
        if len(page.get("records", [])) == 5:
            break
        assert time.monotonic() < deadline, page
        time.sleep(1)
    # oldest first by event time (the services' start-up `load` records are made at once,
    # so time order and chain order may differ by a place); one chain, no repeats
    epoch, ms = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)
    times = [  # the query orders by the millisecond
        (datetime.fromisoformat(r["event_time"]) - epoch) // ms for r in page["records"]
    ]
    sequences = [int(r["sequence"]) for r in page["records"]]
    assert times == sorted(times) and page["next_page_token"]
    assert len(set(sequences)) == 5 and {r["chain"] for r in page["records"]} == {"tenant:default"}
    text = _ok(mesh, "audit", "query", "--chain", "tenant:default", "--action", "artifact.")
    assert text.splitlines()[0].split()[:3] == ["TIME", "CHAIN", "SEQ"]
    assert "artifact.register" in text and "alias.set" not in text
    assert "no audit records" in _ok(mesh, "audit", "query", "--actor", "user:nobody")

    verified = _ok(mesh, "audit", "verify", "tenant:default", "--to", "5")
    assert "valid    yes" in verified and "checked  5 records" in verified
    reply = json.loads(_ok(mesh, "audit", "verify", "tenant:default", "--to", "5", "--json"))
    assert reply["valid"] and int(reply["head_sequence"]) >= 5
    deadline = time.monotonic() + 60
    while True:  # the whole chain: its tail may still be on its way to ClickHouse
        whole = _llmops(mesh, "audit", "verify", "tenant:default")
        if whole.returncode == 0:
            break
        assert whole.returncode == 1 and "missing" in whole.stdout, whole.stdout + whole.stderr
        assert time.monotonic() < deadline, whole.stdout
        time.sleep(1)

    assert "since" in _fails(mesh, "INVALID_ARGUMENT", "audit", "query", "--since", "5x")
    assert "chain" in _fails(mesh, "INVALID_ARGUMENT", "audit", "verify", "")
