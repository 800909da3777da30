"""Routes and engines as configured in reviewed YAML (``deploy/inference/*.yaml``).

A file declares **engines** (a backend and how to reach or load it: a GGUF run in-process,
an OpenAI-compatible URL, a Triton endpoint) and **routes** (a name callers use; targets in
fallback order, each a registry model on an engine, with its timeout, prices and
concurrency; sampling defaults; guardrail policies; a cache TTL). Loaded with the runtime's
versioned-YAML loader and hot-reloaded (:class:`llmops.yamlfiles.HotReload`): a file that
does not validate keeps the routes in force and names the file and field.

Secrets never live in these files: an engine names the environment variable that holds its
API key (``api_key_env``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.errors import NotFound
from llmops.yamlfiles import YamlFileError, load_yaml_files
from services.inference.engine import Sampling

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
Backend = Literal["llama_cpp", "openai", "triton", "trtllm", "onnx"]
REPO_ROOT = Path(__file__).resolve().parents[2]


class RouteError(YamlFileError):
    """A routes file does not validate (``field`` names the file and the field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingSpec(_Strict):
    """Sampling defaults; the request's fields win over these, these over the service's."""

    max_tokens: int | None = Field(None, ge=1, le=32_768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1000)
    stop: list[str] = Field(default_factory=list, max_length=8)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)

    def resolve(self, base: Sampling) -> Sampling:
        changes: dict[str, Any] = {
            name: getattr(self, name)
            for name in Sampling.__dataclass_fields__
            if getattr(self, name) is not None and name != "stop"
        }
        if self.stop:
            changes["stop"] = tuple(self.stop)
        return replace(base, **changes)


class EngineSpec(_Strict):
    """How to reach or load one backend. Fields apply per backend (checked below)."""

    backend: Backend
    # llama_cpp
    gguf: str = ""
    """``<package>/<file>`` inside an installed model package, or an absolute path."""
    context_tokens: int = Field(2048, ge=128, le=1_048_576)
    parallel: int = Field(2, ge=1, le=256)
    decode_threads: int = Field(1, ge=1, le=256)
    prefill_threads: int = Field(2, ge=1, le=256)
    max_output_tokens: int = Field(1024, ge=1, le=32_768)
    # openai / triton
    base_url: str = ""
    """openai: ``http(s)://host:port/v1``; triton: ``host:port`` (gRPC)."""
    api_key_env: str = ""
    """Name of the environment variable holding the API key (never the key itself)."""
    max_connections: int = Field(64, ge=1, le=10_000)
    # trtllm
    engine_dir: str = ""
    # onnx (tabular models: rankers)
    model_dir: str = ""
    """A directory with model.onnx and model.json; relative paths are from the repository."""
    intra_op_threads: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _per_backend(self) -> EngineSpec:
        if self.backend == "llama_cpp" and not self.gguf:
            raise ValueError("a llama_cpp engine needs gguf (<package>/<file> or a path)")
        if self.backend in ("openai", "triton") and not self.base_url:
            raise ValueError(f"a {self.backend} engine needs base_url")
        if self.backend == "openai" and not re.match(r"^https?://", self.base_url):
            raise ValueError("base_url must start with http:// or https://")
        if self.backend == "trtllm" and not self.engine_dir:
            raise ValueError("a trtllm engine needs engine_dir")
        if self.backend == "onnx" and not self.model_dir:
            raise ValueError("an onnx engine needs model_dir (model.onnx + model.json)")
        if self.api_key_env and not re.match(r"^[A-Z_][A-Z0-9_]*$", self.api_key_env):
            raise ValueError("api_key_env must name an environment variable (A-Z, 0-9, _)")
        return self


class PriceSpec(_Strict):
    """Per 1M tokens, in the accounting currency."""

    prompt: float = Field(0.0, ge=0)
    completion: float = Field(0.0, ge=0)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")


