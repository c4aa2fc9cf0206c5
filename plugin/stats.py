"""Counts that describe the pipeline, for /metrics, /readyz and `outbox`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.storage import inbox, outbox


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of inbox and outbox. The totals of done and sent rows grow with history, so
    they are counted only when asked for (the `outbox` command), never on a /metrics scrape."""

    inbox_pending: int
    inbox_parked: int
    inbox_lag_seconds: float
    outbox_pending: int
    outbox_dead: int
    inbox_done: int | None = None
    outbox_sent: int | None = None


def pipeline_stats(engine: Engine, *, totals: bool = False) -> PipelineStats:
    """Read the counts in one short read transaction; each is a range of a status index, so the
    cost follows what is pending, parked or dead, not how much was ever processed."""
    with engine.connect() as conn:

        def count(table: sa.Table, status: str) -> int:
            stmt = sa.select(sa.func.count()).select_from(table).where(table.c.status == status)
            return int(conn.execute(stmt).scalar() or 0)

        oldest = conn.execute(
            sa.select(sa.func.min(inbox.c.received_at)).where(inbox.c.status == "pending")
        ).scalar()
        stats = PipelineStats(
            inbox_pending=count(inbox, "pending"),
            inbox_parked=count(inbox, "parked"),
            inbox_lag_seconds=max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0.0,
            outbox_pending=count(outbox, "pending"),
            outbox_dead=count(outbox, "dead"),
            inbox_done=count(inbox, "done") if totals else None,
            outbox_sent=count(outbox, "sent") if totals else None,
        )
    return stats
