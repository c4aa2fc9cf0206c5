"""inbox indexed by (status, received_at), for storage.retention

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 10:00:00.000000

The retention job (storage.retention_days) looks for done events received before a cutoff; with
ix_inbox_pending (status, ordering_key, occurred_at) that meant reading every done row.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_inbox_received", "inbox", ["status", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_received", table_name="inbox")
