"""Schema migrations (Alembic), applied by `init` and at start-up."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Engine

from plugin.storage import is_postgres

_SCRIPTS = Path(__file__).parent / "migrations"
# Any constant works: it only has to be the same for every OnRecord process on one database.
_PG_LOCK_ID = 0x0E1EC0D


def alembic_config(connection: sa.Connection) -> AlembicConfig:
    """An Alembic configuration bound to an open connection (no alembic.ini)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe when several instances start at once."""
    with engine.connect() as conn:
        if is_postgres(engine):
            # Serialise concurrent start-ups; the lock is released when the session ends.
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_ID})
            conn.commit()
        try:
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
        finally:
            if is_postgres(engine):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_ID})
                conn.commit()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before `init`)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
