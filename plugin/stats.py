"""Counts that describe the pipeline, for /metrics, /readyz and `outbox`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.storage import inbox, outbox


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of inbox and outbox."""

    inbox_pending: int
    inbox_parked: int
    inbox_done: int
    inbox_lag_seconds: float
    outbox_pending: int
    outbox_sent: int
    outbox_dead: int


def pipeline_stats(engine: Engine) -> PipelineStats:
    """Read the counts in one short read transaction."""
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(sa.select(inbox.c.status, sa.func.count()).group_by(inbox.c.status)).tuples().all()
        )
        oldest = conn.execute(
            sa.select(sa.func.min(inbox.c.received_at)).where(inbox.c.status == "pending")
        ).scalar()
        out = dict(
            conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).tuples().all()
        )
    lag = 0.0
    if oldest is not None:
        lag = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
    return PipelineStats(
        inbox_pending=by_status.get("pending", 0),
        inbox_parked=by_status.get("parked", 0),
        inbox_done=by_status.get("done", 0),
        inbox_lag_seconds=lag,
        outbox_pending=out.get("pending", 0),
        outbox_sent=out.get("sent", 0),
        outbox_dead=out.get("dead", 0),
    )
