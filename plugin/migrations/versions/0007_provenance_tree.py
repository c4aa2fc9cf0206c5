"""provenance_tree: the log's perfect-subtree hashes, so roots and proofs cost O(log n) reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 14:00:00.000000

Before this revision the sequencer and every provenance read loaded every leaf hash and rebuilt
the tree. The table keeps the hash of each perfect subtree of two or more leaves, keyed by
(level, index), written once when it completes (`plugin.provenance.log`). The upgrade fills it
from the leaves already logged, in one pass over them; the signed checkpoints stay as they are
(the sequencer checks the filled tree against the newest one before it signs again). Should a
leaf be missing, the tree is filled up to it only, and the sequencer refuses to sign over the gap.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from plugin.provenance import merkle

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 10_000


def upgrade() -> None:
    op.create_table(
        "provenance_tree",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
        sqlite_with_rowid=False,
    )
    _fill(op.get_bind())


def _fill(conn: sa.Connection) -> None:
    meta = sa.MetaData()
    statements = sa.Table("provenance_statements", meta, autoload_with=conn)
    tree = sa.Table("provenance_tree", meta, autoload_with=conn)
    last = conn.execute(sa.select(sa.func.max(statements.c.log_index))).scalar()
    frontier: list[tuple[merkle.NodeId, bytes]] = []
    size = 0
    end = -1 if last is None else int(last)
    while size <= end:  # a batch of leaves at a time, by log index
        batch = conn.execute(
            sa.select(statements.c.log_index, statements.c.leaf_hash)
            .where(statements.c.log_index >= size, statements.c.log_index < size + _BATCH)
            .order_by(statements.c.log_index)
        ).all()
        contiguous = [r for i, r in enumerate(batch) if int(r.log_index) == size + i]
        if len(contiguous) < len(batch) or not batch:
            # A leaf is missing (the log was changed): the tree stops before it, and the sequencer,
            # finding the tree shorter than the log, refuses to sign until the log is put right.
            end = -1
            batch = contiguous
        frontier, completed = merkle.append_leaves(
            frontier, size, [bytes.fromhex(r.leaf_hash) for r in batch]
        )
        size += len(batch)
        if completed:
            conn.execute(
                tree.insert(), [{"level": level, "idx": idx, "hash": h} for (level, idx), h in completed]
            )


def downgrade() -> None:
    op.drop_table("provenance_tree")
