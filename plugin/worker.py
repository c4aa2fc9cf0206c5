"""The rules worker: claims inbox events by ordering key, applies the rules, stores the outcome.

Exactly once in effect: an event's status changes to `done` in the same transaction that stores
its state changes, outbox rows and timers. A worker that dies mid-way leaves its events
`pending`; its key leases expire and another worker takes them. Events of one key (one record)
are applied by one worker at a time, in the order they occurred.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin import metrics
from plugin.events import Event, Outcome
from plugin.inbox import insert_events
from plugin.outbox_rows import TargetOf, legacy_target, notification_row, write_row
from plugin.rules import Rule, StateReader
from plugin.storage import begin_write, facts, inbox, is_postgres, key_leases, outbox, rule_state, timers

log = logging.getLogger(__name__)


PREFETCH_CHUNK = 500  # keys per IN (...) query: well under SQLite's bound-parameter limit
CLAIM_WINDOW = 4  # pending events a claim reads per key it wants (a key may have several)


def worker_id() -> str:
    """Unique per process, readable in the lease tables."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _insert(dialect: str) -> Any:
    """The INSERT with ON CONFLICT of this dialect (PostgreSQL's or SQLite's)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


class _TxState(StateReader):
    """State as read for this pass plus what earlier events of the batch changed; remembers the
    version (updated_at, or absent) of every key it read, for the store to check."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._cache: dict[str, Any] = {}
        self.versions: dict[str, datetime | None] = {}
        self.changes: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        if key in self.changes:
            return self.changes[key]
        if key not in self._cache:
            self.prefetch([key])
        return self._cache[key]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read the keys not read yet, PREFETCH_CHUNK at a time (absent ones are remembered too)."""
        missing = sorted({k for k in keys if k not in self._cache and k not in self.changes})
        for i in range(0, len(missing), PREFETCH_CHUNK):
            chunk = missing[i : i + PREFETCH_CHUNK]
            stmt = sa.select(rule_state.c.key, rule_state.c.value, rule_state.c.updated_at).where(
                rule_state.c.key.in_(chunk)
            )
            found = {key: (value, at) for key, value, at in self._conn.execute(stmt).tuples()}
            for key in chunk:
                value, at = found.get(key, (None, None))
                self._cache[key] = value
                self.versions[key] = at


def _unchanged(conn: sa.Connection, versions: dict[str, datetime | None], lock: bool) -> bool:
    """Whether every state key read still has the version it was read at (locking them on
    PostgreSQL until the transaction ends, as another worker's rule may share a key)."""
    keys = sorted(versions)
    for i in range(0, len(keys), PREFETCH_CHUNK):
        chunk = keys[i : i + PREFETCH_CHUNK]
        stmt = sa.select(rule_state.c.key, rule_state.c.updated_at).where(rule_state.c.key.in_(chunk))
        if lock:
            stmt = stmt.with_for_update()
        now = dict(conn.execute(stmt).tuples().all())
        if any(now.get(key) != versions[key] for key in chunk):
            return False
    return True


@dataclass(frozen=True)
class BatchResult:
    """What one pass did."""

    done: int
    parked: int


def row_to_event(row: Any) -> Event:
    """An inbox row as the Event rules see."""
    return Event(
        source=row.source,
        delivery_id=row.delivery_id,
        kind=row.kind,
        occurred_at=row.occurred_at,
        object=row.object,
        record_id=row.record_id,
        actor=row.actor,
        data=row.data,
        sender=row.sender,
        raw_digest=row.raw_digest,
        inbox_id=row.id,
        key=row.ordering_key,
    )


class Worker:
    """Applies rules to inbox events. `run_once` is one pass; the CLI loops it."""

    def __init__(
        self,
        engine: Engine,
        rules: Sequence[Rule],
        *,
        batch_size: int = 200,
        lease_seconds: float = 30.0,
        owner: str | None = None,
        target_of: TargetOf = legacy_target,
    ) -> None:
        self.engine = engine
        self.target_of = target_of  # which CRM each write goes to
        self.rules = list(rules)
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.owner = owner or worker_id()

    # -- claiming ---------------------------------------------------------------------------

    def claim_keys(self, now: datetime) -> list[str]:
        """Lease up to batch_size ordering keys that have pending events and no live lease.

        The candidates are the keys of the oldest pending events, read in receipt order from
        ix_inbox_received and no further than CLAIM_WINDOW events per key wanted: grouping every
        pending event by key cost a claim time in proportion to the backlog. The read takes no
        write lock (an idle pass leaves it alone); the lease upsert below takes only keys whose
        lease is free, so a key another worker took meanwhile is simply not returned."""
        live = sa.select(key_leases.c.ordering_key).where(key_leases.c.lease_until > now)
        window = (
            sa.select(inbox.c.ordering_key)
            .where(inbox.c.status == "pending", inbox.c.ordering_key.not_in(live))
            .order_by(inbox.c.received_at)
            .limit(self.batch_size * CLAIM_WINDOW)
        )
        with self.engine.connect() as conn:
            keys = list(dict.fromkeys(conn.execute(window).scalars()))[: self.batch_size]
        if not keys:
            return []
        with begin_write(self.engine) as conn:
            # executemany, not .values([...]): a multi-row VALUES is compiled anew for every batch
            # (~20 ms for 200 keys); this statement is compiled once and cached.
            stmt = _insert(conn.dialect.name)(key_leases)
            stmt = stmt.on_conflict_do_update(
                index_elements=["ordering_key"],
                set_={"owner": stmt.excluded.owner, "lease_until": stmt.excluded.lease_until},
                where=key_leases.c.lease_until <= now,
            ).returning(key_leases.c.ordering_key)
            until = now + self.lease
            rows = [{"ordering_key": k, "owner": self.owner, "lease_until": until} for k in keys]
            return list(conn.execute(stmt, rows).scalars())

    # -- one pass -----------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> BatchResult:
        """Fire due timers, then claim and process one batch of keys."""
        now = now or datetime.now(UTC)
        self.fire_timers(now)
        keys = self.claim_keys(now)
        if not keys:
            return BatchResult(0, 0)
        try:
            return self._process(keys, now)
        except Exception:
            self.release(keys)
            raise

    def release(self, keys: Sequence[str]) -> None:
        """Give back leases (after a failed pass), so the keys are retried at once."""
        with begin_write(self.engine) as conn:
            conn.execute(
                key_leases.delete().where(
                    key_leases.c.ordering_key.in_(keys), key_leases.c.owner == self.owner
                )
            )

    def _process(self, keys: list[str], now: datetime) -> BatchResult:
        """Decide in a read transaction, then store in a short write transaction.

        Rules (signing, canonicalising, judging) run while nothing is locked: on SQLite the
        inbox writer, which acknowledges senders, never waits for them, only for the store.
        The store first checks the pass still holds its leases and that no state key it read
        has changed since (another worker's rule may share one); if either fails, nothing is
        written and the keys are retried."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(inbox)
                .where(inbox.c.ordering_key.in_(keys), inbox.c.status == "pending")
                .order_by(inbox.c.ordering_key, inbox.c.occurred_at, inbox.c.id)
            ).all()
            events = [row_to_event(row) for row in rows]
            state = _TxState(conn)
            state.prefetch(self._state_keys(events))
            done: list[int] = []
            parked: list[tuple[int, str]] = []
            staged = _Staged()
            for row, event in zip(rows, events, strict=True):
                try:
                    outcomes = self.apply_rules(event, state, now)
                except Exception as exc:  # a faulty rule parks its event, never the pipeline
                    log.exception("rule failed; event parked", extra={"event_id": row.id, "kind": row.kind})
                    parked.append((row.id, f"{type(exc).__name__}: {exc}"))
                    metrics.PARKED.labels(row.kind).inc()
                    continue
                for rule_name, outcome in outcomes:
                    state.changes.update(outcome.state)
                    staged.add(rule_name, outcome, event, now, self.target_of)
                done.append(row.id)
            writes = [prepare(conn.dialect, w) for w in staged.writes(conn.dialect.name, state.changes, now)]
        with begin_write(self.engine) as conn:
            # Giving the leases back is also the check that they are still this pass's: in one
            # transaction with the store, so a rollback keeps them and no one sees them gone early.
            kept = conn.execute(
                key_leases.delete().where(
                    key_leases.c.ordering_key.in_(keys), key_leases.c.owner == self.owner
                )
            ).rowcount
            if kept != len(keys):
                raise LeaseLost(f"{len(keys) - kept} of {len(keys)} key leases were taken over")
            if not _unchanged(conn, state.versions, lock=is_postgres(self.engine)):
                raise LeaseLost("state read by this pass changed before it could be stored")
            for write in writes:
                write.execute(conn)
            deletes = [k for k, v in state.changes.items() if v is None]
            if deletes:
                conn.execute(rule_state.delete().where(rule_state.c.key.in_(deletes)))
            # processed_at is evidence of when the verdict was made: the moment it is stored, not
            # the start of the pass (a claim and the rules come between).
            marked = _mark(conn, done, "done", datetime.now(UTC))
            if marked != len(done):
                raise LeaseLost(f"{len(done) - marked} events were processed by another pass")
            for event_id, error in parked:
                conn.execute(
                    inbox.update()
                    .where(inbox.c.id == event_id)
                    .values(status="parked", error=error[:4000], attempts=inbox.c.attempts + 1)
                )
        for row in rows:
            if row.id in done:
                metrics.PROCESSED.labels(row.kind).inc()
        return BatchResult(done=len(done), parked=len(parked))

    def _state_keys(self, events: Sequence[Event]) -> set[str]:
        """Every state key the rules say they will read for this batch's events."""
        keys: set[str] = set()
        for rule in self.rules:
            if rule.state_keys is None:
                continue
            for event in events:
                if event.kind in rule.kinds:
                    keys.update(rule.state_keys(event))
        return keys

    def apply_rules(self, event: Event, state: StateReader, now: datetime) -> list[tuple[str, Outcome]]:
        """Each interested rule's outcome; later rules see earlier rules' state changes."""
        outcomes: list[tuple[str, Outcome]] = []
        changes: dict[str, Any] = {}
        for rule in self.rules:
            if event.kind not in rule.kinds:
                continue
            if event.kind == "timer.fired" and event.data.get("rule") != rule.name:
                continue
            outcome = rule.apply(event, _Overlay(state, changes), now)
            changes.update(outcome.state)
            outcomes.append((rule.name, outcome))
        return outcomes

    # -- timers ----------------------------------------------------------------------------------

    def fire_timers(self, now: datetime) -> int:
        """Turn due timers into `timer.fired` inbox events (idempotent on the timer)."""
        # Most passes have no due timer: look without the write lock first, so an idle pass
        # neither waits for the inbox writer nor makes it wait (nor pays a commit's fsync).
        with self.engine.connect() as conn:
            if conn.execute(sa.select(timers.c.id).where(timers.c.due_at <= now).limit(1)).first() is None:
                return 0
        with begin_write(self.engine) as conn:
            stmt = sa.select(timers).where(timers.c.due_at <= now).order_by(timers.c.due_at).limit(500)
            if is_postgres(self.engine):
                stmt = stmt.with_for_update(skip_locked=True)
            due = conn.execute(stmt).all()
            if not due:
                return 0
            events = [
                Event(
                    source="timer",
                    # Not the id alone: SQLite reuses the id of a deleted row when the table is
                    # empty, and a second timer's event would then be taken for the first's
                    # re-delivery and dropped (a Pending approval that never times out).
                    delivery_id=f"{t.id}:{t.origin_event_id}:{t.rule}",
                    kind="timer.fired",
                    occurred_at=t.due_at,
                    data={"rule": t.rule, **t.data},
                    sender="onrecord",
                    key=t.ordering_key,
                )
                for t in due
            ]
            insert_events(conn, events, now)
            conn.execute(timers.delete().where(timers.c.id.in_([t.id for t in due])))
            return len(due)


class LeaseLost(Exception):
    """Another worker took over a key while this one was slow; its pass is rolled back."""


class _Overlay(StateReader):
    """Later rules for the same event see earlier rules' changes."""

    def __init__(self, base: StateReader, changes: dict[str, Any]) -> None:
        self._base = base
        self._changes = changes

    def get(self, key: str) -> Any | None:
        if key in self._changes:
            return self._changes[key]
        return self._base.get(key)


class _Staged:
    """Outbox and timer rows of one pass, written in its transaction."""

    def __init__(self) -> None:
        self.outbox: list[dict[str, Any]] = []
        self.timers: list[dict[str, Any]] = []
        self.facts: dict[tuple[str, str], dict[str, Any]] = {}  # the last word on each fact wins

    def add(self, rule_name: str, outcome: Outcome, event: Event, now: datetime, target_of: TargetOf) -> None:
        self.outbox += [
            write_row(w, event.occurred_at, now, event.inbox_id, target_of) for w in outcome.writes
        ]
        self.outbox += [
            notification_row(n, event.ordering_key, event.occurred_at, now, event.inbox_id)
            for n in outcome.notifications
        ]
        self.timers += [
            {
                "rule": rule_name,
                "ordering_key": t.key,
                "due_at": t.due_at,
                "data": dict(t.data),
                "origin_event_id": event.inbox_id,
            }
            for t in outcome.timers
        ]
        for f in outcome.facts:
            self.facts[(f.kind, f.key)] = {
                "kind": f.kind,
                "fact_key": f.key,
                "person": f.person,
                "occurred_at": f.occurred_at,
                "data": dict(f.data),
                "retracted": f.retracted,
                "event_id": event.inbox_id,
                "updated_at": now,
            }

    def writes(self, dialect: str, changes: dict[str, Any], now: datetime) -> list[_Write]:
        """The pass's inserts and upserts: state changes (deletions apart), outbox, timers, facts."""
        insert = _insert(dialect)
        found: list[_Write] = []
        upserts = [{"key": k, "value": v, "updated_at": now} for k, v in changes.items() if v is not None]
        if upserts:
            ins = insert(rule_state)
            stmt = ins.on_conflict_do_update(
                index_elements=["key"],
                set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
            )
            found.append(_Write("rule_state", stmt, upserts))
        if self.outbox:
            found.append(_Write("outbox", outbox.insert(), self.outbox))
        if self.timers:
            found.append(_Write("timers", timers.insert(), self.timers))
        if self.facts:
            ins = insert(facts)
            stmt = ins.on_conflict_do_update(
                index_elements=["kind", "fact_key"],
                set_={c: ins.excluded[c] for c in _FACT_UPDATES},
            )
            found.append(_Write("facts", stmt, list(self.facts.values())))
        return found


_FACT_UPDATES = ("person", "occurred_at", "data", "retracted", "updated_at")


@dataclass
class _Write:
    """One executemany of the store; `sql` and `params` when prepared for the DB-API directly."""

    name: str
    statement: Any
    rows: list[dict[str, Any]]
    sql: str | None = None
    params: list[tuple[Any, ...]] | None = None

    def execute(self, conn: sa.Connection) -> None:
        if self.sql is not None and self.params is not None:
            conn.exec_driver_sql(self.sql, self.params)
        else:
            conn.execute(self.statement, self.rows)


def prepare(dialect: sa.Dialect, write: _Write) -> _Write:
    """On SQLite, the write as SQL text and DB-API parameters, converted while no lock is held.

    SQLite has one writer: the inbox writer, which acknowledges senders, waits for every write
    transaction of the worker. SQLAlchemy converts each row's parameters (JSON, UTC times) inside
    `execute`, half of the time the store held the lock; here the same conversions (the columns'
    own bind processors, so the same text) run before it, and only sqlite3's executemany, in C,
    runs under it. Elsewhere (PostgreSQL: no single writer) the write is left to SQLAlchemy."""
    if dialect.name != "sqlite":
        return write
    keys = tuple(write.rows[0])
    sql, converters = _compiled(dialect, write.name, write.statement, keys)
    params = [
        tuple(row[k] if convert is None else convert(row[k]) for k, convert in converters)
        for row in write.rows
    ]
    return _Write(write.name, write.statement, write.rows, sql, params)


_COMPILED: dict[tuple[str, tuple[str, ...]], tuple[str, list[tuple[str, Any]]]] = {}


def _compiled(
    dialect: sa.Dialect, name: str, statement: Any, keys: tuple[str, ...]
) -> tuple[str, list[tuple[str, Any]]]:
    """The statement's SQL for rows with these keys and, per positional parameter, its column's
    bind processor (compiled once per statement and key set)."""
    found = _COMPILED.get((name, keys))
    if found is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        table = statement.table
        converters = [
            (key, table.c[key].type.dialect_impl(dialect).bind_processor(dialect))
            for key in compiled.positiontup
        ]
        found = _COMPILED[(name, keys)] = (compiled.string, converters)
    return found


def _mark(conn: sa.Connection, ids: list[int], status: str, now: datetime) -> int:
    """Mark pending events; the number marked (fewer if some were no longer pending)."""
    if not ids:
        return 0
    result = conn.execute(
        inbox.update()
        .where(inbox.c.id.in_(ids), inbox.c.status == "pending")
        .values(status=status, processed_at=now, error=None)
    )
    return int(result.rowcount)
