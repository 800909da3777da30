"""The audit outbox: each registry change's audit record, written in the change's transaction
and deleted once the event log holds it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_outbox",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_audit_outbox_created", "audit_outbox", ["created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_audit_outbox_created", table_name="audit_outbox")
    op.drop_table("audit_outbox")
