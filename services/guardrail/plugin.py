"""The guardrail service's plug-in: its settings (config section ``guardrails``) and metadata."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from llmops.plugin import ServicePlugin
from llmops.settings import Settings

_REPO_GUARDRAILS = Path(__file__).resolve().parents[2] / "deploy" / "guardrails"


class GuardrailSettings(Settings):
    """The guardrail service: policy files, the match-hash key, the worker pool."""

    policies: list[Path] = Field(
        default_factory=lambda: [_REPO_GUARDRAILS],
        description="Policy YAML files or directories of them (deploy/guardrails/README.md).",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="Poll the policy files for changes this often; 0 = never."
    )
    hmac_key: str = Field(
        "",
        description="Key of the match hashes in findings and events (hex or text); empty = a "
        "random key kept in state_dir/guardrail.key (set one per tenant fleet in production).",
    )
    workers: int = Field(2, ge=1, le=64, description="Threads checking long texts.")
    decision_cache_entries: int = Field(
        10_000, ge=0, le=1_000_000, description="Decisions kept for texts checked again under "
        "the same policy and context (retrieved catalogue passages, reviews, popular "
        "queries: checked once, not on every Run); keyed by a digest of the text, dropped "
        "when the policies change; texts over 4,096 characters and degraded decisions are "
        "not kept. 0: off.",
    )  # fmt: skip
    hard_timeout_s: float = Field(
        1.0, gt=0, le=60, description="Wall-clock bound of one check of a long text on the "
        "worker pool: past it the call answers at once with a degraded decision (the "
        "policy's fail mode applies) instead of waiting. The policy's own timeout is checked "
        "between detectors; this one also covers a detector that never returns.",
    )  # fmt: skip


PLUGIN = ServicePlugin(
    name="guardrail",
    ports=(50054, 9154),
    summary="input/output moderation",
    settings=GuardrailSettings,
    settings_key="guardrails",
    backends=frozenset({"events", "state_dir"}),
)
