"""outbox.target names the CRM a write goes to ("salesforce", "dataverse"), not just "crm"

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 12:30:00.000000

Until now OnRecord wrote to one CRM, Salesforce (or its dry run), and every CRM write's target was
"crm". With connectors as plug-ins one OnRecord can write to several CRMs, so each row names its
own. Rows written before are Salesforce's. (The dispatcher still reads "crm" as the primary CRM's,
so a row an older process writes during a rolling upgrade is not stranded.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE outbox SET target = 'salesforce' WHERE target = 'crm'"))


def downgrade() -> None:
    op.execute(sa.text("UPDATE outbox SET target = 'crm' WHERE target NOT IN ('crm', 'notification')"))
