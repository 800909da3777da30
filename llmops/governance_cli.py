"""`llmops registry ...` and `llmops policy ...`: thin clients of the running governance service.

Each command builds one request, calls ``GovernanceService`` through :class:`MeshClient`
(llmops/v1 stubs only: the runtime never imports ``services``) and renders the reply as text,
or as JSON with ``--json``. Decisions are the service's: a refused move comes back as the
service's gRPC status, which ``llmops`` prints as one line ``llmops: <STATUS>: <details>``.
Problems found before any call (an unreadable card file, a malformed ``--input``) are raised
as :class:`llmops.errors.InvalidArgument` and printed the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from llmops.clients import MeshClient
from llmops.config import MeshConfig
from llmops.errors import InvalidArgument
from llmops.v1 import events_pb2, governance_pb2, governance_pb2_grpc

KINDS = {
    "model": governance_pb2.ARTIFACT_KIND_MODEL,
    "prompt": governance_pb2.ARTIFACT_KIND_PROMPT,
    "dataset": governance_pb2.ARTIFACT_KIND_DATASET,
    "policy": governance_pb2.ARTIFACT_KIND_POLICY,
}
NODE_KINDS = (*KINDS, "route", "uri")
RELATIONS = {
    "trained_on": governance_pb2.LINEAGE_RELATION_TRAINED_ON,
    "evaluated_on": governance_pb2.LINEAGE_RELATION_EVALUATED_ON,
    "derived_from": governance_pb2.LINEAGE_RELATION_DERIVED_FROM,
    "served_by": governance_pb2.LINEAGE_RELATION_SERVED_BY,
    "governs": governance_pb2.LINEAGE_RELATION_GOVERNS,
}
DIRECTIONS = {
    "upstream": governance_pb2.LINEAGE_DIRECTION_UPSTREAM,
    "downstream": governance_pb2.LINEAGE_DIRECTION_DOWNSTREAM,
    "both": governance_pb2.LINEAGE_DIRECTION_BOTH,
}
DETAILS_FIELD = {
    "model": "model_card",
    "prompt": "prompt",
    "dataset": "dataset",
    "policy": "policy",
}
DETAILS_MESSAGE: dict[str, Callable[[], Message]] = {
    "model": governance_pb2.ModelCard,
    "prompt": governance_pb2.PromptTemplate,
    "dataset": governance_pb2.DatasetInfo,
    "policy": governance_pb2.PolicyInfo,
}
ENUM_PREFIX = {"risk_tier": "RISK_TIER_", "variables": "VALUE_TYPE_", "schema": "VALUE_TYPE_"}


# -- small helpers -----------------------------------------------------------------------------


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def kind_name(kind: int) -> str:
    return _name(governance_pb2.ArtifactKind, kind, "ARTIFACT_KIND_")


def state_name(state: int) -> str:
    return _name(governance_pb2.VersionState, state, "VERSION_STATE_")


def relation_name(relation: int) -> str:
    return _name(governance_pb2.LineageRelation, relation, "LINEAGE_RELATION_")


def _time(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds or ts.nanos else "-"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True))


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    except OSError as exc:
        raise InvalidArgument("--file", f"cannot read {path}: {exc.strerror}") from None
    return f"sha256:{sha.hexdigest()}"


def _enum_names(doc: Any, key: str = "") -> Any:
    """Let a card say ``risk_tier: high`` for ``RISK_TIER_HIGH`` (and ``string`` for
    ``VALUE_TYPE_STRING`` in prompt variables and dataset schemas)."""
    if isinstance(doc, dict):
        prefix = ENUM_PREFIX.get(key)
        if prefix and key != "risk_tier":
            return {k: _enum_value(v, prefix) for k, v in doc.items()}
        return {k: _enum_names(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_enum_names(v, key) for v in doc]
    if key == "risk_tier":
        return _enum_value(doc, "RISK_TIER_")
    return doc


def _enum_value(value: Any, prefix: str) -> Any:
    if isinstance(value, str) and not value.upper().startswith(prefix):
        return prefix + value.upper()
    return value.upper() if isinstance(value, str) else value


def load_details(kind: str, path: Path) -> Message:
    """The kind's facts from a YAML file (a model card for models), field names as in
    governance.proto; enum values may be short (``risk_tier: limited``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidArgument("--card", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument("--card", f"{path} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("--card", f"{path} must hold a mapping of {kind} fields")
    message = DETAILS_MESSAGE[kind]()
    try:
        json_format.ParseDict(_enum_names(doc), message)
    except json_format.ParseError as exc:
        raise InvalidArgument("--card", f"{path}: {exc}") from None
    return message


def parse_input(text: str) -> struct_pb2.Struct:
    """``--input``: a JSON object, or ``@file`` holding one (JSON or YAML)."""
    where = "--input"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidArgument(where, f"cannot read {path}: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgument(where, f"{path} is neither JSON nor YAML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(where, f"not JSON: {exc}") from None
    return to_struct(doc, where)


def to_struct(doc: Any, where: str) -> struct_pb2.Struct:
    if not isinstance(doc, dict):
        raise InvalidArgument(where, "must be a JSON object")
    out = struct_pb2.Struct()
    try:
        out.update(doc)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(where, str(exc)) from None
    return out


def parse_upstream(spec: str) -> governance_pb2.LineageEdge:
    """``--upstream RELATION=KIND/NAME[@VERSION]``, e.g. ``trained_on=dataset/guest-reviews``."""
    relation, sep, target = spec.partition("=")
    kind, slash, name = target.partition("/")
    if not sep or relation not in RELATIONS or not slash or kind not in KINDS or not name:
        raise InvalidArgument(
            "--upstream",
            f"{spec!r}: expected RELATION=KIND/NAME[@VERSION], RELATION one of "
            f"{', '.join(RELATIONS)}, KIND one of {', '.join(KINDS)}",
        )
    name, at, version = name.partition("@")
    if at and not version.isdigit():
        raise InvalidArgument("--upstream", f"{spec!r}: the version after @ must be a number")
    ref = governance_pb2.ArtifactRef(kind=KINDS[kind], name=name, version=int(version or 0))
    return governance_pb2.LineageEdge(
        upstream=governance_pb2.LineageNode(artifact=ref), relation=RELATIONS[relation]
    )


def _stub(mesh: MeshClient) -> governance_pb2_grpc.GovernanceServiceAsyncStub:
    return mesh.stub(governance_pb2_grpc.GovernanceServiceStub)


# -- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterArgs:
    kind: str
    name: str
    uri: str
    digest: str
    description: str = ""
    owner: str = ""
    card: Path | None = None
    upstream: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()


def register_request(args: RegisterArgs) -> governance_pb2.RegisterRequest:
    request = governance_pb2.RegisterRequest(
        kind=KINDS[args.kind],
        name=args.name,
        description=args.description,
        owner=args.owner,
        uri=args.uri,
        content_digest=args.digest,
        lineage=[parse_upstream(s) for s in args.upstream],
    )
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument("--metadata", f"{item!r}: expected KEY=VALUE")
        request.metadata[key].string_value = value
    if args.card is not None:
        getattr(request, DETAILS_FIELD[args.kind]).CopyFrom(load_details(args.kind, args.card))
    return request


def version_line(v: governance_pb2.ArtifactVersion) -> str:
    aliases = f"  aliases: {', '.join(v.aliases)}" if v.aliases else ""
    return (
        f"{kind_name(v.kind)} {v.name} v{v.version}  {state_name(v.state)}  "
        f"{v.content_digest}{aliases}"
    )


async def register(config: MeshConfig, args: RegisterArgs, json_out: bool) -> str:
    request = register_request(args)
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).Register(request)
    if json_out:
        return as_json(reply)
    verb = "already registered" if reply.already_exists else "registered"
    return f"{verb}: {version_line(reply.version)}\naudit event: {reply.audit_event_id or '-'}"


async def list_artifacts(
    config: MeshConfig,
    kind: str | None,
    prefix: str,
    page_size: int,
    page_token: str,
    json_out: bool,
) -> str:
    request = governance_pb2.ListArtifactsRequest(
        kind=KINDS[kind] if kind else governance_pb2.ARTIFACT_KIND_UNSPECIFIED,
        name_prefix=prefix,
        page_size=page_size,
        page_token=page_token,
    )
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).ListArtifacts(request)
    if json_out:
        return as_json(reply)
    if not reply.artifacts:
        return "no artifacts"
    rows = [["KIND", "NAME", "LATEST", "ALIASES", "OWNER", "DESCRIPTION"]]
    for a in reply.artifacts:
        aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(a.aliases.items())) or "-"
        rows.append(
            [kind_name(a.kind), a.name, f"v{a.latest_version}", aliases, a.owner or "-",
             a.description[:60]]
        )  # fmt: skip
    out = table(rows)
    if reply.next_page_token:
        out += f"\nmore: --page-token {reply.next_page_token}"
    return out


async def _versions(
    mesh: MeshClient, kind: governance_pb2.ArtifactKind.ValueType, name: str
) -> list[governance_pb2.ArtifactVersion]:
    versions: list[governance_pb2.ArtifactVersion] = []
    token = ""
    while True:
        reply = await _stub(mesh).ListArtifacts(
            governance_pb2.ListArtifactsRequest(kind=kind, name=name, page_token=token)
        )
        versions.extend(reply.versions)
        token = reply.next_page_token
        if not token:
            return versions


def _details_lines(v: governance_pb2.ArtifactVersion) -> list[str]:
    which = v.WhichOneof("details")
    if which is None:
        return []
    doc = json_format.MessageToDict(getattr(v, which), preserving_proto_field_name=True)
    return [f"{which}:"] + [f"  {k}: {json.dumps(val)}" for k, val in doc.items()]


async def show(
    config: MeshConfig, kind: str, name: str, version: int, alias: str, json_out: bool
) -> str:
    ref = governance_pb2.ArtifactRef(kind=KINDS[kind], name=name, version=version, alias=alias)
    async with MeshClient(config) as mesh:
        got = await _stub(mesh).GetArtifact(governance_pb2.GetArtifactRequest(ref=ref))
        versions = await _versions(mesh, KINDS[kind], name)
    if json_out:
        return json.dumps(
            {
                "artifact": json.loads(as_json(got.artifact)),
                "version": json.loads(as_json(got.version)),
                "versions": [json.loads(as_json(v)) for v in versions],
            }
        )
    a = got.artifact
    aliases = ", ".join(f"{k} -> v{v}" for k, v in sorted(a.aliases.items())) or "none"
    out = [
        f"{kind_name(a.kind)} {a.name}: {a.description or '(no description)'}",
        f"owner: {a.owner or '-'}   created: {_time(a.create_time)}   latest: v{a.latest_version}",
        f"aliases: {aliases}",
        "",
        _versions_table(versions),
        "",
        f"v{got.version.version} ({state_name(got.version.state)}), uri {got.version.uri or '-'}, "
        f"by {got.version.created_by}",
        *_details_lines(got.version),
    ]
    return "\n".join(out)


def _versions_table(versions: Iterable[governance_pb2.ArtifactVersion]) -> str:
    rows = [["VERSION", "STATE", "ALIASES", "CREATED", "BY", "DIGEST"]]
    for v in versions:
        rows.append(
            [f"v{v.version}", state_name(v.state), ", ".join(v.aliases) or "-",
             _time(v.create_time), v.created_by, v.content_digest[:23]]
        )  # fmt: skip
    return table(rows)


def parse_at(text: str) -> datetime:
    """``--at``: an ISO 8601 time (``2026-12-01T09:00:00Z``; UTC when it names no zone) or a
    window before now (``2h``, ``7d``)."""
    from llmops.logs import parse_window

    try:
        return datetime.now(UTC) - parse_window(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            "at", f"{text!r} is neither an ISO 8601 time nor a window like 2h or 7d"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def alias_moves_table(changes: Iterable[governance_pb2.AliasChange]) -> str:
    rows = [["WHEN", "ALIAS", "FROM", "TO", "BY", "REASON"]]
    for c in changes:
        rows.append(
            [_time(c.change_time), c.alias,
             f"v{c.previous_version}" if c.previous_version else "-",
             f"v{c.version}" if c.version else "removed", c.actor_id, c.reason or "-"]
        )  # fmt: skip
    return table(rows) if len(rows) > 1 else "(no alias was ever set)"


async def history(
    config: MeshConfig, kind: str, name: str, alias: str, at: str, json_out: bool
) -> str:
    request = governance_pb2.GetAliasHistoryRequest(kind=KINDS[kind], name=name, alias=alias)
    if at:
        request.at_time.FromDatetime(parse_at(at))
    async with MeshClient(config) as mesh:
        moves = await _stub(mesh).GetAliasHistory(request)
        got = await _stub(mesh).GetArtifact(
            governance_pb2.GetArtifactRequest(
                ref=governance_pb2.ArtifactRef(kind=KINDS[kind], name=name)
            )
        )
        versions = await _versions(mesh, KINDS[kind], name)
    if json_out:
        return json.dumps(
            {
                "aliases": dict(got.artifact.aliases),
                "versions": [json.loads(as_json(v)) for v in reversed(versions)],
                **json.loads(as_json(moves)),
            }
        )
    aliases = ", ".join(f"{k} -> v{v}" for k, v in sorted(got.artifact.aliases.items()))
    out = [
        f"{kind_name(got.artifact.kind)} {name}: versions, oldest first",
        _versions_table(reversed(versions)),
        "",
        "alias moves, oldest first" + (f" ({alias} only)" if alias else ""),
        alias_moves_table(moves.changes),
        "",
        f"aliases now: {aliases or 'none'}",
    ]
    if at:
        held = ", ".join(f"{k} -> v{v}" for k, v in sorted(moves.aliases_at.items()))
        out.append(f"aliases at {_time(request.at_time)} UTC: {held or 'none'}")
    return "\n".join(out)


async def set_alias(
    config: MeshConfig,
    kind: str,
    name: str,
    alias: str,
    version: int,
    expected: int | None,
    reason: str,
    json_out: bool,
) -> str:
    request = governance_pb2.SetAliasRequest(
        kind=KINDS[kind], name=name, alias=alias, version=version, reason=reason
    )
    if expected is not None:
        request.expected_version = expected
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).SetAlias(request)
    if json_out:
        return as_json(reply)
    before = f"v{reply.previous_version}" if reply.previous_version else "none"
    after = f"v{reply.version}" if reply.version else "removed"
    decision = reply.decision.decision_id or "-"
    return (
        f"{kind_name(KINDS[kind])} {name} alias {alias}: {before} -> {after}  (decision {decision})"
    )


async def approve(
    config: MeshConfig, kind: str, name: str, version: int, reason: str, json_out: bool
) -> str:
    request = governance_pb2.TransitionRequest(
        ref=governance_pb2.ArtifactRef(kind=KINDS[kind], name=name, version=version),
        target_state=governance_pb2.VERSION_STATE_APPROVED,
        reason=reason,
    )
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).Transition(request)
    if json_out:
        return as_json(reply)
    return (
        f"{kind_name(KINDS[kind])} {name} v{version}: {state_name(reply.previous_state)} -> "
        f"{state_name(reply.version.state)}"
    )


