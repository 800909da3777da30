"""The feedback service's plug-in: its settings (config section ``feedback``) and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmops.plugin import ServicePlugin
from llmops.settings import Settings, Switch, by_mode, switched_on

_REPO_SIGNALS = Path(__file__).resolve().parents[2] / "deploy" / "feedback"


class FeedbackSettings(Settings):
    """The feedback service: the signal registry, idempotency keys, durability, redaction."""

    signals: list[Path] = Field(
        default_factory=lambda: [_REPO_SIGNALS],
        description="Signal registry YAML files or directories of them (deploy/feedback).",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="Poll the registry files for changes this often; 0 = never."
    )
    keys: Literal["auto", "local", "redis"] = Field(
        "auto",
        description="Idempotency keys: local = memory + state_dir SQLite; redis = "
        "backends.redis; auto = local in embedded mode, redis in production mode.",
    )
    namespace: str = Field("llmops", min_length=1, description="Redis key prefix.")
    key_ttl_s: float = Field(
        7 * 86_400.0, gt=0, description="How long a key answers repeats with its first record."
    )
    local_max_keys: int = Field(
        1_000_000, ge=1000, description="Most keys the local store keeps (the newest)."
    )
    durable_timeout_s: float = Field(
        5.0, gt=0, description="How long Submit waits for the event log to hold its records."
    )
    text_policy: str = Field(
        "feedback-text",
        description="Guardrail policy that redacts typed text (label notes, corrections); "
        "empty = store typed text as sent (not recommended).",
    )
    guard_timeout_s: float = Field(
        1.0, gt=0, description="Deadline of the guardrail call for typed text."
    )

    labels: Literal["auto", "sqlite", "postgres"] = Field(
        "auto",
        description="Label queue items: sqlite = state_dir/feedback/labels.sqlite3; postgres = "
        "the database `labels_dsn` names; auto = sqlite in embedded mode, postgres in "
        "production mode.",
    )
    labels_dsn: str = Field(
        "",
        description="SQLAlchemy URL of the label store, e.g. "
        "postgresql+psycopg://llmops@db:5432/llmops (required for postgres).",
    )
    queue_fill_interval_s: float = Field(
        15.0, ge=0, description="Scan ClickHouse for new label queue items this often; 0 = never."
    )
    queue_settle_s: float = Field(
        10.0, ge=0, description="Scan up to this long before now (the sink loads within seconds)."
    )

    sft_accept_labels: list[str] = Field(
        default_factory=lambda: ["accurate"],
        description="Exports (SFT): labels that accept a response.",
    )
    sft_reject_labels: list[str] = Field(
        default_factory=lambda: ["hallucination", "off_topic", "unsafe", "wrong_language"],
        description="Exports (SFT): labels that reject a response whatever else it got.",
    )
    sft_min_rating: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Exports (SFT): the rating, as a share of its scale, that accepts.",
    )

    stats_rollup: bool = Field(
        True,
        description="GetFeedbackStats reads the hourly rollup (whole hours, refreshed every "
        "stats_refresh_interval_s) instead of joining the raw tables (exact to the second, "
        "but seconds on tens of millions of rows).",
    )
    stats_refresh_interval_s: float = Field(
        10.0, ge=0, description="Refresh the statistics rollup this often; 0 = never."
    )
    demo_data: Switch = Field(
        "auto",
        description="Publish a simulated day of shoppers' feedback on the demo tasks once per "
        "state directory (auto = in embedded mode only).",
    )

    def seeds_demo(self, mode: str) -> bool:
        return switched_on(self.demo_data, auto=mode == "embedded")

    def key_backend(self, mode: str) -> Literal["local", "redis"]:
        return by_mode(self.keys, mode, "local", "redis")

    def label_backend(self, mode: str) -> Literal["sqlite", "postgres"]:
        return by_mode(self.labels, mode, "sqlite", "postgres")


PLUGIN = ServicePlugin(
    name="feedback",
    ports=(50056, 9156),
    summary="explicit/implicit feedback",
    settings=FeedbackSettings,
    settings_key="feedback",
    backends=frozenset({"events", "clickhouse", "redis", "state_dir"}),
)
