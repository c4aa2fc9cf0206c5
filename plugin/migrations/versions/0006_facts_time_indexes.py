"""facts indexed by occurred_at and by updated_at, for leader aggregation

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 12:00:00.000000

Leader aggregation reads one period's facts of every kind by occurred_at (ix_facts_kind_time
needs the kind), and the aggregation job the facts updated since its watermark: both cost what
one period or one interval holds, however much history is stored.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_facts_time", "facts", ["occurred_at"])
    op.create_index("ix_facts_updated", "facts", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_facts_updated", table_name="facts")
    op.drop_index("ix_facts_time", table_name="facts")