# -- lineage -----------------------------------------------------------------------------------


def node_key(node: governance_pb2.LineageNode) -> tuple[str, str, int]:
    which = node.WhichOneof("node")
    if which == "artifact":
        return (kind_name(node.artifact.kind), node.artifact.name, node.artifact.version)
    if which == "route":
        return ("route", node.route, 0)
    return ("uri", node.uri, 0)


def node_label(node: governance_pb2.LineageNode) -> str:
    kind, name, version = node_key(node)
    return f"{kind} {name}" + (f" v{version}" if version else "")


def lineage_tree(
    root: governance_pb2.LineageNode, edges: Sequence[governance_pb2.LineageEdge], direction: str
) -> str:
    """The walk as a terminal tree: the root, then its upstream and/or downstream branches,
    each edge labelled with its relation (read "upstream RELATION downstream")."""
    lines = [node_label(root)]
    branches = [d for d in ("upstream", "downstream") if direction in (d, "both")]
    for i, side in enumerate(branches):
        last_branch = i == len(branches) - 1
        far = "upstream" if side == "upstream" else "downstream"
        near = "downstream" if side == "upstream" else "upstream"
        children: dict[tuple[str, str, int], list[governance_pb2.LineageEdge]] = {}
        for e in edges:
            children.setdefault(node_key(getattr(e, near)), []).append(e)
        body: list[str] = []
        _grow(body, node_key(root), children, far, "", set())
        if len(branches) > 1:
            lines.append(("└─ " if last_branch else "├─ ") + side)
            pad = "   " if last_branch else "│  "
            lines += [pad + line for line in body] or [pad + "(none)"]
        else:
            lines += body or [f"(nothing {side})"]
    return "\n".join(lines)


