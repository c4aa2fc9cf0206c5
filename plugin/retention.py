"""Retention (`storage.retention_days`): processed payloads pruned, the evidence kept.

An inbox row that is `done` and was received more than `retention_days` ago has its `data`
replaced by PRUNED. Its digest, sender, receipt time, source, delivery id, kind and ordering key
stay, as does every other table (provenance statements, facts, rule state): what was received,
from whom and when can still be shown, only the body is gone. `pending` and `parked` rows are never
touched: they are (re)processed from their data.

Each statement prunes at most BATCH rows (one short write transaction) and a run makes at most
MAX_BATCHES of them; the next run continues. The job's state keeps a cursor (a receipt time) below
which everything done is pruned, so a run reads only the rows after it (index ix_inbox_received);
the cursor never passes the oldest pending or parked row, which may still become done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import json_codec
from plugin.config import Config
from plugin.jobs import Job, JobRun
from plugin.storage import begin_write, inbox

JOB_NAME = "storage.retention"
INTERVAL_SECONDS = 3600.0
BATCH = 5000
MAX_BATCHES = 20
PRUNED: dict[str, Any] = {"pruned": True}
# As sa.JSON stores it, on SQLite and on PostgreSQL: compact since storage writes JSON through
# plugin.json_codec, with spaces in rows pruned before (the standard library's default).
_PRUNED_TEXTS = (json_codec.dumps(PRUNED), json.dumps(PRUNED))


class Retention:
    """The job's run(state, now)."""

    def __init__(
        self,
        days: int,
        engine: Engine | Callable[[], Engine],
        *,
        batch: int = BATCH,
        max_batches: int = MAX_BATCHES,
    ) -> None:
        self.days = days
        self._engine = engine
        self.batch = batch
        self.max_batches = max_batches

    @property
    def engine(self) -> Engine:
        if not isinstance(self._engine, Engine):
            self._engine = self._engine()
        return self._engine

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        cutoff = now - timedelta(days=self.days)
        start = _parse(state.get("cursor"))
        waiting = self._oldest_waiting()
        if waiting is not None and (start is None or waiting < start):
            start = waiting
        reached: datetime | None = start
        finished = False
        for _ in range(self.max_batches):
            received = self._prune_batch(start=reached, cutoff=cutoff)
            if received:
                reached = max(received)
            if len(received) < self.batch:
                finished = True
                break
        cursor = cutoff if finished else reached
        if waiting is not None and cursor is not None and waiting < cursor:
            cursor = waiting  # it may become done later: look at it again
        return JobRun(state={"cursor": cursor.isoformat()} if cursor is not None else {})

    def _oldest_waiting(self) -> datetime | None:
        """The receipt time of the oldest pending or parked row (one index lookup per status)."""
        with self.engine.connect() as conn:
            found = [
                conn.execute(
                    sa.select(sa.func.min(inbox.c.received_at)).where(inbox.c.status == status)
                ).scalar()
                for status in ("pending", "parked")
            ]
        times = [t for t in found if t is not None]
        return min(times) if times else None

    def _prune_batch(self, *, start: datetime | None, cutoff: datetime) -> list[datetime]:
        """Prune up to `batch` done rows received in [start, cutoff); return their receipt times."""
        conditions = [
            inbox.c.status == "done",
            inbox.c.received_at < cutoff,
            sa.cast(inbox.c.data, sa.Text).not_in(_PRUNED_TEXTS),
        ]
        if start is not None:
            conditions.append(inbox.c.received_at >= start)
        chosen = (
            sa.select(inbox.c.id)
            .where(*conditions)
            .order_by(inbox.c.status, inbox.c.received_at)
            .limit(self.batch)
            .scalar_subquery()
        )
        with begin_write(self.engine) as conn:
            rows = conn.execute(
                inbox.update()
                .where(inbox.c.id.in_(chosen), inbox.c.status == "done")
                .values(data=PRUNED)
                .returning(inbox.c.received_at)
            )
            return list(rows.scalars())


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def retention_job(config: Config, engine: Engine | None = None) -> Job:
    """The scheduled job; it finds its engine on first use."""
    from plugin.storage import get_engine

    retention = Retention(config.storage.retention_days, engine or (lambda: get_engine(config.storage.url)))
    return Job(name=JOB_NAME, interval_seconds=INTERVAL_SECONDS, run=retention.run)
