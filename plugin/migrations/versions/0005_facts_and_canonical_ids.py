"""facts (what people did that counts), and record ids made canonical in what is stored

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00.000000

Before this revision a Salesforce record could be stored under its 15-character id by one source
and its 18-character id by another, so a form never met its record's status change. Pending
inbox events, timers and rule state keyed by a 15-character id are rewritten to the 18-character
form (`plugin.identity.canonical_record_id`). Rule state already present under both forms keeps
the 18-character entry: it is the one the CRM's own changes built. Signed provenance statements
and processed events are evidence and stay as they were signed and received.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from plugin.identity import canonical_key, canonical_record_id

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "facts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("fact_key", sa.String(length=255), nullable=False),
        sa.Column("person", sa.String(length=255), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("retracted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "fact_key", name="uq_facts_kind_key"),
    )
    op.create_index("ix_facts_kind_time", "facts", ["kind", "occurred_at"])
    _canonical_ids(op.get_bind())


def _canonical_ids(conn: sa.Connection) -> None:
    meta = sa.MetaData()
    inbox = sa.Table("inbox", meta, autoload_with=conn)
    timers = sa.Table("timers", meta, autoload_with=conn)
    rule_state = sa.Table("rule_state", meta, autoload_with=conn)
    rows = conn.execute(
        sa.select(inbox.c.id, inbox.c.record_id, inbox.c.ordering_key).where(inbox.c.status == "pending")
    ).all()
    for row in rows:
        record_id = canonical_record_id(row.record_id) if row.record_id else row.record_id
        key = canonical_key(row.ordering_key)
        if record_id != row.record_id or key != row.ordering_key:
            conn.execute(
                inbox.update().where(inbox.c.id == row.id).values(record_id=record_id, ordering_key=key)
            )
    for row in conn.execute(sa.select(timers.c.id, timers.c.ordering_key)).all():
        key = canonical_key(row.ordering_key)
        if key != row.ordering_key:
            conn.execute(timers.update().where(timers.c.id == row.id).values(ordering_key=key))
    present = set(conn.execute(sa.select(rule_state.c.key)).scalars())
    for key in sorted(present):
        new = canonical_key(key)
        if new == key:
            continue
        if new in present:
            conn.execute(rule_state.delete().where(rule_state.c.key == key))
        else:
            conn.execute(rule_state.update().where(rule_state.c.key == key).values(key=new))
            present.add(new)


def downgrade() -> None:
    op.drop_index("ix_facts_kind_time", table_name="facts")
    op.drop_table("facts")
