"""subscription_secret: a per-subscription secret (stored hashed) that lets its DELETE go without a token

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 10:00:00.000000

Power Automate has been seen to send a webhook trigger's DELETE without the connection's API key
(microsoft/PowerPlatformConnectors#3678). A subscription's Location now ends in a secret of its
own; the column keeps its sha256. Subscriptions made before this revision have none and can still
be removed only with a bearer token.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("secret_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("secret_hash")
