"""The registry's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

The migrations under ``migrations/versions`` create exactly this schema; a test compares
the migrated database with it (Alembic's autogenerate diff must be empty), so a change
here needs a new migration. Ids are 64-bit on PostgreSQL and SQLite's rowid on SQLite.
Times are UTC microseconds since the epoch (BIGINT: no time-zone handling differs between
the two databases). Nothing is ever deleted: history tables only grow.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

ID = BigInteger().with_variant(Integer(), "sqlite")
"""Auto-increment primary keys: BIGSERIAL-like on PostgreSQL, the rowid on SQLite."""

VERSION_TABLE = "registry_alembic_version"
"""Alembic's bookkeeping table (named apart so that other schemas in the database can use
Alembic too)."""

metadata = MetaData()

artifacts = Table(
    "registry_artifacts",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("owner", String(256), nullable=False),
    Column("tags", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("kind", "name", name="uq_registry_artifacts_kind_name"),
)

versions = Table(
    "registry_versions",
    metadata,
    Column("artifact_id", ID, ForeignKey("registry_artifacts.id"), primary_key=True),
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("uri", Text, nullable=False),
    Column("content_digest", String(80), nullable=False),
    Column("state", String(16), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    UniqueConstraint("artifact_id", "content_digest", name="uq_registry_versions_digest"),
)

aliases = Table(
    "registry_aliases",
    metadata,
    Column("artifact_id", ID, ForeignKey("registry_artifacts.id"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
)

alias_events = Table(
    "registry_alias_events",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("artifact_id", ID, ForeignKey("registry_artifacts.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("previous_version", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_registry_alias_events_lookup", "artifact_id", "alias", "time_us"),
)

state_changes = Table(
    "registry_state_changes",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("artifact_id", ID, ForeignKey("registry_artifacts.id"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("previous_state", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_registry_state_changes_version", "artifact_id", "version"),
)

name_changes = Table(
    "registry_name_changes",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("artifact_id", ID, ForeignKey("registry_artifacts.id"), nullable=False),
    Column("old_name", String(128), nullable=False),
    Column("new_name", String(128), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_registry_name_changes_artifact", "artifact_id"),
)

edges = Table(
    "registry_lineage_edges",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("upstream", String(600), nullable=False),
    Column("downstream", String(600), nullable=False),
    Column("relation", String(16), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    UniqueConstraint("upstream", "downstream", "relation", name="uq_registry_lineage_edge"),
    Index("ix_registry_lineage_downstream", "downstream"),
)

audit_chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("chain", String(256), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)
"""The anchored head of each audit chain: moved by the audit writer (compare-and-set on
``sequence``) after the chained records were appended, before the raw offsets are
committed. VerifyAudit compares the stored records against it."""

audit_writer_offsets = Table(
    "audit_writer_offsets",
    metadata,
    Column("topic", String(256), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)
"""The raw audit records the heads account for (next offset to read per partition),
written in the heads' transaction: a crash between storing the heads and committing the
consumer offsets must not chain those records twice."""

audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("envelope", LargeBinary, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_audit_outbox_created", "created_at_us"),
)
"""The audit record of each registry change, written in the change's own transaction and
deleted once the event log holds it: a process that dies between its commit and the append
leaves the record here, and a relay publishes it (services.governance.registry)."""
