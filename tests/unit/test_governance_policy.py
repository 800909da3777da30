"""Governance policy engine, embedded: the committed Wasm bundle answers the shared decision
table (both ABI paths), ``sprintf`` formats as OPA does, unimplemented builtins and bad
bundles fail loudly, decisions are recorded (secrets stripped, none dropped), reloads swap
only a bundle that loads, and the staleness check catches a .rego changed without rebuild.

The OPA server side of the shared table is tests/integration/test_governance_policy_opa.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from llmops.errors import InvalidArgument, NotFound, ResourceExhausted
from llmops.events.port import ServiceEvents
from llmops.policy.builtins import go_float, go_quote, sprintf
from llmops.policy.engine import PolicyBundleError, UnknownDecisionPath
from llmops.policy.wasm import DEFAULT_WASM_BUNDLE, WasmPolicyEngine
from llmops.v1 import events_pb2
from services.governance.policy_decisions import (
    PolicyDecisions,
    is_secret_key,
    strip_secrets,
)
from tests.governance_policy_cases import ALIAS, CASES, DECISION_PATHS, Case, promote
from tests.infra import REPO_ROOT, infra_required

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def opa_binary() -> str:
    opa = shutil.which("opa") or str(Path.home() / "go" / "bin" / "opa")
    if not Path(opa).is_file():
        msg = "opa binary not installed: bash deploy/local/install.sh opa"
        if infra_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return opa


class FakeEvents:
    """The publisher behind a ServiceEvents port: records events; ``room`` of them fit."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.published: list[events_pb2.EventEnvelope] = []
        self.port = ServiceEvents("llmops.v1.GovernanceService", lambda: self)  # type: ignore[arg-type,return-value]

    def has_room(self, count: int) -> bool:
        return count <= self.room - len(self.published)

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        if not self.has_room(1):
            raise ResourceExhausted("full")
        self.published.append(envelope)

    def publish_all(self, envelopes: list[events_pb2.EventEnvelope]) -> None:
        if not self.has_room(len(envelopes)):
            raise ResourceExhausted("full")
        self.published.extend(envelopes)

    async def publish_durable(
        self, envelopes: list[events_pb2.EventEnvelope], timeout_s: float
    ) -> None:
        self.publish_all(envelopes)


@pytest.fixture(scope="module")
def wasm() -> WasmPolicyEngine:
    return WasmPolicyEngine()


# --- the committed bundle and the shared table -------------------------------------------


def test_committed_bundle_describes_itself(wasm: WasmPolicyEngine) -> None:
    manifest = json.loads((REPO_ROOT / "deploy/opa/policies/.manifest").read_text())
    bundle = wasm.bundle
    assert bundle.revision == manifest["revision"]
    assert bundle.decision_paths == tuple(sorted(DECISION_PATHS))
    assert bundle.source == DEFAULT_WASM_BUNDLE.resolve().as_uri()
    assert {m.path: m.package_name for m in bundle.modules} == {
        "llmops/authz.rego": "llmops.authz",
        "llmops/dataset/use.rego": "llmops.dataset.use",
        "llmops/inference/access.rego": "llmops.inference.access",
        "llmops/registry/alias.rego": "llmops.registry.alias",
        "llmops/rpc/authz.rego": "llmops.rpc",
    }
    assert all(len(m.sha256) == 64 and m.source for m in bundle.modules)
    assert tuple(int(p) for p in wasm.abi_version.split(".")) >= (1, 2)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_wasm_engine_decides_the_shared_table(wasm: WasmPolicyEngine, case: Case) -> None:
    evaluation = await wasm.evaluate(case.path, case.input)
    assert evaluation.result == case.expected
    assert evaluation.revision == wasm.bundle.revision


def test_pre_1_2_abi_path_agrees_with_opa_eval(wasm: WasmPolicyEngine) -> None:
    ctx_path = WasmPolicyEngine(fast_path=False)
    for case in CASES:
        assert ctx_path.evaluate_now(case.path, case.input).result == case.expected, case.name


def test_memory_grows_for_a_large_input_and_the_heap_is_reused(wasm: WasmPolicyEngine) -> None:
    big = promote(markets=["NL"] * 60_000)  # ~420 KB of JSON: several new pages
    assert wasm.evaluate_now(ALIAS, big).result["allow"] is True
    size = wasm._memory.data_len(wasm._store)
    for _ in range(50):
        wasm.evaluate_now(ALIAS, big)
    assert wasm._memory.data_len(wasm._store) == size


def test_unknown_decision_path_is_not_found(wasm: WasmPolicyEngine) -> None:
    with pytest.raises(NotFound, match="llmops/registry/alias/decision") as err:
        wasm.evaluate_now("llmops/registry/alias/allow", {})
    assert isinstance(err.value, UnknownDecisionPath)
    assert err.value.message.startswith("path: ")


