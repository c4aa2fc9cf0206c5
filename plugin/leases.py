"""Named leases in the `jobs` table: one holder at a time across processes, taken over on expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin.storage import begin_write, is_postgres, jobs


def hold_lease(engine: Engine, name: str, owner: str, now: datetime, duration: timedelta) -> bool:
    """Take or renew the lease `name` for `owner`; False if someone else holds a live one."""
    insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    values = insert(jobs).values(
        name=name, next_run_at=now, lease_owner=owner, lease_until=now + duration, state={}
    )
    stmt = values.on_conflict_do_update(
        index_elements=["name"],
        set_={"lease_owner": owner, "lease_until": now + duration},
        where=sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now, jobs.c.lease_owner == owner),
    ).returning(jobs.c.name)
    with begin_write(engine) as conn:
        return conn.execute(stmt).first() is not None