class TargetSpec(_Strict):
    model: str = Field(min_length=1, max_length=128)
    """The model's name in the governance registry."""
    version: int | None = Field(None, ge=1)
    alias: str = ""
    """Resolved through the registry (e.g. ``champion``) when no version is pinned."""
    engine: str
    served_model: str = ""
    """The model as the engine names it (defaults to ``model``)."""
    timeout_s: float = Field(30.0, gt=0, le=3600)
    price_per_million: PriceSpec = PriceSpec()
    max_concurrency: int = Field(4, ge=1, le=10_000)
    """Calls in flight on this target; more wait in its queue."""
    max_queue: int = Field(32, ge=0, le=100_000)
    """Calls waiting for this target; beyond it RESOURCE_EXHAUSTED (shedding)."""

    @model_validator(mode="after")
    def _version_or_alias(self) -> TargetSpec:
        if self.version is not None and self.alias:
            raise ValueError("pin a version or name an alias, not both")
        return self


class RouteSpec(_Strict):
    name: str
    description: str = ""
    targets: list[TargetSpec] = Field(min_length=1, max_length=8)
    sampling: SamplingSpec = SamplingSpec()
    input_policy: str = ""
    output_policy: str = ""
    cache_ttl_s: float = Field(0.0, ge=0, le=86_400 * 7)
    truncate_prompt: bool = False
    """Cut a prompt over the model's context window (from the start) instead of refusing."""

    @model_validator(mode="after")
    def _name(self) -> RouteSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"route name {self.name!r} is not lower-kebab-case")
        return self


class BudgetSpec(_Strict):
    """A tenant's daily (UTC) limits; 0 = none."""

    tokens_per_day: int = Field(0, ge=0)
    cost_per_day: float = Field(0.0, ge=0)
    """In the accounting currency (the targets' price currency)."""


class RoutesFile(_Strict):
    engines: dict[str, EngineSpec] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(default_factory=list)
    budgets: dict[str, BudgetSpec] = Field(default_factory=dict)
    """Tenant -> daily limits; ``"*"`` applies to tenants without their own."""


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes and engines in force, compiled from every routes file."""

    routes: dict[str, RouteSpec]
    engines: dict[str, EngineSpec]
    revision: str
    sources: tuple[str, ...] = ()
    budgets: dict[str, BudgetSpec] = field(default_factory=dict)

    def budget(self, tenant: str) -> BudgetSpec | None:
        return self.budgets.get(tenant) or self.budgets.get("*")

    def route(self, name: str, field: str = "route") -> RouteSpec:
        found = self.routes.get(name)
        if found is None:
            raise NotFound(f"{field}: no route {name[:80]!r}")
        return found

    def changed(self, other: RouteTable) -> list[str]:
        """Routes added, removed or changed from ``other`` to this table, sorted."""
        names = set(self.routes) | set(other.routes)
        return sorted(n for n in names if self.routes.get(n) != other.routes.get(n))


def load_routes(paths: Sequence[Path]) -> RouteTable:
    """Every routes file of ``paths``, validated and cross-checked (RouteError names the file
    and field of the first problem)."""
    loaded = load_yaml_files(paths, RoutesFile, RouteError)
    engines: dict[str, tuple[EngineSpec, str]] = {}
    routes: dict[str, tuple[RouteSpec, str]] = {}
    budgets: dict[str, BudgetSpec] = {}
    for file in loaded.files:
        for tenant, limits in file.spec.budgets.items():
            if tenant in budgets:
                raise RouteError(f"{file.label}: budgets.{tenant}", "already defined")
            budgets[tenant] = limits
    for file in loaded.files:
        for name, engine in file.spec.engines.items():
            if not _NAME.match(name):
                raise RouteError(f"{file.label}: engines.{name}", "not lower-kebab-case")
            if name in engines:
                raise RouteError(
                    f"{file.label}: engines.{name}", f"already defined in {engines[name][1]}"
                )
            engines[name] = (engine, file.label)
    for file in loaded.files:
        for route in file.spec.routes:
            where = f"{file.label}: routes[{route.name}]"
            if route.name in routes:
                raise RouteError(where, f"already defined in {routes[route.name][1]}")
            for i, target in enumerate(route.targets):
                if target.engine not in engines:
                    raise RouteError(
                        f"{where}.targets[{i}].engine",
                        f"no engine {target.engine!r} (declared: {sorted(engines) or 'none'})",
                    )
            routes[route.name] = (route, file.label)
    return RouteTable(
        routes={n: r for n, (r, _) in sorted(routes.items())},
        engines={n: e for n, (e, _) in sorted(engines.items())},
        revision=loaded.revision,
        sources=loaded.sources,
        budgets=budgets,
    )