# --- builtins -------------------------------------------------------------------------------


def test_go_formatting() -> None:
    floats = {0.41: "0.41", 1.0: "1", 1e6: "1e+06", 123456.5: "123456.5", 0.0001: "0.0001"}
    floats |= {1e-5: "1e-05", -2.5: "-2.5", 1e21: "1e+21", 100.0: "100", 0.0: "0"}
    assert {f: go_float(f) for f in floats} == floats
    assert go_quote('a"b\\c\n\x00é\u00a0') == '"a\\"b\\\\c\\n\\x00é\\u00a0"'
    assert sprintf("%s|%v|%q|%d|%%", ["x", [1, "a", None], "y", 7]) == 'x|[1, "a", null]|"y"|7|%'
    assert sprintf("%d %s", ["x", 1]) == "%!d(string=x) %!s(int64=1)"
    assert sprintf("%v %v", [1]) == "1 %!v(MISSING)"
    assert sprintf("%v", [1, True]) == "1%!(EXTRA string=true)"
    assert sprintf("%.2f", [0.5]) == "0.50"


def test_sprintf_matches_opa() -> None:
    """The host sprintf against OPA's own, on formats the policies might use."""
    cases = [
        ["%v", [7]],
        ["%v", [7.25]],
        ["%v", [1e300]],
        ["%v", [-0.000123]],
        ["%q", ["tab\there \u2028 \U0001f600 \x7f"]],
        ["%s and %v", [["a", 1.5, True], {"k": [None]}]],
        ["%d/%d", [3, "x"]],
        ["%v%v", [1]],
        ["%v", [1, 2]],
        ["%.3f", [2.0]],
        ["100%% %s", ["done"]],
    ]
    query = "[" + ", ".join(f"sprintf({json.dumps(f)}, {json.dumps(a)})" for f, a in cases) + "]"
    out = subprocess.run(
        [opa_binary(), "eval", "--format", "json", query],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = json.loads(out.stdout)["result"][0]["expressions"][0]["value"]
    assert [sprintf(f, a) for f, a in cases] == expected


def test_unimplemented_builtins_are_named_at_load(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "t.rego").write_text(
        "package t\n\n# METADATA\n# entrypoint: true\n"
        'x := {"t": time.now_ns(), "h": crypto.sha256("a")}\n'
    )
    bundle = tmp_path / "b.tar.gz"
    subprocess.run(
        [opa_binary(), "build", "-t", "wasm", "-b", "p", "-o", str(bundle)],
        cwd=tmp_path,
        capture_output=True,
        check=True,
        timeout=120,
    )
    with pytest.raises(PolicyBundleError, match=r"crypto\.sha256, time\.now_ns") as err:
        WasmPolicyEngine(bundle)
    assert err.value.field == "bundle"


def test_a_corrupt_or_missing_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyBundleError, match="cannot read"):
        WasmPolicyEngine(tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(PolicyBundleError, match="cannot read"):
        WasmPolicyEngine(tmp_path / "junk.tar.gz")
    rego_only = tmp_path / "rego.tar.gz"
    _write_bundle(rego_only, {".manifest": b'{"revision": "x"}', "a.rego": b"package a\n"})
    with pytest.raises(PolicyBundleError, match=r"no /policy\.wasm"):
        WasmPolicyEngine(rego_only)


# --- decisions ------------------------------------------------------------------------------


def decisions(events: FakeEvents, path: Path = DEFAULT_WASM_BUNDLE) -> PolicyDecisions:
    return PolicyDecisions(lambda: WasmPolicyEngine(path), events.port, watched=[path])


async def test_a_decision_is_identified_attributed_and_published() -> None:
    events = FakeEvents()
    domain = decisions(events)
    decision = await domain.evaluate(ALIAS, promote(approvals=[]), tenant="acme")
    assert UUID7.match(decision.decision_id)
    assert decision.bundle_revision == domain.bundle().revision
    assert decision.path == ALIAS
    assert not decision.allowed
    assert decision.reasons == (
        'alias "champion" needs an approval by someone other than the registrant "user:alice"',
    )
    assert decision.result["allow"] is False
    assert 0 < decision.latency_us < 1_000_000
    assert decision.input == promote(approvals=[])

    [envelope] = events.published
    audit = envelope.audit
    assert audit.event_id == decision.event_id and UUID7.match(audit.event_id)
    assert audit.event_id != decision.decision_id
    assert audit.policy_decision_id == decision.decision_id
    assert audit.action == "policy.decide"
    assert (audit.resource.type, audit.resource.name) == ("policy", ALIAS)
    assert audit.resource.version == decision.bundle_revision
    assert audit.outcome == events_pb2.AUDIT_OUTCOME_DENIED
    assert audit.tenant == "acme"
    after = MessageToDict(audit.after)
    assert after["decision_id"] == decision.decision_id
    assert after["reasons"] == list(decision.reasons)
    assert after["input"]["alias"] == "champion"
    assert after["allowed"] is False

    allowed = await domain.evaluate(ALIAS, promote())
    assert allowed.allowed and allowed.reasons == ()
    assert events.published[-1].audit.outcome == events_pb2.AUDIT_OUTCOME_SUCCESS


async def test_secrets_are_stripped_from_what_is_recorded() -> None:
    events = FakeEvents()
    domain = decisions(events)
    doc = promote(
        api_key="k-123-SECRET",
        context={
            "headers": {"Authorization": "Bearer abc.def", "x-request-id": "r1"},
            "session": {"accessToken": "tok-SECRET", "max_tokens": 256},
            "upstream": [{"password": "hunter2-SECRET", "host": "db"}],
            "note": "Basic dXNlcjpwYXNz-SECRET",
        },
    )
    decision = await domain.evaluate(ALIAS, doc)
    assert decision.allowed  # the policy saw the whole input
    assert set(decision.redacted) == {
        "input.api_key",
        "input.context.headers.Authorization",
        "input.context.session.accessToken",
        "input.context.upstream[0].password",
        "input.context.note",
    }
    assert decision.input["context"] == {
        "headers": {"x-request-id": "r1"},
        "session": {"max_tokens": 256},
        "upstream": [{"host": "db"}],
    }
    wire = events.published[0].SerializeToString()
    assert b"SECRET" not in wire and b"abc.def" not in wire
    assert b"max_tokens" in wire


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("clientSecret", True),
        ("api_key", True),
        ("X-Api-Key", True),
        ("apiKey", True),
        ("access_token", True),
        ("refreshToken", True),
        ("Authorization", True),
        ("auth", True),
        ("private_key", True),
        ("aws_secret_access_key", True),
        ("credentials", True),
        ("Cookie", True),
        ("max_tokens", False),
        ("prompt_tokens", False),
        ("author", False),
        ("keyword", False),
        ("monkey", False),
        ("tokenizer", False),
        ("secretary_email", False),
        ("market", False),
    ],
)
def test_credential_looking_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_strip_secrets_leaves_the_original_alone() -> None:
    doc: dict[str, Any] = {"a": {"token": "t", "b": [{"secret": 1}, "Bearer x"]}}
    clean, removed = strip_secrets(doc)
    assert clean == {"a": {"b": [{}, "Bearer x"]}}  # list items are kept: no key to judge
    assert removed == ("input.a.token", "input.a.b[0].secret")
    assert doc["a"]["token"] == "t"


