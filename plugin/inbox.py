"""Storing received events durably, with group commit.

Every request hands its events to one committer per process and waits. The committer takes
everything that queued up while the previous commit was running and stores it in ONE
transaction (one fsync), then wakes each waiter. A request is acknowledged only after the
commit that holds its events returned; if that commit failed, every waiter gets the error (and
answers 503, so the sender retries).

Under `serve` on SQLite the transaction is the inbox writer's (plugin/inbox_writer.py), and the
committer is how a gunicorn worker reaches it: on greenlets (gevent, the default) one committer
greenlet sends everything queued as one frame; on OS threads each request thread sends its own
frame, since waking a committer thread and then each waiter costs more GIL handoffs than the
writer's grouping saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from plugin.events import Event
from plugin.storage import begin_write, inbox, sqlite_connect, sqlite_path, sqlite_write_lock

if TYPE_CHECKING:
    from plugin.inbox_writer import SocketSink

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The events could not be made durable; nothing may be acknowledged."""


@dataclass(frozen=True)
class StoreResult:
    """How many of the submitted events were new, and how many were re-deliveries."""

    stored: int
    duplicates: int


Row = tuple[Any, ...] | dict[str, Any]

# Column order of the SQLite fast path's rows.
_COLUMNS = (
    "source", "delivery_id", "kind", "ordering_key", "object", "record_id", "actor",
    "occurred_at", "received_at", "sender", "raw_digest", "data", "status", "attempts",
)  # fmt: skip
# Built from constants only: column names above and "?" placeholders.
_SQLITE_INSERT = (
    f"INSERT OR IGNORE INTO inbox ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
)
_SQLITE_BATCH = 400  # host parameters per lookup, well under SQLite's limit


@dataclass
class _Ticket:
    rows: list[Row]
    submitted: int  # events the request carried, repeats included
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


MAX_DELIVERY_ID = 255  # inbox.delivery_id


def stored_delivery_id(delivery_id: str) -> str:
    """The id as the inbox keeps it: itself if it fits the column, else a digest of it.

    Stable, so a re-delivery still deduplicates; the part before the first ":" is kept so the
    row still says what kind of delivery it was. Every source goes through here: one too-long id
    must not fail the shared commit of every request that arrived with it.
    """
    if len(delivery_id) <= MAX_DELIVERY_ID:
        return delivery_id
    prefix = delivery_id.split(":", 1)[0][:64]
    return f"{prefix}:sha256:{hashlib.sha256(delivery_id.encode()).hexdigest()}"


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite storage format for UtcDateTime: naive UTC with microseconds.
    if value.tzinfo is None:
        raise ValueError("naive datetime: OnRecord stores only timezone-aware times")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def prepare_rows(dialect: str, events: Sequence[Event], received_at: datetime) -> list[Row]:
    """Rows ready to insert, one per distinct delivery (the first wins).

    Done by the request thread, before the write lock: the commit itself then only runs C code.
    """
    unique: dict[tuple[str, str], Event] = {}
    for ev in events:
        unique.setdefault((ev.source, stored_delivery_id(ev.delivery_id)), ev)
    if dialect != "sqlite":
        return [event_row(ev, received_at) | {"delivery_id": d} for (_, d), ev in unique.items()]
    received = _sqlite_time(received_at)
    return [
        (
            ev.source,
            delivery_id,
            ev.kind,
            ev.ordering_key,
            ev.object,
            ev.record_id,
            ev.actor,
            _sqlite_time(ev.occurred_at),
            received,
            ev.sender,
            ev.raw_digest,
            json.dumps(dict(ev.data)),
            "pending",
            0,
        )
        for (_, delivery_id), ev in unique.items()
    ]


def row_key(row: Row) -> tuple[str, str]:
    """(source, delivery_id) of a prepared row."""
    if isinstance(row, dict):
        return row["source"], row["delivery_id"]
    return row[0], row[1]


