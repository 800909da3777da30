"""The registry: artifacts, immutable versions, aliases and their history, state changes,
renames/deletions, lineage edges.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _history(name: str, *columns: sa.Column[object]) -> None:
    op.create_table(
        name,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", ID, sa.ForeignKey("registry_artifacts.id"), nullable=False),
        *columns,
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )


def upgrade() -> None:
    op.create_table(
        "registry_artifacts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("kind", "name", name="uq_registry_artifacts_kind_name"),
    )
    op.create_table(
        "registry_versions",
        sa.Column("artifact_id", ID, sa.ForeignKey("registry_artifacts.id"), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_digest", sa.String(80), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("artifact_id", "content_digest", name="uq_registry_versions_digest"),
    )
    op.create_table(
        "registry_aliases",
        sa.Column("artifact_id", ID, sa.ForeignKey("registry_artifacts.id"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    _history(
        "registry_alias_events",
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("previous_version", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_registry_alias_events_lookup",
        "registry_alias_events",
        ["artifact_id", "alias", "time_us"],
    )
    _history(
        "registry_state_changes",
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("previous_state", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_index(
        "ix_registry_state_changes_version", "registry_state_changes", ["artifact_id", "version"]
    )
    _history(
        "registry_name_changes",
        sa.Column("old_name", sa.String(128), nullable=False),
        sa.Column("new_name", sa.String(128), nullable=False),
    )
    op.create_index("ix_registry_name_changes_artifact", "registry_name_changes", ["artifact_id"])
    op.create_table(
        "registry_lineage_edges",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("upstream", sa.String(600), nullable=False),
        sa.Column("downstream", sa.String(600), nullable=False),
        sa.Column("relation", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("upstream", "downstream", "relation", name="uq_registry_lineage_edge"),
    )
    op.create_index("ix_registry_lineage_downstream", "registry_lineage_edges", ["downstream"])


def downgrade() -> None:
    for table in (
        "registry_lineage_edges",
        "registry_name_changes",
        "registry_state_changes",
        "registry_alias_events",
        "registry_aliases",
        "registry_versions",
        "registry_artifacts",
    ):
        op.drop_table(table)
