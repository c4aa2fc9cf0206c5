"""The dispatcher: outbox rows out to the CRM in as few calls as possible, never lost, never doubled.

One dispatcher is active at a time across all workers (a lease in `jobs`), so writes to one
record leave in the order they were decided. Each pass claims due rows together with every
other pending row of the same records, coalesces them per record (latest occurrence wins per
field), sends at most `batch_size` records of one object per call, and records each row's fate:
sent, retried later with exponential backoff and jitter, or dead with the CRM's own error.
Upserts by external id and updates by record id are idempotent, so a crash between the call
and the bookkeeping only ever re-sends the same values.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import metrics
from plugin.crm import CrmError, CrmPaused, CrmWriter, RecordResult, RecordWrite, WriteBatch
from plugin.leases import hold_lease
from plugin.storage import begin_write, outbox

log = logging.getLogger(__name__)

PAUSE_RETRY = timedelta(seconds=60)
NOTIFY_CHUNK = 20  # notifications delivered between two lease renewals

# What a pass reads of each outbox row it claims: what is sent and how it is grouped, not the
# bookkeeping (reading every column and its datetimes was a third of the claim's cost per row).
_CLAIMED = (
    outbox.c.id,
    outbox.c.target,
    outbox.c.object,
    outbox.c.record_key,
    outbox.c.operation,
    outbox.c.external_id_field,
    outbox.c.payload,
    outbox.c.occurred_at,
    outbox.c.created_at,
    outbox.c.attempts,
)

# Delivers notification rows (the columns of _CLAIMED); returns one result per row. The default
# has no subscribers.
Notifier = Callable[[Sequence[Any]], list[RecordResult]]


def no_subscribers(rows: Sequence[Any]) -> list[RecordResult]:
    """Nobody subscribed: a notification is done once recorded."""
    return [RecordResult(ok=True) for _ in rows]


@dataclass(frozen=True)
class DispatchResult:
    """What one pass did."""

    calls: int
    sent: int
    retried: int
    dead: int


@dataclass
class _Pending:
    """One record's coalesced write and the outbox rows it stands for."""

    target: str  # the CRM
    object: str
    operation: str
    external_id_field: str | None
    record_key: str
    fields: dict[str, Any]
    row_ids: list[int]
    attempts: int  # the most any of its rows has had


def coalesce(rows: Sequence[Any]) -> list[_Pending]:
    """Merge rows per record; rows must be given oldest first (occurred_at, id)."""
    merged: dict[tuple[str, str, str, str | None, str], _Pending] = {}
    for row in rows:
        key = (row.target, row.object, row.operation, row.external_id_field, row.record_key)
        pending = merged.get(key)
        if pending is None:
            pending = merged[key] = _Pending(
                row.target, row.object, row.operation, row.external_id_field, row.record_key, {}, [], 0
            )
        pending.fields.update(row.payload)
        pending.row_ids.append(row.id)
        pending.attempts = max(pending.attempts, row.attempts)
    return list(merged.values())


def batches(pending: Sequence[_Pending], size: int | Callable[[str], int]) -> list[list[_Pending]]:
    """Group per (CRM, object, operation, external id field), then cut into calls of at most
    `size` records (a number, or per CRM: each CRM's writer has its own cap)."""
    groups: dict[tuple[str, str, str, str | None], list[_Pending]] = {}
    for p in pending:
        groups.setdefault((p.target, p.object, p.operation, p.external_id_field), []).append(p)
    found = []
    for (target, *_), group in groups.items():
        cap = size(target) if callable(size) else size
        found += [group[i : i + cap] for i in range(0, len(group), cap)]
    return found