def insert_prepared(conn: sa.Connection, rows: Sequence[Row]) -> set[tuple[str, str]]:
    """Insert idempotently on (source, delivery_id); return the keys that were new."""
    if not rows:
        return set()
    if conn.dialect.name == "sqlite":
        return _insert_sqlite(conn, rows)
    stmt = postgresql.insert(inbox).on_conflict_do_nothing(index_elements=["source", "delivery_id"])
    dict_rows = [r for r in rows if isinstance(r, dict)]  # prepare_rows gives dicts off SQLite
    result = conn.execute(stmt.returning(inbox.c.source, inbox.c.delivery_id), dict_rows)
    return {(source, delivery_id) for source, delivery_id in result}


def _insert_sqlite(conn: sa.Connection, rows: Sequence[Row]) -> set[tuple[str, str]]:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return insert_sqlite_rows(cursor, rows)
    finally:
        cursor.close()


def insert_sqlite_rows(cursor: sqlite3.Cursor, rows: Sequence[Row]) -> set[tuple[str, str]]:
    """Insert prepared SQLite rows on a raw cursor; return the keys that were new.

    The caller holds SQLite's write lock (BEGIN IMMEDIATE), so what exists cannot change
    between this lookup and the insert. A few C calls instead of SQLAlchemy's per-row work.
    """
    keys = [row_key(r) for r in rows]
    existing: set[tuple[str, str]] = set()
    by_source: dict[str, list[str]] = {}
    for source, delivery_id in keys:
        by_source.setdefault(source, []).append(delivery_id)
    for source, ids in by_source.items():
        for i in range(0, len(ids), _SQLITE_BATCH):
            chunk = ids[i : i + _SQLITE_BATCH]
            placeholders = ",".join("?" * len(chunk))  # values are bound, never formatted in
            found = cursor.execute(
                f"SELECT delivery_id FROM inbox WHERE source = ? AND delivery_id IN ({placeholders})",  # noqa: S608
                [source, *chunk],
            )
            existing.update((source, d) for (d,) in found)
    cursor.executemany(_SQLITE_INSERT, [r for r, k in zip(rows, keys, strict=True) if k not in existing])
    return {k for k in keys if k not in existing}


def insert_events(
    conn: sa.Connection, events: Sequence[Event], received_at: datetime
) -> set[tuple[str, str]]:
    """Insert idempotently on (source, delivery_id); return the keys that were new."""
    return insert_prepared(conn, prepare_rows(conn.dialect.name, events, received_at))


def is_postgres_conn(conn: sa.Connection) -> bool:
    """Whether this connection talks to PostgreSQL."""
    return conn.dialect.name == "postgresql"


class _Sink(Protocol):
    def write(self, rows: Sequence[Row]) -> set[tuple[str, str]]: ...


