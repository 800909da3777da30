"""Guardrail policies: YAML files -> validated, versioned, compiled policies.

A policy is a list of checks; each check runs one detector and says what its findings mean:
finding types it acts on (prefixes), a score threshold, an action (ALLOW / FLAG / REDACT /
BLOCK), and for REDACT a replacement style, for BLOCK a user-safe message. Files are read by
the runtime's versioned-YAML loader (:mod:`llmops.yamlfiles`); errors name the file, the
policy and the field (``deploy/guardrails/storefront.yaml:
policies[storefront-input@1].detectors[2].action: Input should be 'ALLOW', ...``).

No protobuf here beyond the enum values of verdicts and directions: the servicer turns a
:class:`CompiledPolicy` (its :class:`PolicySpec`) into a ``Policy`` message and a candidate
``Policy`` message into the plain mapping :func:`compile_candidate` validates.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2
from llmops.yamlfiles import YamlFileError, load_yaml_files, validate_document, yaml_files
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

DETECTOR_CACHE_SIZE = 64
"""Detectors kept for reuse, least recently used evicted first. A reload or a TestPolicy
candidate reuses the detector of an equal (name, params) instead of building it again
(building the PII or toxicity detector costs milliseconds to tens of milliseconds). The
shipped policies use about ten distinct ones; a policy in force holds its own detectors, so
an evicted one only costs a rebuild on the next reload. Bounded because every TestPolicy
candidate with new params would otherwise add one for the life of the process."""

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_DURATION_MS = re.compile(r"^(\d+)\s*ms$")


class PolicyError(YamlFileError):
    """The policy files (or a candidate policy) do not validate; ``field`` is
    ``file: path.to.field``."""


class CheckSpec(BaseModel):
    """One check of a policy, as written in the file."""

    model_config = ConfigDict(extra="forbid")
    detector: str
    finding_types: list[str] = []
    threshold: float = Field(0.5, ge=0, le=1)
    action: Literal["ALLOW", "FLAG", "REDACT", "BLOCK"]
    redact_style: Literal["mask", "placeholder", "hash"] = "placeholder"
    block_message: str = ""
    params: dict[str, Any] = {}


class PolicySpec(BaseModel):
    """One policy version, as written in the file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = Field(ge=1)
    description: str = ""
    directions: list[Literal["INPUT", "OUTPUT"]] = Field(min_length=1)
    fail_mode: Literal["OPEN", "CLOSED"] = "CLOSED"
    timeout: str = "50ms"
    detectors: list[CheckSpec] = Field(min_length=1)


class PolicyFile(BaseModel):
    """One policy file: default policy per direction, and policies."""

    model_config = ConfigDict(extra="forbid")
    defaults: dict[Literal["INPUT", "OUTPUT"], str] = {}
    policies: list[PolicySpec] = []


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
    spec: PolicySpec
    """The policy as written (what ListPolicies and GetPolicy show)."""
    file: str


@dataclass(slots=True)
class PolicySet:
    policies: dict[str, dict[int, CompiledPolicy]]
    defaults: dict[int, str]
    revision: str
    """Of the files the set was compiled from (:attr:`llmops.yamlfiles.YamlFiles.revision`)."""
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
        """The current (highest) version of every policy, by name."""
        return [v[max(v)] for _, v in sorted(self.policies.items())]


class DetectorCache:
    """Detectors by (name, params), at most ``size`` of them, least recently used evicted
    first (:data:`DETECTOR_CACHE_SIZE`). Thread-safe: reloads compile in a worker thread
    while TestPolicy compiles candidates on the event loop."""

    def __init__(self, size: int = DETECTOR_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("a detector cache holds at least one detector")
        self.size = size
        self._items: OrderedDict[tuple[str, str], Detector] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, params: Mapping[str, Any], where: str) -> Detector:
        """The detector ``name`` built with ``params``; PolicyError at ``where`` when the
        name is unknown or the detector rejects its params."""
        target = DETECTORS.get(name)
        if target is None:
            raise PolicyError(where, f"unknown detector {name!r} (one of {', '.join(DETECTORS)})")
        key = (name, repr(sorted(params.items())))
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        detector = _build(target, params, where)  # outside the lock: building can be slow
        with self._lock:
            detector = self._items.setdefault(key, detector)  # a racing build wins once
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return detector


