"""The feature service's plug-in: its settings (config section ``features``) and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmops.plugin import ServicePlugin
from llmops.settings import Settings, Switch, by_mode, switched_on

_REPO_FEATURES = Path(__file__).resolve().parents[2] / "deploy" / "features"


class FeatureSettings(Settings):
    """The feature service: its registry files and online store."""

    registry: list[Path] = Field(
        default_factory=lambda: [_REPO_FEATURES],
        description="Registry YAML files or directories of them (deploy/features/README.md).",
    )
    online_store: Literal["auto", "embedded", "redis"] = Field(
        "auto",
        description="embedded = in-process, persisted under state_dir/features; redis = "
        "backends.redis; auto = embedded in embedded mode, redis in production mode.",
    )
    namespace: str = Field(
        "llmops:feat", min_length=1, description="Prefix of every online-store key."
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="Poll the registry files for changes this often; 0 = never."
    )
    demo_data: Switch = Field(
        "auto",
        description="Seed the demo storefront's features into an empty store at start "
        "(auto = in embedded mode only).",
    )

    def online_backend(self, mode: str) -> Literal["embedded", "redis"]:
        return by_mode(self.online_store, mode, "embedded", "redis")

    def seeds_demo(self, mode: str) -> bool:
        return switched_on(self.demo_data, auto=mode == "embedded")


PLUGIN = ServicePlugin(
    name="feature",
    ports=(50051, 9151),
    summary="online and offline features",
    settings=FeatureSettings,
    settings_key="features",
    backends=frozenset({"clickhouse", "events", "redis", "state_dir"}),
)
