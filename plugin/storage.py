"""The schema and the engine: SQLite (WAL, synchronous=FULL) or PostgreSQL (psycopg 3), one code path."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import json_codec


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (naive text) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: OnRecord stores only timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite the value is text. SQLAlchemy's own DATETIME processors format and parse it field
    # by field in Python, on every row the worker and the dispatcher write or read (a tenth of the
    # worker's time per event); isoformat and fromisoformat do the same in C, in the same format
    # ("2026-11-28 14:55:15.089000", what SQLAlchemy has always written here).
    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # A pass binds the same `now` to many rows: the last text is kept with the (immutable)
        # value it is of, as one tuple, so threads sharing this function never pair them wrongly.
        last: list[tuple[datetime | None, str | None]] = [(None, None)]

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            seen, text = last[0]
            if seen is value:
                return text
            if value.tzinfo is not UTC:
                if value.tzinfo is None:
                    raise ValueError("naive datetime: OnRecord stores only timezone-aware times")
                value = value.astimezone(UTC)
            text = value.isoformat(" ", "microseconds")[:26]  # without its "+00:00"
            last[0] = (value, text)
            return text

        return process

    def result_processor(self, dialect: sa.Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        fallback = super().result_processor(dialect, coltype)

        def process(value: Any) -> datetime | None:
            if isinstance(value, str):
                try:
                    parsed = datetime.fromisoformat(value + "+00:00")  # UTC itself as its tzinfo
                except ValueError:
                    pass
                else:
                    if parsed.tzinfo is UTC:  # not so for a date alone ("2026-11-28+00:00")
                        return parsed
            return fallback(value) if fallback is not None else value

        return process


metadata = sa.MetaData()

# The inbox is also the evidence ledger: every accepted event, its digest, sender and receipt time.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("delivery_id", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("ordering_key", sa.String(400), nullable=False),
    sa.Column("object", sa.String(120)),
    sa.Column("record_id", sa.String(120)),
    sa.Column("actor", sa.String(255)),
    sa.Column("occurred_at", UtcDateTime(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Column("sender", sa.String(255), nullable=False),
    sa.Column("raw_digest", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    # pending -> done | parked (a rule raised; retry with `deadletters retry`)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("processed_at", UtcDateTime()),
    sa.UniqueConstraint("source", "delivery_id", name="uq_inbox_delivery"),
)
sa.Index("ix_inbox_pending", inbox.c.status, inbox.c.ordering_key, inbox.c.occurred_at)
# Retention finds old done rows by receipt time without reading the rest of the history.
sa.Index("ix_inbox_received", inbox.c.status, inbox.c.received_at)

# One row per ordering key being worked on: the lease that serialises a record across workers.
key_leases = sa.Table(
    "key_leases",
    metadata,
    sa.Column("ordering_key", sa.String(400), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("lease_until", UtcDateTime(), nullable=False),
)

# Rules' state, namespaced "rule:key".
rule_state = sa.Table(
    "rule_state",
    metadata,
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# What people did that counts (leader signals), emitted by rules: one row per (kind, key), so a
# re-delivery or a replay never counts twice; aggregation reads them by kind and time.
facts = sa.Table(
    "facts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("fact_key", sa.String(255), nullable=False),
    sa.Column("person", sa.String(255), nullable=False),
    sa.Column("occurred_at", UtcDateTime(), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer, "sqlite")),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("kind", "fact_key", name="uq_facts_kind_key"),
)
sa.Index("ix_facts_kind_time", facts.c.kind, facts.c.occurred_at)
# Leader aggregation reads one period of every kind (by time), and what changed since its watermark.
sa.Index("ix_facts_time", facts.c.occurred_at)
sa.Index("ix_facts_updated", facts.c.updated_at)

timers = sa.Table(
    "timers",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(120), nullable=False),
    sa.Column("ordering_key", sa.String(400), nullable=False),
    sa.Column("due_at", UtcDateTime(), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("origin_event_id", sa.BigInteger, nullable=False),
)
sa.Index("ix_timers_due", timers.c.due_at)

# CRM writes (target: the CRM, "salesforce" or "dataverse") and subscriber notifications (target
# "notification") waiting to go out.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(32), nullable=False),
    sa.Column("object", sa.String(120), nullable=False),  # CRM object, or notification topic
    sa.Column("record_key", sa.String(400), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),  # update | upsert | notify
    sa.Column("external_id_field", sa.String(120)),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("occurred_at", UtcDateTime(), nullable=False),
    sa.Column("event_id", sa.BigInteger),
    # pending -> sent | dead
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", UtcDateTime()),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime()),
)
sa.Index("ix_outbox_due", outbox.c.status, outbox.c.next_attempt_at)
sa.Index("ix_outbox_record", outbox.c.object, outbox.c.record_key, outbox.c.status)
# `outbox` and `deadletters` list the oldest pending, newest sent and oldest dead rows by id: this
# reads just those rows, where ix_outbox_due alone meant sorting every sent row (SQLite) or, by
# PostgreSQL's statistics, walking the history by primary key to reach the pending rows at its end.
sa.Index("ix_outbox_status", outbox.c.status, outbox.c.id)

# What the dry-run CRM would have sent: one row per call, and the records as they would now stand.
dryrun_calls = sa.Table(
    "dryrun_calls",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("object", sa.String(120), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("external_id_field", sa.String(120)),
    sa.Column("records", sa.JSON, nullable=False),
    sa.Column("called_at", UtcDateTime(), nullable=False),
)
dryrun_records = sa.Table(
    "dryrun_records",
    metadata,
    sa.Column("object", sa.String(120), primary_key=True),
    sa.Column("record_key", sa.String(400), primary_key=True),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# Scheduled jobs (pollers, aggregation): one runner at a time across workers.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("name", sa.String(120), primary_key=True),
    sa.Column("next_run_at", UtcDateTime(), nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", UtcDateTime()),
    sa.Column("state", sa.JSON, nullable=False),  # e.g. a poller's watermark
)


def is_postgres(engine: Engine) -> bool:
    """Whether SKIP LOCKED and friends are available."""
    return engine.dialect.name == "postgresql"


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here, not psycopg2."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every pool (after fork, or at exit)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def make_engine(url: str) -> Engine:
    """Create an engine with the durability settings this project depends on."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            _private_file(Path(path))
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
            poolclass=sa.pool.QueuePool,
            json_serializer=json_codec.dumps,
        )
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(
        url, pool_size=8, max_overflow=16, pool_pre_ping=True, json_serializer=json_codec.dumps
    )


