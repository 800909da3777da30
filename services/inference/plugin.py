"""The inference service's plug-in: its settings (config section ``inference``) and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmops.plugin import ServicePlugin
from llmops.settings import Settings, Switch, by_mode, switched_on

_REPO_ROUTES = Path(__file__).resolve().parents[2] / "deploy" / "inference"
_REPO_TASKS = Path(__file__).resolve().parents[2] / "deploy" / "tasks"


class InferenceSettings(Settings):
    """The inference service: route files, defaults, what is loaded at start."""

    routes: list[Path] = Field(
        default_factory=lambda: [_REPO_ROUTES],
        description="Route YAML files or directories of them (deploy/inference/README.md).",
    )
    tasks: list[Path] = Field(
        default_factory=lambda: [_REPO_TASKS],
        description="Task YAML files or directories of them (deploy/tasks/README.md).",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="Poll the route and task files for changes; 0 = never."
    )
    default_max_tokens: int = Field(
        256,
        ge=1,
        le=32_768,
        description="max_tokens when neither the request nor the route sets it.",
    )
    alias_cache_s: float = Field(
        30.0,
        ge=0,
        description="How long a model alias resolved through governance (e.g. champion -> 7) "
        "is reused before it is resolved again.",
    )
    preload: Switch = Field(
        "auto",
        description="Load in-process models (llama_cpp) at start instead of on first use "
        "(auto: on).",
    )
    prompt_cache_s: float = Field(
        30.0,
        ge=0,
        description="How long a prompt template fetched by alias from the registry is reused "
        "(pinned versions are immutable: kept).",
    )
    allow_debug: Switch = Field(
        "auto",
        description="Honour RunRequest.debug (the rendered prompt and intermediate values in "
        "the response; auto: embedded mode only).",
    )
    state: Literal["auto", "memory", "redis"] = Field(
        "auto",
        description="Where the response cache and the tenant budgets live: memory (one "
        "process) or redis (shared by replicas; backends.redis); auto: by mode.",
    )
    cache_max_entries: int = Field(
        10_000, ge=1, description="Entries of the in-process response cache (LRU)."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures that open an engine's circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="How long an open breaker refuses calls before a trial call."
    )
    log_payloads: bool = Field(
        False,
        description="Put prompts and outputs into prediction events (PredictionEvent.inputs / "
        "output); off by default: they may hold personal data.",
    )

    def preloads(self) -> bool:
        return switched_on(self.preload, auto=True)

    def state_backend(self, mode: str) -> Literal["memory", "redis"]:
        return by_mode(self.state, mode, "memory", "redis")

    def debug_allowed(self, mode: str) -> bool:
        return switched_on(self.allow_debug, auto=mode == "embedded")


PLUGIN = ServicePlugin(
    name="inference",
    ports=(50053, 9153),
    summary="LLM generation, task runs",
    settings=InferenceSettings,
    settings_key="inference",
    backends=frozenset({"events", "state_dir", "redis"}),
)
