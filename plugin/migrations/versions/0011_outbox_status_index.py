"""outbox indexed by (status, id), for the `outbox` and `deadletters` listings

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 13:00:00.000000

`outbox` lists the oldest pending, the newest sent and the oldest dead writes by id, `deadletters`
the dead ones. With only ix_outbox_due (status, next_attempt_at) SQLite read and sorted every sent
row to show the newest twenty: 0.15 s at 100,000 outbox rows, 17 s at 10 million
(bench/growth.py). PostgreSQL's plan depended on its statistics: at 100,000 rows it walked the
primary key from the oldest row to reach the pending ones at the end. With this index each
listing reads the rows it shows. Building it reads the table once, about 1 s per million rows on
a 2-core machine (PostgreSQL blocks writes to the outbox meanwhile).
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_status", "outbox", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_status", table_name="outbox")