class Dispatcher:
    """Sends outbox rows; `run_once` is one pass."""

    def __init__(
        self,
        engine: Engine,
        writer: CrmWriter,
        *,
        owner: str,
        batch_size: int = 200,
        claim_size: int = 2000,
        max_attempts: int = 15,
        backoff_base_seconds: float = 2.0,
        backoff_max_seconds: float = 900.0,
        lease_seconds: float = 60.0,
        notifier: Notifier = no_subscribers,
        writers: Mapping[str, CrmWriter] | None = None,
    ) -> None:
        self.engine = engine
        # `writer` takes every CRM row unless `writers` names one for the row's target (its CRM)
        self.writer = writer
        self.writers = dict(writers or {})
        self.owner = owner
        self.batch_size = batch_size
        self.claim_size = claim_size
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base_seconds
        self.backoff_max = backoff_max_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.notifier = notifier
        self._renewed_at: datetime | None = None  # when this process last took or renewed the lease

    def run_once(self, now: datetime | None = None) -> DispatchResult:
        """If this process holds the dispatcher lease, send one claim's worth of rows."""
        now = now or datetime.now(UTC)
        if not self._lead(now):
            return DispatchResult(0, 0, 0, 0)
        rows = self._claim(now)
        if not rows:
            return DispatchResult(0, 0, 0, 0)
        crm_rows = [r for r in rows if r.target != "notification"]
        notes = [r for r in rows if r.target == "notification"]
        result = DispatchResult(0, 0, 0, 0)
        started = time.monotonic()

        def still_leader() -> bool:
            # A pass of slow calls can outlast the lease: renew it before each call, and stop
            # if another worker has taken over (it will send what this pass did not).
            return self._lead(now + timedelta(seconds=time.monotonic() - started))

        for i in range(0, len(notes), NOTIFY_CHUNK):
            if not still_leader():
                return result
            chunk = notes[i : i + NOTIFY_CHUNK]
            outcomes = self.notifier(chunk)
            self._record(
                [(r.id, r.attempts, o) for r, o in zip(chunk, outcomes, strict=True)], datetime.now(UTC)
            )
        for batch in batches(coalesce(crm_rows), self._batch_cap):
            if not still_leader():
                return result
            result = _add(result, self._send(batch))
        return result

    def _lead(self, at: datetime) -> bool:
        """Whether this process is the dispatcher at `at`, renewing its lease when a third of it
        has passed. Renewing is a write transaction and a commit: before every call and every
        idle pass, it was a fifth of the dispatcher's cost and made the inbox writer wait. A lease
        renewed less than a third of its length ago cannot have been taken over: nobody may take
        it before it expires, two thirds of its length later."""
        renewed = self._renewed_at
        if renewed is not None and renewed <= at < renewed + self.lease / 3:
            return True
        if hold_lease(self.engine, "dispatcher", self.owner, at, self.lease):
            self._renewed_at = at
            return True
        self._renewed_at = None
        return False

    def _claim(self, now: datetime) -> list[Any]:
        """Due rows and, with them, every other pending row of their records, leased to this pass.

        Read without the write lock: only the holder of the dispatcher lease claims, and nothing
        else moves a pending row, so the read needs no lock; reading up to claim_size rows and
        their payloads under it made the inbox writer wait for up to a few hundred ms. Only the
        lease columns are written under it."""
        with self.engine.connect() as conn:
            due = list(
                conn.execute(
                    sa.select(*_CLAIMED)
                    .where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now)
                    # the order of ix_outbox_due, so the claim reads its range and stops; by id,
                    # PostgreSQL walked the whole history once pending writes were a few per cent
                    # of the table (a CRM outage's backlog: 442 ms a claim at a million rows, 2.5 ms
                    # this way; bench/growth.py). Writes to one record still leave in the order
                    # they were decided: all of a record's pending rows are sent together, sorted.
                    .order_by(outbox.c.next_attempt_at, outbox.c.id)
                    .limit(self.claim_size)
                )
            )
            if not due:
                return []
            # Rows in backoff ride along with a newer due row of the same record, so an old
            # value can never be sent after a new one.
            records = {(r.target, r.object, r.record_key) for r in due}
            waiting: list[Any] = []
            keys = sorted({r.record_key for r in due})
            for i in range(0, len(keys), 500):
                waiting += [
                    r
                    for r in conn.execute(
                        sa.select(*_CLAIMED).where(
                            outbox.c.status == "pending",
                            outbox.c.next_attempt_at > now,
                            outbox.c.object.in_({r.object for r in due}),
                            outbox.c.record_key.in_(keys[i : i + 500]),
                        )
                    )
                    if (r.target, r.object, r.record_key) in records
                ]
        rows = due + waiting
        ids = [r.id for r in rows]
        with begin_write(self.engine) as conn:
            for i in range(0, len(ids), 500):
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_(ids[i : i + 500]), outbox.c.status == "pending")
                    .values(lease_owner=self.owner, lease_until=now + self.lease)
                )
        return sorted(rows, key=lambda r: (r.occurred_at, r.id))

    def writer_for(self, target: str) -> CrmWriter:
        """The writer of the CRM an outbox row names."""
        return self.writers.get(target, self.writer)

    def _batch_cap(self, target: str) -> int:
        """Records per call: the configured batch size, within what the CRM accepts."""
        # getattr: a writer written before max_batch was part of the interface still works
        return max(1, min(self.batch_size, getattr(self.writer_for(target), "max_batch", 200)))

    def _send(self, batch: list[_Pending]) -> DispatchResult:
        first = batch[0]
        writer = self.writer_for(first.target)
        wb = WriteBatch(
            object=first.object,
            operation="upsert" if first.operation == "upsert" else "update",
            external_id_field=first.external_id_field,
            records=[RecordWrite(p.record_key, p.fields) for p in batch],
        )
        name = writer.name
        try:
            results = writer.write_batch(wb)
            if len(results) != len(batch):
                raise CrmError(
                    f"writer returned {len(results)} results for {len(batch)} records", retryable=True
                )
            outcome = "ok"
        except CrmPaused as exc:
            log.warning("CRM writes paused", extra={"reason": "crm_paused", "detail": str(exc)})
            self._postpone(batch, datetime.now(UTC) + PAUSE_RETRY)
            metrics.CRM_CALLS.labels(name, first.object, "paused").inc()
            self._report_budget(writer, paused=True)
            return DispatchResult(0, 0, len(batch), 0)
        except CrmError as exc:
            log.warning(
                "CRM call failed",
                extra={
                    "reason": "crm_error",
                    "retryable": exc.retryable,
                    "object": first.object,
                    "detail": str(exc),
                },
            )
            results = [RecordResult(ok=False, retryable=exc.retryable, error=str(exc)) for _ in batch]
            outcome = "error"
        metrics.CRM_CALLS.labels(name, first.object, outcome).inc()
        self._report_budget(writer, paused=False)
        if outcome == "ok":
            metrics.CRM_RECORDS_PER_CALL.labels(name).observe(len(batch))
        now = datetime.now(UTC)
        per_row = [
            (row_id, p.attempts, r) for p, r in zip(batch, results, strict=True) for row_id in p.row_ids
        ]
        sent, retried, dead = self._record(per_row, now)
        for label, count in (("ok", sent), ("retry", retried), ("dead", dead)):
            if count:
                metrics.CRM_RECORDS.labels(name, label).inc(count)
        return DispatchResult(1, sent, retried, dead)

    def _report_budget(self, writer: CrmWriter, *, paused: bool) -> None:
        """The CRM's API budget as the writer last read it, for /metrics."""
        metrics.CRM_PAUSED.set(1 if paused else 0)
        usage = getattr(writer, "api_usage", None)  # optional for older writers, as max_batch
        reading = usage() if callable(usage) else None
        if reading:
            metrics.CRM_API_USED.set(reading[0])
            metrics.CRM_API_LIMIT.set(reading[1])

    def _record(self, per_row: list[tuple[int, int, RecordResult]], now: datetime) -> tuple[int, int, int]:
        sent_ids = [row_id for row_id, _, r in per_row if r.ok]
        retried = dead = 0
        with begin_write(self.engine) as conn:
            if sent_ids:
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_(sent_ids), outbox.c.lease_owner == self.owner)
                    .values(status="sent", sent_at=now, lease_owner=None, lease_until=None, last_error=None)
                )
            for row_id, attempts, r in per_row:
                if r.ok:
                    continue
                attempt = attempts + 1
                if r.retryable and attempt < self.max_attempts:
                    retried += 1
                    values: dict[str, Any] = {
                        "next_attempt_at": now + self.backoff(attempt),
                        "status": "pending",
                    }
                else:
                    dead += 1
                    values = {"status": "dead"}
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id == row_id, outbox.c.lease_owner == self.owner)
                    .values(
                        attempts=attempt,
                        last_error=r.error[:4000],
                        lease_owner=None,
                        lease_until=None,
                        **values,
                    )
                )
        if dead:
            log.error("writes dead-lettered", extra={"reason": "dead_letter", "count": dead})
        return len(sent_ids), retried, dead

    def _postpone(self, batch: list[_Pending], until: datetime) -> None:
        ids = [row_id for p in batch for row_id in p.row_ids]
        with begin_write(self.engine) as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(ids), outbox.c.lease_owner == self.owner)
                .values(next_attempt_at=until, lease_owner=None, lease_until=None)
            )

    def backoff(self, attempt: int) -> timedelta:
        """Exponential, capped, with full jitter in its upper half (so retries spread out)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return timedelta(seconds=ceiling * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto


def _add(a: DispatchResult, b: DispatchResult) -> DispatchResult:
    return DispatchResult(a.calls + b.calls, a.sent + b.sent, a.retried + b.retried, a.dead + b.dead)