def _grow(
    out: list[str],
    key: tuple[str, str, int],
    children: dict[tuple[str, str, int], list[governance_pb2.LineageEdge]],
    far: str,
    prefix: str,
    expanded: set[tuple[str, str, int]],
) -> None:
    """Appends the branches below ``key``; a node already expanded is not repeated (its
    line says ``(see above)``), which also stops cycles."""
    expanded.add(key)
    edges = children.get(key, [])
    for i, e in enumerate(edges):
        last = i == len(edges) - 1
        node = getattr(e, far)
        child = node_key(node)
        again = child in expanded and bool(children.get(child))
        out.append(
            f"{prefix}{'└─ ' if last else '├─ '}{relation_name(e.relation)}  {node_label(node)}"
            + ("  (see above)" if again else "")
        )
        if child not in expanded:
            _grow(out, child, children, far, prefix + ("   " if last else "│  "), expanded)


async def lineage_of(
    mesh: MeshClient, node: governance_pb2.LineageNode, direction: str, depth: int
) -> tuple[governance_pb2.LineageNode, list[governance_pb2.LineageEdge]]:
    """The walk from ``node``, an artifact pinned first to the version it resolves to (so
    the tree's root matches the version-pinned edges)."""
    if node.WhichOneof("node") == "artifact":
        got = await _stub(mesh).GetArtifact(governance_pb2.GetArtifactRequest(ref=node.artifact))
        node = governance_pb2.LineageNode(
            artifact=governance_pb2.ArtifactRef(
                kind=got.version.kind, name=got.version.name, version=got.version.version
            )
        )
    reply = await _stub(mesh).GetLineage(
        governance_pb2.GetLineageRequest(node=node, direction=DIRECTIONS[direction], depth=depth)
    )
    return node, list(reply.edges)