def _private_file(path: Path) -> None:
    """The database (and so its -wal and -shm files, which SQLite creates with the database's
    mode) readable by OnRecord's user only: it holds every payload received."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # SQLite checkpoints the WAL into the database in whichever connection commits once the WAL
    # passes this many pages: under load most often the inbox writer, whose senders then wait for
    # the copy and its fsync. The worker process also checkpoints every second (checkpoint_wal),
    # outside any write transaction, so that most copies happen there. The threshold stays at
    # SQLite's default: at 10,000 pages every process read and wrote through a 40 MB WAL and
    # bench/pipeline.py measured the web's CPU per event at 1.1 ms instead of 0.65 (docs/benchmarks.md).
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cur.close()


WAL_AUTOCHECKPOINT_PAGES = 1_000


def checkpoint_wal(engine: Engine) -> int:
    """Copy what the WAL holds into the database file without waiting for or blocking anyone
    (SQLite's PASSIVE checkpoint); how many of the WAL's frames are now in the database file
    (all of them unless a reader still needs some). PostgreSQL: nothing to do, 0."""
    if sqlite_path(engine) is None:
        return 0
    with engine.connect() as conn:
        row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").first()
    return int(row[2]) if row is not None and row[2] > 0 else 0


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A writing transaction takes the write lock up front, so two writers never deadlock
    # upgrading read locks; a reading one stays deferred and never blocks a writer (WAL).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


@contextmanager
def begin_write(engine: Engine) -> Iterator[sa.Connection]:
    """A transaction that will write.

    On SQLite, writers from every process queue on an flock beside the database before
    BEGIN IMMEDIATE: the kernel wakes the next writer the moment the lock is free, where
    SQLite's own busy handler would have it sleep for up to 100 ms between polls. That is
    what keeps p99 low when two gunicorn workers and the rules worker all write.
    """
    writing = _write_engines.get(engine)
    if writing is None:
        writing = _write_engines[engine] = engine.execution_options(write=True)
    path = sqlite_path(engine)
    if path is None:
        with writing.begin() as conn:
            yield conn
        return
    with sqlite_write_lock(path), writing.begin() as conn:
        yield conn


_write_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


@contextmanager
def sqlite_write_lock(database: str) -> Iterator[None]:
    """The cross-process queue every SQLite writer of this database waits in."""
    # A new open file description per transaction, so threads of one process exclude each other too.
    fd = os.open(database + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sqlite_path(engine: Engine) -> str | None:
    """The database file of a SQLite engine (None for PostgreSQL or in-memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return database


def sqlite_connect(database: str) -> sqlite3.Connection:
    """A raw connection with the same durability settings as the engine's."""
    conn = sqlite3.connect(database, timeout=30, isolation_level=None, check_same_thread=False)
    _sqlite_on_connect(conn, None)
    return conn


# Power Automate webhook-trigger subscriptions (POST /api/subscriptions). The callback URL carries
# the flow's signature, so it is kept only encrypted (Fernet, key api.callback_key).
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("callback", sa.Text, nullable=False),  # Fernet token of the callback URL
    sa.Column("events", sa.JSON, nullable=False),  # topics, e.g. ["approval.blocked"]
    sa.Column("created_by", sa.String(255), nullable=False),  # the authenticated API caller
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # sha256 (hex) of the subscription's secret, the last part of its Location: a DELETE carrying it
    # unsubscribes without a bearer token. Null for subscriptions made before revision 0008.
    sa.Column("secret_hash", sa.String(64), nullable=True),
)

# Which subscriber already got (or permanently refused) which notification, so a notification
# retried for one subscriber is not delivered twice to the others.
subscription_deliveries = sa.Table(
    "subscription_deliveries",
    metadata,
    sa.Column("outbox_id", sa.BigInteger, primary_key=True),
    sa.Column(
        "subscription_id",
        sa.String(64),
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("status", sa.String(16), nullable=False),  # delivered | failed
    sa.Column("at", UtcDateTime(), nullable=False),
)

# Provenance: every signed statement (a record's change, or a leader's citation), as its DSSE
# envelope in RFC 8785 JSON exactly as logged, with its place in the append-only log
# (RFC 6962 leaf index and leaf hash; null until the log sequencer takes it in).
provenance_statements = sa.Table(
    "provenance_statements",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # record | citation
    sa.Column("object", sa.String(120), nullable=False),
    sa.Column("record_id", sa.String(120), nullable=False),
    sa.Column("sequence", sa.Integer),  # position in the record's chain (records only)
    sa.Column("digest", sa.String(64), nullable=False),  # sha256 of the statement payload
    sa.Column("envelope", sa.Text, nullable=False),
    sa.Column("recorded_at", UtcDateTime(), nullable=False),
    sa.Column("log_index", sa.BigInteger),
    sa.Column("leaf_hash", sa.String(64)),
    sa.UniqueConstraint("digest", name="uq_provenance_digest"),
    sa.UniqueConstraint("log_index", name="uq_provenance_log_index"),
    sa.UniqueConstraint("kind", "object", "record_id", "sequence", name="uq_provenance_chain"),
)
sa.Index("ix_provenance_record", provenance_statements.c.object, provenance_statements.c.record_id)

# The log's signed checkpoints (c2sp.org/tlog-checkpoint as a signed note), one per tree size.
provenance_checkpoints = sa.Table(
    "provenance_checkpoints",
    metadata,
    sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

# The people directory's CRM side: one row per person a source (the Salesforce user job) knows,
# as Person.to_json(); configured people are not stored (plugin.directory_store merges them in).
directory = sa.Table(
    "directory",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),  # the person's key: the 18-char user id
    sa.Column("source", sa.String(32), nullable=False),  # "salesforce"
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# The provenance log's stored Merkle tree: the hash of every perfect subtree of two or more leaves
# — 2^level leaves from leaf index * 2^level, as in transparency-dev's compact ranges and the tiles
# of Trillian/Tessera — written once when it completes and never changed. Level 0 (the leaves) is
# provenance_statements.leaf_hash by log_index. A root or a proof reads O(log n) rows of it.
provenance_tree = sa.Table(
    "provenance_tree",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)