async def test_no_decision_without_room_to_record_it() -> None:
    events = FakeEvents(room=0)
    domain = decisions(events)
    with pytest.raises(ResourceExhausted, match="no room"):
        await domain.evaluate(ALIAS, promote())
    assert events.published == []
    events.room = 1
    await domain.evaluate(ALIAS, promote())
    with pytest.raises(ResourceExhausted):  # the buffer is full again
        await domain.evaluate(ALIAS, promote())
    assert len(events.published) == 1


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth):
        doc = {"x": doc}
    return doc


@pytest.mark.parametrize(
    ("path", "doc", "field"),
    [
        ("", {}, "path"),
        (ALIAS, {"alias": float("nan")}, "input.alias"),
        (ALIAS, {"a": {"b": [1, float("inf")]}}, "input.a.b[1]"),
        (ALIAS, {"a": {1: "x"}}, "input.a"),
        (ALIAS, {"a": {"b": b"bytes"}}, "input.a.b"),
        (ALIAS, {"a": _nested(40)}, "input.a" + ".x" * 32),
        (ALIAS, {"blob": "x" * 300_000}, "input"),
        (ALIAS, promote(alias=""), "input.alias"),
        (ALIAS, promote({"name": None}), "input.artifact.name"),
    ],
)
async def test_malformed_input_names_the_field(path: str, doc: dict[str, Any], field: str) -> None:
    events = FakeEvents()
    with pytest.raises(InvalidArgument) as err:
        await decisions(events).evaluate(path, doc)
    assert err.value.field == field
    assert events.published == []


async def test_unknown_path_is_not_found_and_not_recorded() -> None:
    events = FakeEvents()
    with pytest.raises(NotFound, match="not a decision path"):
        await decisions(events).evaluate("llmops/nope/decision", {})
    assert events.published == []