def lineage_node(kind: str, name: str, version: int) -> governance_pb2.LineageNode:
    if kind == "route":
        return governance_pb2.LineageNode(route=name)
    if kind == "uri":
        return governance_pb2.LineageNode(uri=name)
    return governance_pb2.LineageNode(
        artifact=governance_pb2.ArtifactRef(kind=KINDS[kind], name=name, version=version)
    )


async def lineage(
    config: MeshConfig,
    kind: str,
    name: str,
    version: int,
    direction: str,
    depth: int,
    json_out: bool,
) -> str:
    async with MeshClient(config) as mesh:
        root, edges = await lineage_of(mesh, lineage_node(kind, name, version), direction, depth)
    if json_out:
        return as_json(governance_pb2.GetLineageResponse(edges=edges))
    return lineage_tree(root, edges, direction)


# -- policy ------------------------------------------------------------------------------------


def decision_text(d: governance_pb2.PolicyDecision) -> str:
    result = json.dumps(json_format.MessageToDict(d.result), sort_keys=True)
    lines = [
        f"decision {d.decision_id}",
        f"path     {d.path}",
        f"revision {d.bundle_revision}",
        f"allowed  {'yes' if d.allowed else 'no'}",
        f"result   {result}",
        f"latency  {d.latency_us} µs",
    ]
    lines += [f"reason   {r}" for r in d.reasons]
    return "\n".join(lines)


