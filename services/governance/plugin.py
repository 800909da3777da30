"""The governance service's plug-in: its settings (config section ``governance``), metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmops.events.outbox import AuditOutboxSettings
from llmops.plugin import ServicePlugin
from llmops.settings import Switch, by_mode, switched_on

_REPO_WASM_BUNDLE = (
    Path(__file__).resolve().parents[2] / "deploy" / "opa" / "wasm" / "bundle.tar.gz"
)


class GovernanceSettings(AuditOutboxSettings):
    """The governance service: where the registry lives, which aliases serve traffic, and
    which policy engine decides."""

    store: Literal["auto", "sqlite", "postgres"] = Field(
        "auto",
        description="Registry store. sqlite = state_dir/governance/registry.sqlite3 (or the "
        "file `dsn` names); postgres = the PostgreSQL database `dsn` names; auto = sqlite in "
        "embedded mode, postgres in production mode.",
    )
    dsn: str = Field(
        "",
        description="SQLAlchemy URL of the registry database, e.g. "
        "postgresql+psycopg://llmops@db:5432/llmops (required for postgres; for sqlite, "
        "empty = the file in the state directory).",
    )
    pool_size: int = Field(
        8, ge=1, le=200, description="Pooled PostgreSQL connections (also the worker threads)."
    )
    pool_max_overflow: int = Field(
        4, ge=0, le=200, description="Extra PostgreSQL connections opened under bursts."
    )
    pool_timeout_s: float = Field(
        10.0, gt=0, description="Wait this long for a pooled connection before UNAVAILABLE."
    )
    serving_aliases: list[str] = Field(
        default_factory=lambda: ["champion", "production"],
        description="Aliases that serve traffic for the built-in rules: moving one needs an "
        "APPROVED version approved by someone other than its registrant and, for models, a "
        "complete card. The Rego deploy gate (used whenever the policy engine runs) reads "
        "its own list from the bundle's data.llmops.governance.serving_aliases.",
    )
    policy_engine: Literal["auto", "wasm", "opa"] = Field(
        "auto",
        description="Policy engine of Evaluate and the registry's deploy gates. wasm = the "
        "compiled bundle `policy_bundle` evaluated in-process (no server); opa = the OPA "
        "server at backends.opa.url (it must answer when the service starts); auto = wasm in "
        "embedded mode, opa in production mode.",
    )
    policy_bundle: Path = Field(
        default_factory=lambda: _REPO_WASM_BUNDLE,
        description="The Wasm policy bundle (`opa build -t wasm`, scripts/build_opa_wasm.sh) "
        "the wasm engine loads; default: this repository's deploy/opa/wasm/bundle.tar.gz.",
    )
    policy_reload_interval_s: float = Field(
        5.0,
        ge=0,
        description="Reload the policies this often, 0 = never (ReloadPolicies still works): "
        "wasm polls the bundle file and reloads when it changed; opa re-reads the server's "
        "bundle revision and modules and swaps when they changed.",
    )
    demo_data: Switch = Field(
        "auto",
        description="Register the demo storefront's datasets, models and prompts with their "
        "lineage into an empty registry at start (auto = in embedded mode only).",
    )

    audit_writer: Switch = Field(
        "on",
        description="Run the audit writer, the single writer of the audit hash chains: it "
        "reads the raw audit topic, chains the records and appends them to "
        "llmops.audit.chained.v1 (which the sink loads into ClickHouse). Exactly one "
        "governance replica may run it; a second one stops with ABORTED on its first append.",
    )
    audit_batch: int = Field(
        5_000, ge=1, le=100_000, description="Raw audit records the writer chains per append."
    )
    audit_poll_timeout_s: float = Field(
        0.2, gt=0, le=5, description="How long one poll of the raw audit topic waits."
    )
    audit_verify_in_store: bool = Field(
        True,
        description="VerifyAudit recomputes the hashes and links inside ClickHouse (SHA256 "
        "and window functions over the stored bytes, ~1 M records/s) and reads back only a "
        "range that shows a break, to explain it. false: read every record and recompute "
        "here (~400k records/s), trusting nothing of the ClickHouse server but the bytes it "
        "returns. Either way a modified, deleted, inserted or re-ordered row is detected; the "
        "difference is whether a compromised ClickHouse server *process* could also lie "
        "about the check.",
    )
    audit_linger_s: float = Field(
        0.25,
        ge=0,
        le=10,
        description="After an append of less than a full batch, wait this long before the "
        "next poll, so records are chained in batches (each append costs fsyncs and a "
        "registry transaction, on the cores that serve RPCs) instead of one by one: how long "
        "a record may wait to be chained, not to be durable (the raw record is).",
    )

    drift_interval_s: float = Field(
        3600.0,
        ge=0,
        description="Run the drift job this often (PSI and KS per route, model and metric of "
        "the prediction log, written to ClickHouse drift_reports); 0 = never.",
    )
    drift_reference_window_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="Length of the reference window, which ends where the latest window "
        "starts (default 7 days).",
    )
    drift_latest_window_s: float = Field(
        3600.0, gt=0, description="Length of the latest window, ending at the run's time."
    )
    drift_psi_threshold: float = Field(
        0.25,
        ge=0,
        description="A PSI at or above this is drift (0.1-0.25 is usually read as a moderate "
        "shift, above 0.25 as major); 0 = PSI never flags.",
    )
    drift_ks_threshold: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A two-sample KS statistic at or above this is drift; 0 = KS never flags.",
    )
    drift_bins: int = Field(
        10,
        ge=2,
        le=100,
        description="PSI bins: edges at the reference window's quantiles 1/b .. (b-1)/b "
        "(duplicate edges merged; ordinal metrics use one bin per category).",
    )
    drift_min_samples: int = Field(
        100,
        ge=1,
        description="Skip a route/model whose reference or latest window has fewer rows.",
    )

    def store_backend(self, mode: str) -> Literal["sqlite", "postgres"]:
        return by_mode(self.store, mode, "sqlite", "postgres")

    def policy_backend(self, mode: str) -> Literal["wasm", "opa"]:
        return by_mode(self.policy_engine, mode, "wasm", "opa")

    def seeds_demo(self, mode: str) -> bool:
        return switched_on(self.demo_data, auto=mode == "embedded")


PLUGIN = ServicePlugin(
    name="governance",
    ports=(50057, 9157),
    summary="registry, policy, audit",
    settings=GovernanceSettings,
    settings_key="governance",
    backends=frozenset({"clickhouse", "events", "opa", "state_dir"}),
)
