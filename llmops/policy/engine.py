"""The policy engine seam: one Protocol, two engines that answer the same Rego bundle.

- :class:`~llmops.policy.wasm.WasmPolicyEngine` (embedded default): the bundle
  compiled to WebAssembly by ``opa build -t wasm`` (committed as
  ``deploy/opa/wasm/bundle.tar.gz``, rebuilt by ``scripts/build_opa_wasm.sh``), evaluated
  in-process with wasmtime. Nothing compiles Rego at run time; no Go, no server.
- :class:`~services.governance.policy_opa.OpaServerEngine` (production): an OPA server
  (``deploy/local/opa.sh`` locally) through opa-python-client's pooled async client; the
  bundle revision of every decision comes from OPA's ``?provenance=true``.

A decision path is the Rego document path without ``data``, e.g.
``llmops/registry/alias/decision``. The paths a bundle answers are its rules annotated
``# METADATA`` / ``# entrypoint: true`` (the Wasm build compiles exactly those, and the OPA
engine reads the same annotations from the server's module list), so both engines refuse
the same unknown paths.

An engine instance is one loaded bundle: a reload builds a new instance
(:func:`services.governance.policy_decisions.PolicyDecisions` swaps them through
:class:`llmops.yamlfiles.HotReload`), which is why loading is synchronous and blocking
(it runs off the event loop) while evaluating is async.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from llmops.errors import InvalidArgument, LLMOpsError, NotFound

JsonValue: TypeAlias = Any
"""A JSON document as Python values (dict with str keys, list, str, int, float, bool, None)."""


@dataclass(frozen=True, slots=True)
class PolicyModule:
    """One Rego module of a bundle (GetPolicyBundle's PolicyModule)."""

    path: str
    """Path in the bundle, e.g. ``llmops/registry/alias.rego``."""
    package_name: str
    """Rego package, e.g. ``llmops.registry.alias``."""
    sha256: str
    """SHA-256 of the source, lowercase hex."""
    source: str


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """The bundle an engine answers with (GetPolicyBundle)."""

    revision: str
    """The bundle's ``.manifest`` revision: what OPA reports as provenance."""
    source: str
    """Where it was loaded from, e.g. ``file:///.../bundle.tar.gz`` or ``http://opa:8181``."""
    load_time: float
    """When this engine loaded it, Unix seconds (UTC)."""
    modules: tuple[PolicyModule, ...]
    decision_paths: tuple[str, ...]
    """Sorted decision paths (entrypoints) the bundle answers."""
    digest: str
    """SHA-256 (hex) of what was loaded: the Wasm bundle file, or the OPA server's revision
    and module digests. A reload swaps engines when ``revision`` or ``digest`` changed."""

    @property
    def identity(self) -> str:
        """``<revision>@<digest prefix>``: what reloads compare and audit records show."""
        return f"{self.revision}@{self.digest[:12]}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """An engine's raw answer."""

    result: JsonValue
    """The document at the decision path; ``None`` when the policy leaves it undefined."""
    revision: str
    """Revision of the bundle that decided."""


class PolicyEngine(Protocol):
    """One loaded policy bundle that evaluates decision paths."""

    @property
    def bundle(self) -> PolicyBundle:
        """What this engine answers with (revision, modules, decision paths)."""
        ...

    async def evaluate(self, path: str, input: Mapping[str, JsonValue]) -> Evaluation:
        """The document at ``path`` for ``input``. Raises :class:`UnknownDecisionPath` for a
        path the bundle does not declare; the input is trusted to be JSON (the domain checks)."""
        ...

    async def health(self) -> bool:
        """Whether the engine can answer now (the OPA server is up; Wasm always can)."""
        ...

    async def close(self) -> None:
        """Release what the engine holds (HTTP sessions, the Wasm store)."""
        ...


class PolicyBundleError(InvalidArgument):
    """The bundle cannot be loaded: missing, corrupt, not compiled for Wasm, or needing a
    builtin the embedded engine does not implement. On a reload the old bundle stays."""

    def __init__(self, problem: str) -> None:
        super().__init__("bundle", problem)


class UnknownDecisionPath(NotFound):
    """``path`` is not an entrypoint of the bundle in force."""

    def __init__(self, path: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"path: {path!r} is not a decision path of the policy bundle; known: "
            + ", ".join(known)
        )
        self.path = path


class PolicyEvaluationError(LLMOpsError):
    """The engine could not evaluate (a Wasm abort, a builtin the embedded engine lacks, an
    OPA evaluation error such as conflicting rule outputs): a policy or engine defect."""

    code = "FAILED_PRECONDITION"