async def evaluate(config: MeshConfig, path: str, input_text: str, json_out: bool) -> str:
    request = governance_pb2.EvaluateRequest(path=path, input=parse_input(input_text))
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).Evaluate(request)
    return as_json(reply.decision) if json_out else decision_text(reply.decision)


@dataclass(frozen=True)
class PolicyCase:
    name: str
    path: str
    input: struct_pb2.Struct
    expect: Any


@dataclass(frozen=True)
class CaseOutcome:
    case: PolicyCase
    passed: bool
    detail: str
    decision_id: str = ""


def load_cases(path: Path) -> list[PolicyCase]:
    """A YAML list of ``{name?, path, input, expect}`` (or ``{cases: [...]}``). ``expect`` is
    ``true``/``false`` (the decision's ``allowed``), or a mapping of any of ``allowed``,
    ``reasons`` (each must be among the decision's), ``result`` (the whole result, equal),
    ``error`` (a gRPC status name the call must fail with, e.g. ``INVALID_ARGUMENT``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidArgument("CASES", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument("CASES", f"{path} is not YAML: {exc}") from None
    if isinstance(doc, dict):
        doc = doc.get("cases")
    if not isinstance(doc, list) or not doc:
        raise InvalidArgument("CASES", f"{path}: expected a non-empty list of cases")
    cases = []
    for i, raw in enumerate(doc):
        where = f"cases[{i}]"
        if not isinstance(raw, dict):
            raise InvalidArgument(where, "must be a mapping with path, input, expect")
        missing = [k for k in ("path", "input", "expect") if k not in raw]
        if missing:
            raise InvalidArgument(f"{where}.{missing[0]}", "required")
        expect = raw["expect"]
        if not isinstance(expect, bool | dict):
            raise InvalidArgument(f"{where}.expect", "must be true, false or a mapping")
        if isinstance(expect, dict):
            unknown = set(expect) - {"allowed", "reasons", "result", "error"}
            if unknown:
                raise InvalidArgument(f"{where}.expect.{sorted(unknown)[0]}", "unknown key")
        cases.append(
            PolicyCase(
                name=str(raw.get("name") or f"case {i + 1}"),
                path=str(raw["path"]),
                input=to_struct(raw["input"], f"{where}.input"),
                expect=expect,
            )
        )
    return cases


def check_case(
    case: PolicyCase, decision: governance_pb2.PolicyDecision | None, error: str
) -> CaseOutcome:
    expect = case.expect if isinstance(case.expect, dict) else {"allowed": case.expect}
    problems = []
    if "error" in expect:
        if error != str(expect["error"]).upper():
            problems.append(f"expected error {expect['error']}, got {error or 'a decision'}")
    elif decision is None:
        problems.append(f"failed: {error}")
    else:
        if "allowed" in expect and bool(expect["allowed"]) != decision.allowed:
            problems.append(f"allowed is {decision.allowed}, expected {expect['allowed']}")
        missing = [r for r in expect.get("reasons", []) if r not in decision.reasons]
        if missing:
            problems.append(f"reasons lack {missing!r} (got {list(decision.reasons)!r})")
        if "result" in expect:
            got = json_format.MessageToDict(decision.result)
            if got != expect["result"]:
                problems.append(f"result is {json.dumps(got)}")
    return CaseOutcome(
        case,
        not problems,
        "; ".join(problems),
        decision.decision_id if decision is not None else "",
    )


async def run_cases(config: MeshConfig, cases: Sequence[PolicyCase]) -> list[CaseOutcome]:
    import grpc

    outcomes = []
    async with MeshClient(config) as mesh:
        for case in cases:
            try:
                reply = await _stub(mesh).Evaluate(
                    governance_pb2.EvaluateRequest(path=case.path, input=case.input)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    raise
                error = f"{exc.code().name}"
                outcomes.append(check_case(case, None, error))
                continue
            outcomes.append(check_case(case, reply.decision, ""))
    return outcomes


def report_cases(outcomes: Sequence[CaseOutcome], json_out: bool) -> str:
    failed = sum(not o.passed for o in outcomes)
    if json_out:
        return json.dumps(
            {
                "passed": len(outcomes) - failed,
                "failed": failed,
                "cases": [
                    {"name": o.case.name, "path": o.case.path, "passed": o.passed,
                     "detail": o.detail, "decision_id": o.decision_id}
                    for o in outcomes
                ],
            }
        )  # fmt: skip
    lines = [
        f"{'PASS' if o.passed else 'FAIL'}  {o.case.name}  ({o.case.path})"
        + (f": {o.detail}" if o.detail else "")
        for o in outcomes
    ]
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)


# -- audit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditArgs:
    chain: str = ""
    since: str = ""
    """A window ending now (``30m``, ``2h``, ``7d``); empty = no lower bound."""
    actor: str = ""
    action: str = ""
    resource: str = ""
    """``TYPE`` or ``TYPE/NAME``."""
    page_size: int = 50
    page_token: str = ""


def audit_query_request(args: AuditArgs) -> governance_pb2.QueryAuditRequest:
    from datetime import UTC, datetime

    from llmops.logs import parse_window

    resource_type, _, resource_name = args.resource.partition("/")
    request = governance_pb2.QueryAuditRequest(
        chain=args.chain,
        actor_id=args.actor,
        action_prefix=args.action,
        resource_type=resource_type,
        resource_name=resource_name,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    if args.since:
        try:
            window = parse_window(args.since)
        except ValueError as err:
            raise InvalidArgument("since", str(err)) from None
        request.window.start_time.FromDatetime(datetime.now(UTC) - window)
    return request


def audit_lines(reply: governance_pb2.QueryAuditResponse) -> str:
    rows = [["TIME", "CHAIN", "SEQ", "ACTOR", "ACTION", "RESOURCE", "OUTCOME"]]
    for r in reply.records:
        resource = f"{r.resource.type}/{r.resource.name}"
        if r.resource.version:
            resource += f"@{r.resource.version}"
        outcome = events_pb2.AuditOutcome.Name(r.outcome).removeprefix("AUDIT_OUTCOME_").lower()
        rows.append(
            [_time(r.event_time), r.chain, str(r.sequence), r.actor.id, r.action, resource,
             outcome]
        )  # fmt: skip
    out = table(rows) if len(rows) > 1 else "no audit records"
    if reply.next_page_token:
        out += f"\nnext page: --page-token {reply.next_page_token}"
    return out


async def audit_query(config: MeshConfig, args: AuditArgs, json_out: bool) -> str:
    request = audit_query_request(args)
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).QueryAudit(request)
    return as_json(reply) if json_out else audit_lines(reply)


def verification_text(chain: str, v: governance_pb2.VerifyAuditResponse) -> str:
    lines = [
        f"chain    {chain}",
        f"valid    {'yes' if v.valid else 'NO'}",
        f"checked  {v.records_checked} records",
        f"head     {v.head_sequence} {v.head_hash or '-'}",
    ]
    if not v.valid:
        lines += [
            f"broken   at sequence {v.first_invalid_sequence}",
            f"expected {v.expected_hash or '-'}",
            f"actual   {v.actual_hash or '-'}",
        ]
    lines.append(f"message  {v.message}")
    return "\n".join(lines)


async def audit_verify(
    config: MeshConfig, chain: str, first: int, last: int, json_out: bool
) -> tuple[bool, str]:
    """(valid, text) of VerifyAudit on ``chain`` from ``first`` to ``last`` (0 = 1 / head)."""
    request = governance_pb2.VerifyAuditRequest(chain=chain, from_sequence=first, to_sequence=last)
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).VerifyAudit(request)
    return reply.valid, as_json(reply) if json_out else verification_text(chain, reply)


# -- compliance --------------------------------------------------------------------------------


async def compliance(
    config: MeshConfig, subject: str, name: str, version: int, alias: str, json_out: bool
) -> str:
    if subject == "route":
        request = governance_pb2.GetComplianceReportRequest(route=name)
    else:
        request = governance_pb2.GetComplianceReportRequest(
            model=governance_pb2.ArtifactRef(
                kind=governance_pb2.ARTIFACT_KIND_MODEL, name=name, version=version, alias=alias
            )
        )
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).GetComplianceReport(request)
    return as_json(reply) if json_out else compliance_text(reply)


def _risk(tier: int) -> str:
    return _name(governance_pb2.RiskTier, tier, "RISK_TIER_").upper()


def _drift_lines(drift: Iterable[governance_pb2.DriftStatus], indent: str = "  ") -> list[str]:
    rows = [["ROUTE", "MODEL", "METRIC", "PSI", "KS", "DRIFTED", "REPORTED", "N REF/LATEST"]]
    for d in drift:
        rows.append(
            [d.route, d.model_name, d.metric, f"{d.psi:.3f}", f"{d.ks:.3f}",
             "YES" if d.drifted else "no", _time(d.report_time),
             f"{d.reference_count}/{d.latest_count}"]
        )  # fmt: skip
    if len(rows) == 1:
        return [indent + "none yet (the drift job reports once predictions are logged)"]
    return [indent + line for line in table(rows).splitlines()]


def _model_lines(m: governance_pb2.ModelCompliance) -> list[str]:
    v = m.version
    card = m.card
    present = card.required_count - len(card.missing)
    lines = [
        f"model {v.name} v{v.version} ({state_name(v.state)})"
        + (f", aliases: {', '.join(v.aliases)}" if v.aliases else ""),
        f"  risk tier: {_risk(m.risk_tier)}"
        + (f" - {v.model_card.risk_tier_rationale}" if v.model_card.risk_tier_rationale else ""),
        f"  model card: {present}/{card.required_count} required fields"
        + (" (complete)" if card.complete else f"; missing: {', '.join(card.missing)}"),
        f"  registered by {v.created_by} at {_time(v.create_time)}; four eyes: "
        + ("yes" if m.four_eyes else "NO"),
    ]
    lines.append("  lifecycle:")
    for c in m.approvals:
        before = state_name(c.previous_state) if c.previous_state else "-"
        lines.append(
            f"    {_time(c.change_time)}  {before} -> {state_name(c.state)}  by {c.actor_id}"
            + (f"  ({c.reason})" if c.reason else "")
        )
    lines.append("  alias history:")
    lines += ["    " + line for line in alias_moves_table(m.alias_history).splitlines()]
    if m.last_evaluations:
        lines.append("  last evaluation:")
        for e in m.last_evaluations:
            on = f" on {e.dataset.name}" if e.dataset.name else ""
            at = f" at {_time(e.evaluate_time)}" if e.HasField("evaluate_time") else " (undated)"
            lines.append(
                f"    {e.metric} = {e.value:g}{on}{f' [{e.slice}]' if e.slice else ''}{at}"
            )
    else:
        lines.append("  last evaluation: none on the card")
    lines.append(f"  serving routes: {', '.join(m.routes) or 'none'}")
    lines.append("  drift:")
    lines += _drift_lines(m.drift, "    ")
    lines.append("  findings:" + ("" if m.findings else " none"))
    lines += [f"    - {f}" for f in m.findings]
    return lines


def compliance_text(r: governance_pb2.GetComplianceReportResponse) -> str:
    title = f"route {r.route}" if r.route else "model"
    lines = [f"compliance report: {title}   (generated {_time(r.generate_time)} UTC)"]
    if r.route:
        served = ", ".join(f"{kind_name(s.kind)} {s.name} v{s.version}" for s in r.served)
        lines.append(f"served: {served or 'nothing registered'}")
    for m in r.models:
        lines += ["", *_model_lines(m)]
    if r.route:
        lines += ["", f"route {r.route} drift:", *_drift_lines(r.route_drift)]
    rows = [["TABLE", "KEEPS", f"HIGH-RISK LOG (>= {r.minimum_retention_days} DAYS)", "PURPOSE"]]
    for t in r.retention:
        keeps = f"{t.ttl_days} days" if t.ttl_days else "no TTL"
        required = ("ok" if t.meets_minimum else "too short") if t.required_log else "-"
        rows.append([t.table, keeps, required, t.purpose])
    lines += ["", "logging retention in force (ClickHouse TTLs):",
              *("  " + line for line in table(rows).splitlines())]  # fmt: skip
    lines += ["", "findings:" + ("" if r.findings else " none")]
    lines += [f"  - {f}" for f in r.findings]
    return "\n".join(lines)
