"""provenance: signed statements and the log's checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00.000000
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
        "provenance_statements",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object", sa.String(length=120), nullable=False),
        sa.Column("record_id", sa.String(length=120), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("leaf_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest", name="uq_provenance_digest"),
        sa.UniqueConstraint("log_index", name="uq_provenance_log_index"),
        sa.UniqueConstraint("kind", "object", "record_id", "sequence", name="uq_provenance_chain"),
    )
    op.create_index("ix_provenance_record", "provenance_statements", ["object", "record_id"])
    op.create_table(
        "provenance_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tree_size"),
    )


def downgrade() -> None:
    op.drop_table("provenance_checkpoints")
    op.drop_index("ix_provenance_record", table_name="provenance_statements")
    op.drop_table("provenance_statements")