def _build(target: str, params: Mapping[str, Any], where: str) -> Detector:
    module, _, cls = target.partition(":")
    factory: Callable[..., Detector] = getattr(importlib.import_module(module), cls)
    try:
        return factory(**params) if params else factory()
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{where}.params", str(exc)) from None


DETECTOR_CACHE = DetectorCache()
"""The process's detectors (policies of every reload and TestPolicy candidates)."""


def _timeout_s(text: str, where: str) -> float:
    match = _DURATION_MS.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= 10_000:
        raise PolicyError(where, f"{text!r} is not a timeout like 50ms (1-10000)")
    return int(match.group(1)) / 1000


def compile_policy(
    p: PolicySpec, label: str, cache: DetectorCache = DETECTOR_CACHE
) -> CompiledPolicy:
    where = f"{label}: policies[{p.name}@{p.version}]"
    if not _NAME.match(p.name):
        raise PolicyError(f"{where}.name", f"{p.name!r} is not lower-kebab-case")
    timeout_s = _timeout_s(p.timeout, f"{where}.timeout")
    checks: list[Check] = []
    detectors: dict[int, Detector] = {}
    for i, c in enumerate(p.detectors):
        detector = cache.get(c.detector, c.params, f"{where}.detectors[{i}].detector")
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
        spec=p,
        file=label,
    )


def policy_label(item: Mapping[str, Any]) -> str | None:
    """A policy in error paths: ``name@version`` (``name@?`` before its version is known)."""
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    return f"{name}@{item.get('version', '?')}"


def policy_files(paths: Sequence[Path]) -> list[Path]:
    """The policy files of ``paths`` (directories: their ``*.yaml``/``*.yml``)."""
    return yaml_files(paths, PolicyError)


def load_policies(paths: Sequence[Path]) -> PolicySet:
    """Read, validate and compile every policy file of ``paths``; PolicyError names the
    file, policy and field of the first problem."""
    loaded = load_yaml_files(paths, PolicyFile, PolicyError, label=policy_label)
    policies: dict[str, dict[int, CompiledPolicy]] = {}
    defaults: dict[int, str] = {}
    for file in loaded.files:
        for p in file.spec.policies:
            versions = policies.setdefault(p.name, {})
            if p.version in versions:
                raise PolicyError(
                    f"{file.label}: policies[{p.name}@{p.version}]",
                    f"version {p.version} already defined in {versions[p.version].file}",
                )
            versions[p.version] = compile_policy(p, file.label)
        for direction, name in file.spec.defaults.items():
            defaults[DIRECTIONS[direction]] = name
    for name in defaults.values():
        if name not in policies:
            raise PolicyError("defaults", f"default policy {name!r} is not defined")
    return PolicySet(policies, defaults, loaded.revision, loaded.sources)


CANDIDATE_DEFAULTS: dict[str, Any] = {
    "name": "candidate",
    "version": 1,
    "directions": ["INPUT", "OUTPUT"],
}
"""What a candidate policy that leaves them out is tested as."""


def compile_candidate(data: Mapping[str, Any]) -> CompiledPolicy:
    """A policy sent inline (TestPolicy), as the mapping a file would hold, validated and
    compiled like one read from a file (errors are labelled ``candidate``); name, version
    and directions default to :data:`CANDIDATE_DEFAULTS`."""
    data = {**CANDIDATE_DEFAULTS, **data}
    spec = validate_document(data, PolicySpec, "candidate", PolicyError, policy_label)
    return compile_policy(spec, "candidate")
