"""Storing received events durably, with group commit.

Every request thread hands its events to one committer thread per process and waits. The
committer takes everything that queued up while the previous commit was running and stores
it in ONE transaction (one fsync), then wakes each waiter. A request is acknowledged only
after the commit that holds its events returned; if that commit failed, every waiter gets
the error (and answers 503, so the sender retries).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin.events import Event
from plugin.storage import begin_write, inbox

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The events could not be made durable; nothing may be acknowledged."""


@dataclass(frozen=True)
class StoreResult:
    """How many of the submitted events were new, and how many were re-deliveries."""

    stored: int
    duplicates: int


@dataclass
class _Ticket:
    events: Sequence[Event]
    done: threading.Event = field(default_factory=threading.Event)
    result: StoreResult | None = None
    error: BaseException | None = None


def event_row(event: Event, received_at: datetime) -> dict[str, Any]:
    """The inbox row for an event."""
    return {
        "source": event.source,
        "delivery_id": event.delivery_id,
        "kind": event.kind,
        "ordering_key": event.ordering_key,
        "object": event.object,
        "record_id": event.record_id,
        "actor": event.actor,
        "occurred_at": event.occurred_at,
        "received_at": received_at,
        "sender": event.sender,
        "raw_digest": event.raw_digest,
        "data": dict(event.data),
        "status": "pending",
        "attempts": 0,
    }


def insert_events(conn: sa.Connection, events: Sequence[Event], received_at: datetime) -> set[tuple[str, str]]:
    """Insert idempotently on (source, delivery_id), in one statement; return the new keys."""
    if not events:
        return set()
    insert = postgresql.insert if is_postgres_conn(conn) else sqlite.insert
    # A batch may itself repeat a delivery id; the first one is the one stored.
    unique: dict[tuple[str, str], Event] = {}
    for ev in events:
        unique.setdefault((ev.source, ev.delivery_id), ev)
    stmt = insert(inbox).on_conflict_do_nothing(index_elements=["source", "delivery_id"])
    result = conn.execute(
        stmt.returning(inbox.c.source, inbox.c.delivery_id), [event_row(ev, received_at) for ev in unique.values()]
    )
    return {(source, delivery_id) for source, delivery_id in result}


def is_postgres_conn(conn: sa.Connection) -> bool:
    """Whether this connection talks to PostgreSQL."""
    return conn.dialect.name == "postgresql"


class GroupCommitter:
    """One per process: shares a commit among the requests that arrive together."""

    def __init__(self, engine: Engine, *, max_rows: int = 500) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._queue: queue.SimpleQueue[_Ticket] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0  # for tests and metrics: how many transactions served how many tickets

    def store(self, events: Sequence[Event], timeout: float) -> StoreResult:
        """Block until `events` are committed; raise StoreError if they could not be."""
        self._ensure_thread()
        ticket = _Ticket(events)
        self._queue.put(ticket)
        if not ticket.done.wait(timeout):
            # The commit may still land later; the sender's retry is then a harmless duplicate.
            raise StoreError(f"storing took longer than {timeout:.0f}s")
        if ticket.error is not None:
            raise StoreError(str(ticket.error)) from ticket.error
        assert ticket.result is not None
        return ticket.result

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            rows = len(batch[0].events)
            while rows < self._max_rows:
                try:
                    ticket = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(ticket)
                rows += len(ticket.events)
            self._commit(batch)

    def _commit(self, batch: list[_Ticket]) -> None:
        received_at = datetime.now(UTC)
        try:
            with begin_write(self._engine) as conn:
                new = insert_events(conn, [ev for t in batch for ev in t.events], received_at)
            self.commits += 1
        except Exception as exc:  # every waiter must hear about it, whatever it was
            log.error("inbox commit failed", extra={"reason": "store_failed", "error": repr(exc)})
            for t in batch:
                t.error = exc
                t.done.set()
            return
        for t in batch:
            # Each new key is credited to the first request that carried it; later ones are duplicates.
            stored = 0
            for ev in t.events:
                key = (ev.source, ev.delivery_id)
                if key in new:
                    new.discard(key)
                    stored += 1
            t.result = StoreResult(stored=stored, duplicates=len(t.events) - stored)
            t.done.set()


_committers: dict[int, GroupCommitter] = {}
_committers_lock = threading.Lock()


def committer_for(engine: Engine, max_rows: int = 500) -> GroupCommitter:
    """The process's committer for an engine."""
    with _committers_lock:
        c = _committers.get(id(engine))
        if c is None:
            c = _committers[id(engine)] = GroupCommitter(engine, max_rows=max_rows)
        return c