async def test_struct_doubles_are_read_as_integers() -> None:
    """A google.protobuf.Struct carries 7 as 7.0: the decision reads (and records) 7."""
    domain = decisions(FakeEvents())
    doc = promote({"state": "registered", "version": 7.0})
    decision = await domain.evaluate(ALIAS, doc)
    assert decision.reasons[0].startswith("version 7 of ")
    assert decision.input["artifact"]["version"] == 7
    assert isinstance(decision.input["artifact"]["version"], int)


# --- bundle description and reloads ---------------------------------------------------------


def _write_bundle(path: Path, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _with_revision(source: Path, target: Path, revision: str) -> None:
    with tarfile.open(source, "r:gz") as tar:
        files = {}
        for m in tar.getmembers():
            handle = tar.extractfile(m)
            if handle is not None:
                files[m.name.lstrip("/")] = handle.read()
    manifest = json.loads(files[".manifest"])
    manifest["revision"] = revision
    files[".manifest"] = json.dumps(manifest).encode()
    _write_bundle(target, files)


async def test_bundle_lists_modules_with_source_only_when_asked() -> None:
    domain = decisions(FakeEvents())
    brief = domain.bundle()
    full = domain.bundle(include_source=True)
    assert [m.path for m in brief.modules] == [m.path for m in full.modules]
    assert all(m.source == "" for m in brief.modules)
    assert all("package " in m.source for m in full.modules)
    assert brief.decision_paths == full.decision_paths == tuple(sorted(DECISION_PATHS))


async def test_reload_dry_run_then_apply_then_refuse_a_broken_bundle(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar.gz"
    shutil.copy(DEFAULT_WASM_BUNDLE, path)
    events = FakeEvents()
    domain = decisions(events, path)
    old = domain.bundle().revision

    same = await domain.reload()
    assert (same.applied, same.revision, same.candidate_revision) == (False, old, old)
    assert same.module_count == 5

    _with_revision(DEFAULT_WASM_BUNDLE, path, "llmops-test-2")
    dry = await domain.reload(dry_run=True)
    assert (dry.applied, dry.previous_revision, dry.revision) == (False, old, old)
    assert dry.candidate_revision == "llmops-test-2"
    assert domain.bundle().revision == old
    assert events.published == []

    applied = await domain.reload()
    assert (applied.applied, applied.previous_revision, applied.revision) == (
        True,
        old,
        "llmops-test-2",
    )
    [record] = [e.audit for e in events.published]
    assert record.action == "policy.reload"
    assert record.before["revision"].startswith(old + "@")
    assert record.after["revision"].startswith("llmops-test-2@")
    decision = await domain.evaluate(ALIAS, promote())
    assert decision.bundle_revision == "llmops-test-2"

    path.write_bytes(b"corrupt")
    with pytest.raises(InvalidArgument) as err:
        await domain.reload(dry_run=True)
    assert err.value.field == "bundle"
    with pytest.raises(InvalidArgument):
        await domain.reload()
    assert domain.bundle().revision == "llmops-test-2"
    assert (await domain.evaluate(ALIAS, promote())).allowed


# --- the staleness check --------------------------------------------------------------------


def test_check_fails_when_a_rego_changes_without_rebuilding(tmp_path: Path) -> None:
    opa = opa_binary()
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for script in ("build_opa_wasm.sh", "check_opa_wasm.sh"):
        shutil.copy(REPO_ROOT / "scripts" / script, root / "scripts" / script)
    shutil.copytree(REPO_ROOT / "deploy/opa/policies", root / "deploy/opa/policies")
    shutil.copytree(REPO_ROOT / "deploy/opa/wasm", root / "deploy/opa/wasm")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "LLMOPS_OPA_BIN": opa}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(root / "scripts/check_opa_wasm.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    fresh = check()
    assert fresh.returncode == 0, fresh.stderr
    assert "up to date" in fresh.stdout

    rego = root / "deploy/opa/policies/llmops/inference/access.rego"
    rego.write_text(rego.read_text().replace("may not be used in market", "is barred in market"))
    stale = check()
    assert stale.returncode == 1
    assert "stale" in stale.stderr and "scripts/build_opa_wasm.sh" in stale.stderr
    assert "access.rego" in stale.stderr

    build = subprocess.run(
        ["bash", str(root / "scripts/build_opa_wasm.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert "bump it" in build.stderr  # same revision, other policies
    assert check().returncode == 0

    shutil.rmtree(root / "deploy/opa/wasm")
    missing = check()
    assert missing.returncode == 1 and "missing" in missing.stderr


def test_committed_bundle_is_fresh() -> None:
    """What scripts/check_opa_wasm.sh checks in the test command, also run by pytest."""
    opa = opa_binary()
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/check_opa_wasm.sh")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "LLMOPS_OPA_BIN": opa},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