class _EngineSink:
    """Stores rows through SQLAlchemy (PostgreSQL, or SQLite in memory)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def write(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        with begin_write(self._engine) as conn:
            return insert_prepared(conn, rows)


class SqliteSink:
    """Stores rows through a raw SQLite connection of its own (one thread at a time).

    The receive path's one hot transaction: BEGIN IMMEDIATE, a lookup, one executemany, COMMIT,
    under the same cross-process write lock as every other writer; no pool, no ORM events.
    """

    def __init__(self, database: str) -> None:
        self._database = database
        self._conn: sqlite3.Connection | None = None

    def write(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """One transaction; the new keys."""
        if self._conn is None:
            self._conn = sqlite_connect(self._database)
        with sqlite_write_lock(self._database):
            cursor = self._conn.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                new = insert_sqlite_rows(cursor, rows)
                cursor.execute("COMMIT")
                cursor.close()
            except BaseException:
                # Whatever went wrong, start the next commit on a fresh connection.
                with contextlib.suppress(sqlite3.Error):
                    cursor.close()
                self._conn.close()
                self._conn = None
                raise
        return new


class GroupCommitter:
    """One per process: shares a commit among the requests that arrive together."""

    def __init__(self, engine: Engine, *, max_rows: int = 500, timeout: float = 10.0) -> None:
        from plugin.inbox_writer import SocketSink  # it builds on this module

        self._engine = engine
        self._dialect = engine.dialect.name
        database = sqlite_path(engine)
        # Under `serve`, one writer process commits for every request of every worker.
        writer_socket = os.environ.get("ONRECORD_INBOX_SOCKET") if database else None
        # On OS threads, each request talks to the writer itself, on a connection from this pool
        # (a pool, not one per thread: connections outlive the threads that made them).
        self._socket_path = writer_socket if not _on_greenlets() else None
        self._idle_sinks: queue.SimpleQueue[SocketSink] = queue.SimpleQueue()
        self._sink: _Sink
        if writer_socket and self._socket_path is None:
            self._sink = SocketSink(writer_socket, timeout=timeout)  # one frame per group
        elif database:
            self._sink = SqliteSink(database)
        else:
            self._sink = _EngineSink(engine)
        self._max_rows = max_rows
        self._queue: queue.SimpleQueue[_Ticket] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._lock = threading.Lock()
        self.commits = 0  # for tests and metrics: how many transactions served how many tickets

    def store(self, events: Sequence[Event], timeout: float) -> StoreResult:
        """Block until `events` are committed; raise StoreError if they could not be."""
        try:
            ticket = _Ticket(prepare_rows(self._dialect, events, datetime.now(UTC)), len(events))
        except (TypeError, ValueError) as exc:  # e.g. a naive time: a connector bug, never acked
            raise StoreError(f"events cannot be stored: {exc}") from exc
        if self._socket_path is not None:
            return self._store_direct(ticket, timeout)
        self._ensure_thread()
        self._queue.put(ticket)
        if not ticket.done.wait(timeout):
            # The commit may still land later; the sender's retry is then a harmless duplicate.
            raise StoreError(f"storing took longer than {timeout:.0f}s")
        if ticket.error is not None:
            raise StoreError(str(ticket.error)) from ticket.error
        assert ticket.result is not None
        return ticket.result

    def _store_direct(self, ticket: _Ticket, timeout: float) -> StoreResult:
        from plugin.inbox_writer import SocketSink

        assert self._socket_path is not None
        try:
            sink = self._idle_sinks.get_nowait()
        except queue.Empty:
            sink = SocketSink(self._socket_path, timeout=timeout)
        try:
            new = sink.write(ticket.rows)
        except Exception as exc:
            sink.close()  # whatever state it is in, the next request starts on a fresh one
            raise StoreError(str(exc)) from exc
        self._idle_sinks.put(sink)
        self.commits += 1
        return StoreResult(stored=len(new), duplicates=ticket.submitted - len(new))

    def _ensure_thread(self) -> None:
        if self._running:  # an attribute, not is_alive(): this is asked on every request
            return
        with self._lock:
            if not self._running:
                self._running = True  # before start(): _run may end (and say so) at once
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                try:
                    self._thread.start()
                except BaseException:
                    self._running = False
                    raise

    def _run(self) -> None:
        try:
            self._commit_forever()
        finally:  # whatever ended it, the next request starts a new one
            self._running = False

    def _commit_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            rows = len(batch[0].rows)
            while rows < self._max_rows:
                try:
                    ticket = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(ticket)
                rows += len(ticket.rows)
            self._commit(batch)

    def _commit(self, batch: list[_Ticket]) -> None:
        rows: list[Row] = []
        seen: set[tuple[str, str]] = set()
        for t in batch:  # two requests in one group may carry the same delivery
            for row in t.rows:
                key = row_key(row)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        try:
            new = self._sink.write(rows)
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
            for row in t.rows:
                key = row_key(row)
                if key in new:
                    new.discard(key)
                    stored += 1
            t.result = StoreResult(stored=stored, duplicates=t.submitted - stored)
            t.done.set()


def _on_greenlets() -> bool:
    """Whether this process runs its requests on greenlets (a gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")  # never imported here: only asked if already there
    return bool(monkey is not None and monkey.is_module_patched("threading"))


_committers: dict[int, GroupCommitter] = {}
_committers_lock = threading.Lock()


def committer_for(engine: Engine, max_rows: int = 500, timeout: float = 10.0) -> GroupCommitter:
    """The process's committer for an engine (`timeout`: longest wait for the inbox writer)."""
    with _committers_lock:
        c = _committers.get(id(engine))
        if c is None:
            c = _committers[id(engine)] = GroupCommitter(engine, max_rows=max_rows, timeout=timeout)
        return c
