"""Guardrail policies: YAML files -> validated, versioned, compiled policies.

A policy is a list of checks; each check runs one detector and says what its findings mean:
finding types it acts on (prefixes), a score threshold, an action (ALLOW / FLAG / REDACT /
BLOCK), and for REDACT a replacement style, for BLOCK a user-safe message. Errors name the
file, the policy and the field (``deploy/guardrails/storefront.yaml:
policies[storefront-input@1].detectors[2].action: unknown action 'DROP'``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, guardrail_pb2
from services.guardrail.detectors.base import Detector

VERDICTS: dict[str, int] = {
    "ALLOW": common_pb2.VERDICT_ALLOW,
    "FLAG": common_pb2.VERDICT_FLAG,
    "REDACT": common_pb2.VERDICT_REDACT,
    "BLOCK": common_pb2.VERDICT_BLOCK,
}
SEVERITY = {common_pb2.VERDICT_ALLOW: 1, common_pb2.VERDICT_FLAG: 2,
            common_pb2.VERDICT_REDACT: 3, common_pb2.VERDICT_BLOCK: 4}  # fmt: skip
DIRECTIONS = {"INPUT": common_pb2.DIRECTION_INPUT, "OUTPUT": common_pb2.DIRECTION_OUTPUT}

DETECTORS: dict[str, str] = {
    "pii": "services.guardrail.detectors.pii:PiiDetector",
    "prompt_injection": "services.guardrail.detectors.injection:PromptInjectionDetector",
    "toxicity": "services.guardrail.detectors.toxicity:ToxicityDetector",
    "competitor": "services.guardrail.detectors.commerce:CompetitorDetector",
    "grounding": "services.guardrail.detectors.commerce:GroundingDetector",
    "topic": "services.guardrail.detectors.commerce:TopicDetector",
    "json_schema": "services.guardrail.detectors.commerce:JsonSchemaDetector",
}
"""Detector name -> implementation (``module:Class``; constructed with the check's params)."""

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_DURATION_MS = re.compile(r"^(\d+)\s*ms$")


class PolicyError(InvalidArgument):
    """The policy files do not validate; ``field`` is ``file: path.to.field``."""


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: str
    finding_types: list[str] = []
    threshold: float = Field(0.5, ge=0, le=1)
    action: Literal["ALLOW", "FLAG", "REDACT", "BLOCK"]
    redact_style: Literal["mask", "placeholder", "hash"] = "placeholder"
    block_message: str = ""
    params: dict[str, Any] = {}


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = Field(ge=1)
    description: str = ""
    directions: list[Literal["INPUT", "OUTPUT"]] = Field(min_length=1)
    fail_mode: Literal["OPEN", "CLOSED"] = "CLOSED"
    timeout: str = "50ms"
    detectors: list[_Check] = Field(min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: dict[Literal["INPUT", "OUTPUT"], str] = {}
    policies: list[_Policy] = []


@dataclass(frozen=True, slots=True)
class Check:
    detector: Detector
    prefixes: tuple[str, ...]
    threshold: float
    action: int
    redact_style: str
    block_message: str

    def counts(self, finding_type: str, score: float) -> bool:
        if score < self.threshold:
            return False
        return not self.prefixes or finding_type.startswith(self.prefixes)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    version: int
    directions: frozenset[int]
    fail_open: bool
    timeout_s: float
    checks: tuple[Check, ...]
    detectors: tuple[Detector, ...]
    """Distinct detectors of the checks (each runs once per text)."""
    proto: guardrail_pb2.Policy
    file: str


@dataclass(slots=True)
class PolicySet:
    policies: dict[str, dict[int, CompiledPolicy]]
    defaults: dict[int, str]
    revision: str
    sources: tuple[str, ...] = field(default_factory=tuple)

    def get(self, name: str, version: int, direction: int) -> CompiledPolicy:
        if not name:
            name = self.defaults.get(direction, "")
            if not name:
                raise InvalidArgument("policy", "no default policy for this direction: name one")
        versions = self.policies.get(name)
        if versions is None:
            raise NotFound(f"policy {name!r} does not exist")
        if version:
            found = versions.get(version)
            if found is None:
                raise NotFound(f"policy {name!r} has no version {version}")
        else:
            found = versions[max(versions)]
        if direction and direction not in found.directions:
            raise InvalidArgument(
                "direction", f"policy {name} v{found.version} is not for this direction"
            )
        return found

    def current(self) -> list[CompiledPolicy]:
        return [v[max(v)] for _, v in sorted(self.policies.items())]


_DETECTOR_CACHE: dict[tuple[str, str], Detector] = {}


def make_detector(name: str, params: Mapping[str, Any], where: str) -> Detector:
    target = DETECTORS.get(name)
    if target is None:
        raise PolicyError(where, f"unknown detector {name!r} (one of {', '.join(DETECTORS)})")
    key = (name, repr(sorted(params.items())))
    cached = _DETECTOR_CACHE.get(key)
    if cached is not None:
        return cached
    module, _, cls = target.partition(":")
    factory: Callable[..., Detector] = getattr(importlib.import_module(module), cls)
    try:
        detector = factory(**params) if params else factory()
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{where}.params", str(exc)) from None
    _DETECTOR_CACHE[key] = detector
    return detector


def _timeout_s(text: str, where: str) -> float:
    match = _DURATION_MS.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= 10_000:
        raise PolicyError(where, f"{text!r} is not a timeout like 50ms (1-10000)")
    return int(match.group(1)) / 1000


def _proto(p: _Policy, timeout_s: float) -> guardrail_pb2.Policy:
    out = guardrail_pb2.Policy(
        name=p.name,
        version=p.version,
        description=p.description,
        directions=[DIRECTIONS[d] for d in p.directions],
        fail_mode=guardrail_pb2.FAIL_MODE_OPEN
        if p.fail_mode == "OPEN"
        else guardrail_pb2.FAIL_MODE_CLOSED,
    )
    out.timeout.FromMicroseconds(int(timeout_s * 1e6))
    for c in p.detectors:
        d = out.detectors.add(
            detector=c.detector,
            finding_types=c.finding_types,
            threshold=c.threshold,
            action=VERDICTS[c.action],
        )
        params = dict(c.params)
        if c.action == "REDACT":
            params["redact_style"] = c.redact_style
        if c.block_message:
            params["block_message"] = c.block_message
        for k, v in params.items():
            _set_value(d.params[k], v)
    return out


def _set_value(target: common_pb2.Value, v: Any) -> None:
    if isinstance(v, bool):
        target.bool_value = v
    elif isinstance(v, int):
        target.int64_value = v
    elif isinstance(v, float):
        target.double_value = v
    elif isinstance(v, str):
        target.string_value = v
    elif isinstance(v, list) and all(isinstance(x, str) for x in v):
        target.string_list_value.values.extend(v)
    else:  # nested structures (a JSON schema) travel as their JSON text
        target.string_value = json.dumps(v, sort_keys=True)


def compile_policy(p: _Policy, label: str) -> CompiledPolicy:
    where = f"{label}: policies[{p.name}@{p.version}]"
    if not _NAME.match(p.name):
        raise PolicyError(f"{where}.name", f"{p.name!r} is not lower-kebab-case")
    timeout_s = _timeout_s(p.timeout, f"{where}.timeout")
    checks: list[Check] = []
    detectors: dict[int, Detector] = {}
    for i, c in enumerate(p.detectors):
        detector = make_detector(c.detector, c.params, f"{where}.detectors[{i}].detector")
        detectors[id(detector)] = detector
        if c.action == "BLOCK" and not c.block_message:
            raise PolicyError(
                f"{where}.detectors[{i}].block_message", "a BLOCK check needs a user-safe message"
            )
        checks.append(
            Check(
                detector,
                tuple(c.finding_types),
                c.threshold,
                VERDICTS[c.action],
                c.redact_style,
                c.block_message,
            )
        )
    return CompiledPolicy(
        name=p.name,
        version=p.version,
        directions=frozenset(DIRECTIONS[d] for d in p.directions),
        fail_open=p.fail_mode == "OPEN",
        timeout_s=timeout_s,
        checks=tuple(checks),
        detectors=tuple(detectors.values()),
        proto=_proto(p, timeout_s),
        file=label,
    )


def _describe(error: Mapping[str, Any], data: Any) -> str:
    parts: list[str] = []
    node = data
    for loc in error["loc"]:
        if isinstance(loc, int):
            item = node[loc] if isinstance(node, list) and loc < len(node) else None
            label = None
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                label = f"{item['name']}@{item.get('version', '?')}"
            parts[-1] += f"[{label}]" if label else f"[{loc}]"
            node = item
        else:
            parts.append(str(loc))
            node = node.get(loc) if isinstance(node, dict) else None
    return ".".join(parts)


def policy_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml"))
        elif p.exists():
            files.append(p)
        else:
            raise PolicyError(str(p), "no such file or directory")
    return files


def load_policies(paths: Sequence[Path]) -> PolicySet:
    policies: dict[str, dict[int, CompiledPolicy]] = {}
    defaults: dict[int, str] = {}
    digest = hashlib.sha256()
    files = policy_files(paths)
    for path in files:
        label = str(path)
        raw = path.read_text(encoding="utf-8")
        digest.update(path.name.encode() + b"\0" + raw.encode())
        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise PolicyError(label, f"not valid YAML: {exc}") from None
        try:
            spec = _File.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = _describe(first, data) or "(top level)"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise PolicyError(f"{label}: {where}", message) from None
        for p in spec.policies:
            versions = policies.setdefault(p.name, {})
            if p.version in versions:
                raise PolicyError(
                    f"{label}: policies[{p.name}@{p.version}]",
                    f"version {p.version} already defined in {versions[p.version].file}",
                )
            versions[p.version] = compile_policy(p, label)
        for direction, name in spec.defaults.items():
            defaults[DIRECTIONS[direction]] = name
    for name in defaults.values():
        if name not in policies:
            raise PolicyError("defaults", f"default policy {name!r} is not defined")
    return PolicySet(policies, defaults, digest.hexdigest()[:12], tuple(str(f) for f in files))


def compile_candidate(candidate: guardrail_pb2.Policy) -> CompiledPolicy:
    """A policy sent inline (TestPolicy) compiled like one read from a file."""
    names = {v: k for k, v in DIRECTIONS.items()}
    checks = []
    for d in candidate.detectors:
        params = {k: _python(v) for k, v in d.params.items()}
        style = params.pop("redact_style", "placeholder")
        message = params.pop("block_message", "")
        action = common_pb2.Verdict.Name(d.action).removeprefix("VERDICT_")
        checks.append(
            _Check(detector=d.detector, finding_types=list(d.finding_types), threshold=d.threshold,
                   action=action, redact_style=style, block_message=message, params=params)
        )  # fmt: skip
    spec = _Policy(
        name=candidate.name or "candidate", version=candidate.version or 1,
        directions=[names.get(d, "INPUT") for d in candidate.directions]
        or ["INPUT", "OUTPUT"],
        fail_mode="OPEN" if candidate.fail_mode == guardrail_pb2.FAIL_MODE_OPEN else "CLOSED",
        detectors=checks,
    )  # fmt: skip
    return compile_policy(spec, "candidate")


def _python(v: common_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_list_value":
        return list(v.string_list_value.values)
    return getattr(v, kind) if kind else None
