"""The experiment service's plug-in: its settings (config section ``experiments``), metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmops.events.outbox import AuditOutboxSettings
from llmops.plugin import ServicePlugin
from llmops.settings import Switch, by_mode, switched_on


class ExperimentSettings(AuditOutboxSettings):
    """The experiment service: where experiments live, holdout, exposure dedup."""

    store: Literal["auto", "file", "redis"] = Field(
        "auto",
        description="file = state_dir/experiments.json; redis = backends.redis; auto = file "
        "in embedded mode, redis in production mode.",
    )
    namespace: str = Field("llmops:exp", min_length=1, description="Redis key prefix.")
    holdout_bps: int = Field(
        0, ge=0, le=10_000, description="Global holdout: this share of units sees no experiment."
    )
    exposure_dedup_window_s: float = Field(
        1800.0, ge=0, description="An assignment repeated within this window logs no exposure."
    )
    reload_interval_s: float = Field(
        2.0, ge=0, description="Poll the store for other replicas' changes; 0 = never."
    )
    bandit_check_interval_s: float = Field(
        60.0,
        ge=0,
        description="Stop experiments past end_time and re-weight due bandits this often; "
        "0 = never.",
    )
    demo_data: Switch = Field(
        "auto",
        description="Create the demo experiments in an empty store at start "
        "(auto = in embedded mode only).",
    )

    def store_backend(self, mode: str) -> Literal["file", "redis"]:
        return by_mode(self.store, mode, "file", "redis")

    def seeds_demo(self, mode: str) -> bool:
        return switched_on(self.demo_data, auto=mode == "embedded")


PLUGIN = ServicePlugin(
    name="experiment",
    ports=(50055, 9155),
    summary="experiment allocation",
    settings=ExperimentSettings,
    settings_key="experiments",
    backends=frozenset({"clickhouse", "events", "redis", "state_dir"}),
)
