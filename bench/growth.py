"""Benchmark: what the everyday operations cost when the history is large.

Targets: `/metrics`, a claim and `outbox` each <= 20 ms with 10 million inbox rows; the provenance
log's append, root, inclusion proof and consistency proof each <= 2 ms at 1 million and at 10
million leaves. Measured on SQLite (WAL, synchronous=FULL, as OnRecord runs it) and PostgreSQL.

Queue part. For each database, two databases with OnRecord's own schema (`plugin.migrate`, the
Alembic revisions) are filled in bulk, in SQL (a recursive CTE on SQLite, generate_series on
PostgreSQL; the secondary indexes dropped during the load and created again from their own
definitions afterwards), with an inbox and an outbox of `--base-rows` (100,000) and of `--rows`
(10 million) rows each, in the same realistic mix: a year of history, almost every event `done`
and every write `sent`, and the same absolute amount of work outstanding at both sizes — 2,000
pending events (the newest, on 1,000 ordering keys), 1,000 parked events scattered through the
history, 2,000 pending writes (a quarter in backoff), 1,000 dead writes scattered through the
history. Ordering keys: one per record (rows / 20 records, so each changes about 20 times) and
2,000 users; 70 % record changes, 20 % user activity, 10 % approval decisions; writes are CRM
updates, approval upserts and notifications. PostgreSQL tables are then VACUUM ANALYZEd until the
visibility map covers them (as autovacuum leaves an old table); OnRecord never runs ANALYZE on
SQLite, so neither does this script. PostgreSQL: ONRECORD_BENCH_POSTGRES_URL, by default
postgresql://postgres@127.0.0.1:5432/test (a schema of its own is created and dropped).

Then each operation is timed `--repeat` times after `--warmup` untimed runs, calling what OnRecord
calls:

- GET /metrics and GET /readyz through the Flask app (`create_app`, test client: no socket);
- `pipeline_stats()` (what /metrics and `outbox` read) and `pipeline_stats(totals=True)` (the exact
  totals of done events and sent writes, which `outbox` counted until it capped the sent count);
- the worker's claim (`Worker.claim_keys`: lease up to 200 ordering keys with pending events; the
  leases are given back, untimed, after each) and the dispatcher's claim (`Dispatcher._claim`:
  up to 2,000 due writes, plus the writes in backoff of the same records, leased);
- `python -m plugin outbox` and `python -m plugin deadletters list`: their functions
  (`plugin.commands.outbox.run_outbox` / `run_deadletters`), output discarded; and `outbox`'s
  three listings alone (`_rows`, 20 rows each), to separate them from its totals;
- dedupe: a re-delivery of an event picked at random from the history stored through the inbox's
  own sink (SQLite: `SqliteSink`, the inbox writer's path; PostgreSQL: the engine sink's
  INSERT ... ON CONFLICT DO NOTHING), one transaction; and, for reference, a new event stored the
  same way (its commit is durable: SQLite's fsync).

Log part. One database per engine, the log grown to each of `--leaves` by writing statements,
leaf hashes and every completed perfect subtree (`provenance_tree`) directly: on SQLite from
Python (`merkle.append_leaves`, the sequencer's own function), on PostgreSQL in SQL (sha256,
level by level). Each size is validated before it is timed: the stored root equals the root
recomputed from every leaf hash (streamed), leaf hashes of sampled statements equal their
envelopes' hashes, and an inclusion and a consistency proof built from the stored tree verify
against independently computed roots; a signed checkpoint of that size is stored, so the first
append's consistency check also covers the synthesised tree. Then append (`log.integrate` for one
new statement, as bench/provenance_log.py: completed nodes, the consistency check against the
previous checkpoint, the audit window, the signature, the commit), root, inclusion and
consistency proof are timed like the queue's operations.

`--compare-without INDEX`: after the queue's figures at each size, the index is dropped and the
operations it serves (COMPARED) are timed again; `--compare-without ix_outbox_status` gives the
figures from before revision 0011.

Each figure is the median and the p99 (nearest rank: of 50 runs, the largest) in milliseconds;
the ratio is the large size's median over the small size's. Slow operations are repeated fewer
times (at least 5) so each stays within `--budget` seconds; the run says how many. Everything is
created in a temporary directory (or `--dir`) and in a PostgreSQL schema of its own, and removed
at the end unless `--keep`. Figures are printed (markdown tables) and saved as JSON in
bench/out/growth-<UTC timestamp>.json.

    .venv/bin/python bench/growth.py [--db sqlite|postgres|both] [--part queue|log|both]
        [--rows 10000000] [--base-rows 100000] [--leaves 1000000,10000000] [--repeat 50]

A quick run: --rows 200000 --base-rows 20000 --leaves 20000,100000 --repeat 20. The full run
needs about 20 GB free at its peak (the four large databases are built one after the other, each
removed before the next) and about 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench.provenance_log import NOW, ORIGIN, add, envelope  # noqa: E402
from plugin import migrate  # noqa: E402
from plugin.commands.outbox import _rows, run_deadletters, run_outbox  # noqa: E402
from plugin.config import Config, load_config  # noqa: E402
from plugin.dispatch import Dispatcher  # noqa: E402
from plugin.events import Event  # noqa: E402
from plugin.inbox import SqliteSink, _EngineSink, prepare_rows  # noqa: E402
from plugin.provenance import merkle  # noqa: E402
from plugin.provenance.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from plugin.provenance.keys import SigningKey  # noqa: E402
from plugin.provenance.log import StoredTree, consistency, integrate, proofs, root_at  # noqa: E402
from plugin.stats import pipeline_stats  # noqa: E402
from plugin.storage import (  # noqa: E402
    dispose_engines,
    get_engine,
    inbox,
    provenance_checkpoints,
    provenance_statements,
    sqlite_connect,
)
from plugin.worker import Worker, row_to_event  # noqa: E402

PG_URL = os.environ.get("ONRECORD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# The work outstanding, the same at every size: what grows is the history only.
INBOX_PENDING = 2000  # the newest events, two per ordering key
INBOX_PARKED = 1000
OUTBOX_PENDING = 2000  # the newest writes; every fourth in backoff
OUTBOX_DEAD = 1000
USERS = 2000
YEAR_SECONDS = 365 * 86400
CHUNK = 1_000_000  # rows per INSERT ... SELECT

# What ix_outbox_status (revision 0011) changes: measured again without it with --compare-without.
COMPARED = (
    "pipeline_stats(totals=True)",
    "claim: dispatcher, due writes",
    "outbox command",
    "outbox listings alone (20 each)",
    "deadletters list",
)
QUEUE_OPS = (
    ("GET /metrics", 20.0),
    ("GET /readyz", None),
    ("pipeline_stats() (/metrics, outbox)", None),
    ("pipeline_stats(totals=True)", None),
    ("claim: worker, 200 keys", 20.0),
    ("claim: dispatcher, due writes", 20.0),
    ("outbox command", 20.0),
    ("outbox listings alone (20 each)", None),
    ("deadletters list", None),
    ("dedupe: re-delivered event", None),
    ("reference: new event stored", None),
)
LOG_OPS = (
    ("append", 2.0),
    ("root", 2.0),
    ("inclusion proof", 2.0),
    ("consistency proof", 2.0),
    ("reference: one row inserted and committed", None),
)


# -- timing -----------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def timed(
    op: Callable[[], Any],
    repeat: int,
    warmup: int,
    budget: float,
    before: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Median and p99 of `repeat` runs (fewer, but at least 5, if they would exceed `budget` s)."""
    first = 0.0
    for i in range(max(1, warmup)):
        if before is not None:
            before()
        started = time.perf_counter()
        op()
        if i == 0:
            first = time.perf_counter() - started
    runs = repeat if first * repeat <= budget else max(5, int(budget / max(first, 1e-9)))
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        op()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 0.99),
        "min_ms": min(samples),
        "runs": runs,
    }


# -- databases --------------------------------------------------------------------------------------


@dataclass
class Database:
    """One database to fill: a SQLite file or a PostgreSQL schema of its own."""

    kind: str  # sqlite | postgres
    url: str
    path: Path | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema

    @property
    def engine(self) -> sa.Engine:
        return get_engine(self.url)

    def size_bytes(self) -> int:
        if self.path is not None:
            return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = :s AND c.relkind = 'r'"
                    ),
                    {"s": self.schema},
                ).scalar()
                or 0
            )


@contextlib.contextmanager
def database(kind: str, workdir: Path, name: str, keep: bool) -> Iterator[Database]:
    """A fresh, migrated database; removed afterwards unless `keep`."""
    if kind == "sqlite":
        path = workdir / f"{name}.db"
        db = Database(kind, f"sqlite:///{path}", path=path)
    else:
        schema = f"growth_{name}_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in PG_URL else "?"
        db = Database(kind, f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema=schema)
    try:
        migrate.upgrade(db.engine)
        yield db
    finally:
        dispose_engines()
        if keep:
            print(f"  kept {db.path or db.schema}", file=sys.stderr)
        elif db.path is not None:
            for p in db.path.parent.glob(db.path.name + "*"):
                p.unlink()
        else:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {db.schema} CASCADE"))
            admin.dispose()


class Loader:
    """Bulk SQL on one database: raw sqlite3 (synchronous=OFF while loading) or a psycopg session."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pg = db.kind == "postgres"
        if self.pg:
            # A raw connection of its own: its session settings must not reach the pool the
            # measurements use (synchronous_commit = off would flatter every commit), and psycopg
            # leaves "%" (SQL's modulo) alone in a statement without parameters.
            import psycopg

            self.conn: Any = psycopg.connect(db.url, autocommit=True)
            for setting in (
                "SET synchronous_commit = off",
                "SET maintenance_work_mem = '512MB'",
                "SET max_parallel_maintenance_workers = 0",  # one core for the load: others share the box
            ):
                self.conn.execute(setting)
        else:
            assert db.path is not None
            self.conn = sqlite_connect(str(db.path))
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute("PRAGMA cache_size=-1000000")  # 1 GB while loading

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.pg:
            self.conn.execute(sql, params or None)
        else:
            self.conn.execute("BEGIN")
            self.conn.execute(sql, params)
            self.conn.execute("COMMIT")

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        assert not self.pg
        self.conn.execute("BEGIN")
        self.conn.executemany(sql, rows)
        self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.pg:
            return [tuple(r) for r in self.conn.execute(sql, params or None).fetchall()]
        return list(self.conn.execute(sql, params).fetchall())

    @contextlib.contextmanager
    def without_indexes(self, table: str) -> Iterator[None]:
        """Drop the table's secondary indexes (and unique constraints on PostgreSQL), then create
        them again from their own definitions. SQLite's UNIQUE constraints are its autoindexes,
        which cannot be dropped: they are filled as the rows go in."""
        if self.pg:
            found = self.query(
                "SELECT i.relname, pg_get_indexdef(i.oid), c.conname, pg_get_constraintdef(c.oid) "
                "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "LEFT JOIN pg_constraint c ON c.conindid = i.oid AND c.contype = 'u' "
                "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary",
                (table,),
            )
            for name, _, con, _ in found:
                self.run(f"ALTER TABLE {table} DROP CONSTRAINT {con}" if con else f"DROP INDEX {name}")
            yield
            for _, indexdef, con, condef in found:
                self.run(f"ALTER TABLE {table} ADD CONSTRAINT {con} {condef}" if con else indexdef)
        else:
            found = self.query(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                (table,),
            )
            for name, _ in found:
                self.run(f'DROP INDEX "{name}"')
            yield
            for _, ddl in found:
                self.run(ddl)

    def finish(self, tables: list[str]) -> dict[str, float]:
        """PostgreSQL: VACUUM ANALYZE until the visibility map covers the table, as autovacuum
        leaves an old table (another session's open transaction can hold that back for a while:
        then try again). Returns the share of pages marked all-visible, per table."""
        visible: dict[str, float] = {}
        if self.pg:
            for table in tables:
                for _ in range(12):
                    self.run(f"VACUUM (ANALYZE) {table}")
                    pages, marked = self.query(
                        "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass", (table,)
                    )[0]
                    visible[table] = marked / max(1, pages)
                    if visible[table] >= 0.99:
                        break
                    time.sleep(5)
        else:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()
        return visible


# -- the queue: inbox and outbox -----------------------------------------------------------------


class Sql:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, pg: bool) -> None:
        self.pg = pg

    def pad(self, expr: str, width: int) -> str:
        return f"lpad(({expr})::text, {width}, '0')" if self.pg else f"printf('%0{width}d', {expr})"

    def text(self, expr: str) -> str:
        return f"({expr})::text" if self.pg else f"CAST({expr} AS TEXT)"

    def ts(self, epoch: str) -> str:
        if self.pg:
            return f"to_timestamp({epoch})"
        return f"strftime('%Y-%m-%d %H:%M:%S', {epoch}, 'unixepoch') || '.000000'"

    def json(self, expr: str) -> str:
        return f"({expr})::json" if self.pg else expr

    def hex64(self) -> str:
        return "md5(n::text) || md5((n + 7)::text)" if self.pg else "lower(hex(randomblob(32)))"

    def series(self, lo: int, hi: int) -> tuple[str, str]:
        """(WITH prefix, FROM clause) giving n = lo..hi."""
        if self.pg:
            return "", f"generate_series({lo}::bigint, {hi}::bigint) AS s(n)"
        recursive = f"WITH RECURSIVE s(n) AS (SELECT {lo} UNION ALL SELECT n + 1 FROM s WHERE n < {hi}) "  # noqa: S608
        return recursive, "s"


def inbox_select(q: Sql, rows: int, t0: int, step: int) -> tuple[str, str]:
    """Columns and SELECT list of inbox row n (1..rows)."""
    records = max(INBOX_PENDING, rows // 20)
    park_every = max(10, (rows - INBOX_PENDING) // INBOX_PARKED)
    c = "((n / 2) % 10)"  # an event's class; two consecutive events share it and their key
    rid = f"'006' || {q.pad(f'(n / 2) % {records}', 12)} || 'AAQ'"
    uid = f"'005' || {q.pad(f'(n / 2) % {USERS}', 12)} || 'AAK'"
    status = (
        f"CASE WHEN n > {rows - INBOX_PENDING} THEN 'pending' "
        f"WHEN n % {park_every} = 7 THEN 'parked' ELSE 'done' END"
    )
    at = f"{t0} + n * {step}"
    n = q.text("n")
    record_changed = (
        '\'{"org_id": "00D5g000004ExAmPLE", "event_id": "evt-\' || '
        + n
        + ' || \'", "fields": {"Id": "\' || '
        + rid
        + ' || \'", "Amount": \' || '
        + q.text("(n % 99991) * 10")
        + " || ', \"StageName\": \"' || CASE n % 4 WHEN 0 THEN 'Prospecting' WHEN 1 THEN 'Proposal' "
        "WHEN 2 THEN 'Negotiation' ELSE 'Closed Won' END || '\", \"CloseDate\": \"2026-12-31\", "
        '"LastModifiedById": "\' || ' + uid + ' || \'", "SystemModstamp": "2026-11-30T10:00:00.000Z"}}\''
    )
    activity = (
        '\'{"activity": "report.viewed", "org_id": "00D5g000004ExAmPLE", "event_id": "evt-\' || '
        + n
        + ' || \'", "object": "ReportEvent", "event_identifier": "\' || '
        + n
        + ' || \'", "report_id": "00O5g000001AbCdEAK", "report_name": "Pipeline by stage"}\''
    )
    approval = (
        '\'{"approval": "finance", "outcome": "Approve", "responder": "\' || '
        + uid
        + ' || \'", "record": "Opportunity/\' || '
        + rid
        + ' || \'", "comments": "Within budget"}\''
    )
    cols = (
        "source, delivery_id, kind, ordering_key, object, record_id, actor, occurred_at, received_at, "
        "sender, raw_digest, data, status, attempts, error, processed_at"
    )
    select = ", ".join(
        [
            f"CASE WHEN {c} = 9 THEN 'power_automate.approvals' ELSE 'salesforce.events' END",
            f"CASE WHEN {c} = 9 THEN 'approval:Opportunity-' || {rid} || ':finance:' || {q.pad('n', 10)} "
            f"WHEN {c} >= 7 THEN 'ReportEvent:' || {q.pad('n', 14)} "
            f"ELSE 'msg_2K' || {q.pad('n', 14)} || 'Bx7PpJ85f4W' END",
            f"CASE WHEN {c} = 9 THEN 'approval.decided' WHEN {c} >= 7 THEN 'user.activity' "
            "ELSE 'record.changed' END",
            f"CASE WHEN {c} IN (7, 8) THEN 'actor/' || {uid} ELSE 'Opportunity/' || {rid} END",
            f"CASE WHEN {c} IN (7, 8) THEN NULL ELSE 'Opportunity' END",
            f"CASE WHEN {c} IN (7, 8) THEN NULL ELSE {rid} END",
            uid,
            q.ts(f"{at} - 2"),
            q.ts(at),
            f"CASE WHEN {c} = 9 THEN 'power-automate:flow-approvals' ELSE '00D5g000004ExAmPLE' END",
            q.hex64(),
            q.json(
                f"CASE WHEN {c} = 9 THEN {approval} WHEN {c} >= 7 THEN {activity} ELSE {record_changed} END"
            ),
            status,
            f"CASE WHEN {status} = 'pending' THEN 0 ELSE 1 END",
            f"CASE WHEN {status} = 'parked' THEN 'KeyError: ''StageName''' ELSE NULL END",
            f"CASE WHEN {status} = 'done' THEN {q.ts(f'{at} + 1')} ELSE NULL END",
        ]
    )
    return cols, select


def outbox_select(q: Sql, rows: int, t0: int, step: int, now: int) -> tuple[str, str]:
    """Columns and SELECT list of outbox row n (1..rows)."""
    records = max(OUTBOX_PENDING, rows // 20)
    dead_every = max(10, (rows - OUTBOX_PENDING) // OUTBOX_DEAD)
    kind = "(n % 20)"  # 0: notification; 1-12: Opportunity update; 13-19: approval upsert
    rid = f"'006' || {q.pad(f'(n / 2) % {records}', 12)} || 'AAQ'"
    status = (
        f"CASE WHEN n > {rows - OUTBOX_PENDING} THEN 'pending' "
        f"WHEN n % {dead_every} = 3 THEN 'dead' ELSE 'sent' END"
    )
    backoff = f"({status} = 'pending' AND n % 4 = 0)"
    at = f"{t0} + n * {step}"
    n = q.text("n")
    payload = (
        f'CASE WHEN {kind} = 0 THEN \'{{"record": "Opportunity/\' || {rid} || \'", "verdict": "Verified", '
        '"statement": \' || ' + n + " || '}' "
        f'WHEN {kind} <= 12 THEN \'{{"OnRecord_Status__c": "Verified", "OnRecord_Proof__c": '
        "\"https://onrecord.example.com/api/provenance/Opportunity/' || "
        + rid
        + " || '?sequence=' || "
        + n
        + ' || \'", "OnRecord_Checked_At__c": "2026-11-30T10:00:00Z"}\' '
        'ELSE \'{"Opportunity__c": "\' || ' + rid + ' || \'", "Verdict__c": "Verified", '
        '"Stage__c": "finance", "Decided_By__c": "005000000000042AAK"}\' END'
    )
    cols = (
        "target, object, record_key, operation, external_id_field, payload, occurred_at, event_id, status, "
        "attempts, next_attempt_at, lease_owner, lease_until, last_error, created_at, sent_at"
    )
    select = ", ".join(
        [
            f"CASE WHEN {kind} = 0 THEN 'notification' ELSE 'salesforce' END",
            f"CASE WHEN {kind} = 0 THEN 'approval.verified' WHEN {kind} <= 12 THEN 'Opportunity' "
            "ELSE 'OnRecord_Approval__c' END",
            f"CASE WHEN {kind} = 0 THEN 'Opportunity/' || {rid} WHEN {kind} <= 12 THEN {rid} "
            f"ELSE {rid} || ':' || {q.pad('n', 10)} END",
            f"CASE WHEN {kind} = 0 THEN 'notify' WHEN {kind} <= 12 THEN 'update' ELSE 'upsert' END",
            f"CASE WHEN {kind} >= 13 THEN 'OnRecord_Key__c' ELSE NULL END",
            q.json(payload),
            q.ts(f"{at} - 3"),
            "n",
            status,
            f"CASE WHEN {status} = 'dead' THEN 15 WHEN {backoff} THEN 3 "
            f"WHEN {status} = 'pending' THEN 0 ELSE 1 END",
            f"CASE WHEN {backoff} THEN {q.ts(str(now + 86400))} "
            f"WHEN {status} = 'dead' THEN {q.ts(f'{at} + 3600')} "
            f"ELSE {q.ts(at)} END",
            "NULL",
            "NULL",
            f"CASE WHEN {status} = 'dead' "
            "THEN 'FIELD_CUSTOM_VALIDATION_EXCEPTION: Close Date cannot be in the past' "
            f"WHEN {backoff} THEN 'HTTP 503: Service Unavailable' ELSE NULL END",
            q.ts(at),
            f"CASE WHEN {status} = 'sent' THEN {q.ts(f'{at} + 1')} ELSE NULL END",
        ]
    )
    return cols, select


def fill_queue(db: Database, rows: int) -> dict[str, Any]:
    """An inbox and an outbox of `rows` rows each; returns how long it took and the counts."""
    started = time.perf_counter()
    now = int(time.time())
    step = max(1, YEAR_SECONDS // rows)
    t0 = now - 60 - rows * step
    load = Loader(db)
    q = Sql(load.pg)
    for table, (cols, select) in (
        ("inbox", inbox_select(q, rows, t0, step)),
        ("outbox", outbox_select(q, rows, t0, step, now)),
    ):
        with load.without_indexes(table):
            for lo in range(1, rows + 1, CHUNK):
                hi = min(rows, lo + CHUNK - 1)
                prefix, source = q.series(lo, hi)
                load.run(f"{prefix}INSERT INTO {table} ({cols}) SELECT {select} FROM {source}")  # noqa: S608
                print(f"    {table}: {hi:,} rows", file=sys.stderr, end="\r")
        print(file=sys.stderr)
    counts = {
        t: dict(load.query(f"SELECT status, count(*) FROM {t} GROUP BY status ORDER BY status"))  # noqa: S608
        for t in ("inbox", "outbox")
    }
    visible = load.finish(["inbox", "outbox"])
    return {"seconds": time.perf_counter() - started, "counts": counts, "all_visible": visible}


def bench_config(db: Database, workdir: Path) -> Config:
    toml = workdir / "growth.toml"
    toml.write_text("")
    return load_config(
        path=toml,
        env={},
        overrides={
            "storage.url": db.url,
            "var_dir": str(workdir / "var"),
            "secrets_dir": str(workdir / "var" / "secrets"),
        },
    )


def measure_queue(
    db: Database,
    rows: int,
    workdir: Path,
    args: argparse.Namespace,
    only: set[str] | None = None,
    suffix: str = "",
) -> dict[str, Any]:
    """Each of QUEUE_OPS (or of `only`), timed; stored under its name + `suffix`."""
    from plugin.app import create_app

    engine = db.engine
    config = bench_config(db, workdir)
    client = create_app(config).test_client()
    rng = random.Random(12)
    results: dict[str, Any] = {}

    def run(name: str, op: Callable[[], Any], before: Callable[[], Any] | None = None) -> None:
        if only is not None and name not in only:
            return
        name += suffix
        results[name] = timed(op, args.repeat, args.warmup, args.budget, before)
        r = results[name]
        print(
            f"    {name}: {r['median_ms']:.3f} ms (p99 {r['p99_ms']:.3f}, {r['runs']} runs)", file=sys.stderr
        )

    def get(path: str) -> None:
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.get_data(as_text=True)[:300])

    run("GET /metrics", lambda: get("/metrics"))
    run("GET /readyz", lambda: get("/readyz"))
    run("pipeline_stats() (/metrics, outbox)", lambda: pipeline_stats(engine))
    run("pipeline_stats(totals=True)", lambda: pipeline_stats(engine, totals=True))

    worker = Worker(engine, [], owner="bench-worker")
    claimed: list[str] = []

    def claim() -> None:
        claimed[:] = worker.claim_keys(datetime.now(UTC))
        assert len(claimed) == 200, len(claimed)

    def give_back() -> None:
        if claimed:
            worker.release(claimed)
            claimed.clear()

    run("claim: worker, 200 keys", claim, give_back)
    give_back()
    dispatcher = Dispatcher(engine, None, owner="bench-dispatcher")  # type: ignore[arg-type]  # _claim never writes

    def dispatch_claim() -> None:
        assert len(dispatcher._claim(datetime.now(UTC))) >= OUTBOX_PENDING * 3 // 4

    run("claim: dispatcher, due writes", dispatch_claim)

    def quiet(fn: Callable[[], int]) -> Callable[[], None]:
        def call() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert fn() == 0

        return call

    run("outbox command", quiet(lambda: run_outbox(argparse.Namespace(json=False, limit=20), config)))

    def listings() -> None:
        with engine.connect() as conn:
            for status in ("pending", "sent", "dead"):
                assert len(_rows(conn, status, 20)) == 20

    run("outbox listings alone (20 each)", listings)
    run(
        "deadletters list",
        quiet(
            lambda: run_deadletters(argparse.Namespace(action="list", json=False, ids=[], all=False), config)
        ),
    )

    sink: Any = SqliteSink(str(db.path)) if db.path is not None else _EngineSink(engine)
    prepared: list[Any] = []

    def pick_existing() -> None:
        with engine.connect() as conn:
            row = conn.execute(sa.select(inbox).where(inbox.c.id == rng.randint(1, rows))).one()
        prepared[:] = prepare_rows(engine.dialect.name, [row_to_event(row)], datetime.now(UTC))

    def redeliver() -> None:
        assert sink.write(prepared) == set()

    run("dedupe: re-delivered event", redeliver, pick_existing)
    fresh = iter(range(10**9))

    def pick_new() -> None:
        i = next(fresh)
        event = Event(
            source="salesforce.events",
            delivery_id=f"msg_bench_new_{i}",
            kind="record.changed",
            occurred_at=datetime.now(UTC),
            object="Opportunity",
            record_id=f"006BENCH{i:010d}",
            actor="005000000000042AAK",
            data={"org_id": "00D5g000004ExAmPLE", "fields": {"Amount": i}},
            sender="00D5g000004ExAmPLE",
            raw_digest="ab" * 32,
        )
        prepared[:] = prepare_rows(engine.dialect.name, [event], datetime.now(UTC))

    def store_new() -> None:
        assert len(sink.write(prepared)) == 1

    run("reference: new event stored", store_new, pick_new)
    return results


# -- the provenance log ---------------------------------------------------------------------------


def statement_rows_sqlite(first: int, count: int) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    recorded = NOW.replace(tzinfo=None).isoformat(" ", "microseconds")
    rows, leaves = [], []
    for n in range(first, first + count):
        env = envelope(n)
        leaf = merkle.leaf_hash(env.encode())
        leaves.append(leaf)
        digest = hashlib.sha256(str(n).encode()).hexdigest()
        rows.append(("citation", "Bench", f"r{n}", digest, env, recorded, n, leaf.hex()))
    return rows, leaves


def grow_log(db: Database, size: int, target: int) -> float:
    """Leaves size..target-1 and every perfect subtree they complete, written directly."""
    started = time.perf_counter()
    load = Loader(db)
    with load.without_indexes("provenance_statements"):
        if load.pg:
            # The envelope and digest exactly as bench/provenance_log.py (and envelope()) makes them.
            for lo in range(size, target, CHUNK):
                hi = min(target, lo + CHUNK) - 1
                load.run(
                    "INSERT INTO provenance_statements "
                    "(kind, object, record_id, digest, envelope, recorded_at, "
                    "log_index, leaf_hash) SELECT 'citation', 'Bench', 'r' || n::text, "
                    "encode(sha256(convert_to(n::text, 'UTF8')), 'hex'), e, %s, n, "
                    "encode(sha256('\\x00'::bytea || convert_to(e, 'UTF8')), 'hex') FROM ("
                    'SELECT n, \'{"payload": "\' '
                    "|| repeat(encode(sha512(convert_to(n::text, 'UTF8')), 'hex'), 6) "
                    '|| \'", "payloadType": "application/vnd.in-toto+json", "n": \' || n::text || \'}\' AS e '
                    "FROM generate_series(%s::bigint, %s::bigint) AS s(n)) AS g",
                    (NOW, lo, hi),
                )
                print(f"    statements: {hi + 1:,}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
        else:
            with db.engine.connect() as conn:
                right = merkle.range_nodes(0, size) if size else []
                found = StoredTree(conn).hashes(right)
                frontier = [(node, found[node]) for node in right]
            chunk = 100_000
            for lo in range(size, target, chunk):
                count = min(chunk, target - lo)
                rows, leaves = statement_rows_sqlite(lo, count)
                frontier, completed = merkle.append_leaves(frontier, lo, leaves)
                load.many(
                    "INSERT INTO provenance_statements "
                    "(kind, object, record_id, digest, envelope, recorded_at, "
                    "log_index, leaf_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                load.many(
                    "INSERT INTO provenance_tree (level, idx, hash) VALUES (?, ?, ?)",
                    [(level, index, h) for (level, index), h in completed],
                )
                print(f"    statements: {lo + count:,}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
    if load.pg:  # the perfect subtrees, level by level: parents [old >> L, new >> L) are new
        level = 1
        while target >> level:
            p0, p1 = size >> level, target >> level
            if p1 > p0:
                if level == 1:
                    source = (
                        "SELECT log_index / 2 AS p, "
                        "sha256('\\x01'::bytea || string_agg(decode(leaf_hash, 'hex'), "
                        "''::bytea ORDER BY log_index)) AS h FROM provenance_statements "
                        "WHERE log_index >= %s AND log_index < %s GROUP BY log_index / 2"
                    )
                    params: tuple[Any, ...] = (2 * p0, 2 * p1)
                else:
                    source = (
                        "SELECT idx / 2 AS p, "
                        "sha256('\\x01'::bytea || string_agg(hash, ''::bytea ORDER BY idx)) AS h "
                        "FROM provenance_tree WHERE level = %s AND idx >= %s AND idx < %s GROUP BY idx / 2"
                    )
                    params = (level - 1, 2 * p0, 2 * p1)
                insert = "INSERT INTO provenance_tree (level, idx, hash) "
                load.run(insert + f"SELECT {level}, p, h FROM ({source}) AS t", params)  # noqa: S608
            level += 1
    visible = load.finish(["provenance_statements", "provenance_tree"])
    if visible:
        print(f"    all-visible: {visible}", file=sys.stderr)
    return time.perf_counter() - started


def validate_log(db: Database, size: int, key: SigningKey, rng: random.Random) -> dict[str, Any]:
    """Stored tree == every leaf folded again; sampled leaves == their envelopes; proofs verify.
    Then a signed checkpoint of `size`, as the sequencer would have stored."""
    started = time.perf_counter()
    old = rng.randrange(1, size)
    stack: list[tuple[int, bytes]] = []  # (level, hash), largest first: the right edge
    old_root = b""
    count = 0
    with db.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=50_000).exec_driver_sql(
            "SELECT leaf_hash FROM provenance_statements WHERE log_index IS NOT NULL ORDER BY log_index"
        )
        for (text,) in result:
            node = (0, bytes.fromhex(text))
            while stack and stack[-1][0] == node[0]:
                level, left = stack.pop()
                node = (level + 1, merkle.node_hash(left, node[1]))
            stack.append(node)
            count += 1
            if count == old:
                old_root = merkle.fold([h for _, h in stack])
        assert count == size, f"{count} leaves stored, {size} expected"
        root = merkle.fold([h for _, h in stack])
        assert root_at(conn, size) == root, "stored root differs from the leaves folded again"
        for n in [rng.randrange(size) for _ in range(50)] + [0, size - 1]:
            env, stored = conn.execute(
                sa.select(provenance_statements.c.envelope, provenance_statements.c.leaf_hash).where(
                    provenance_statements.c.log_index == n
                )
            ).one()
            assert env == envelope(n) and stored == merkle.leaf_hash(env.encode()).hex(), f"leaf {n}"
        index = rng.randrange(size)
        leaf = bytes.fromhex(
            conn.execute(
                sa.select(provenance_statements.c.leaf_hash).where(provenance_statements.c.log_index == index)
            ).scalar_one()
        )
        proof = [bytes.fromhex(h) for h in proofs(conn, [index], size)[index]["hashes"]]
        assert merkle.verify_inclusion(index, size, leaf, proof, root), "inclusion proof does not verify"
        assert merkle.verify_consistency(old, size, consistency(conn, old, size), old_root, root), (
            "consistency proof does not verify"
        )
    with db.engine.begin() as conn:
        conn.execute(
            provenance_checkpoints.insert().values(
                tree_size=size,
                root_hash=root.hex(),
                note=sign_checkpoint(Checkpoint(ORIGIN, size, root), key),
                created_at=NOW,
            )
        )
    return {
        "seconds": time.perf_counter() - started,
        "root": root.hex(),
        "inclusion_index": index,
        "old": old,
    }


def measure_log(db: Database, key: SigningKey, size: int, args: argparse.Namespace) -> dict[str, Any]:
    engine = db.engine
    rng = random.Random(6962)
    state = {"size": size}
    results: dict[str, Any] = {}
    stored: list[float] = []

    def before_append() -> None:  # the statement stored as the API stores a citation: timed apart
        started = time.perf_counter()
        add(engine, state["size"], 1)
        stored.append((time.perf_counter() - started) * 1000)

    def append() -> None:
        state["size"] = integrate(engine, key, ORIGIN, NOW).tree_size

    results["append"] = timed(append, args.repeat, args.warmup, args.budget, before_append)
    results["reference: one row inserted and committed"] = {
        "median_ms": statistics.median(stored),
        "p99_ms": percentile(stored, 0.99),
        "min_ms": min(stored),
        "runs": len(stored),
    }
    n = state["size"]
    with engine.connect() as conn:
        results["root"] = timed(lambda: root_at(conn, n), args.repeat, args.warmup, args.budget)
        results["inclusion proof"] = timed(
            lambda: proofs(conn, [rng.randrange(n)], n), args.repeat, args.warmup, args.budget
        )
        results["consistency proof"] = timed(
            lambda: consistency(conn, rng.randrange(1, n), n), args.repeat, args.warmup, args.budget
        )
    for name, r in results.items():
        print(
            f"    {name}: {r['median_ms']:.3f} ms (p99 {r['p99_ms']:.3f}, {r['runs']} runs)", file=sys.stderr
        )
    return {"size": n, "ops": results}


# -- report -------------------------------------------------------------------------------------------


def verdict(r: dict[str, Any], target: float | None) -> str:
    if target is None:
        return ""
    med, p99 = r["median_ms"], r["p99_ms"]
    if p99 <= target:
        return "met"
    if med <= target:
        return f"median met; p99 over by {p99 - target:.1f} ms (x{p99 / target:.2f})"
    return f"**missed**: median x{med / target:.1f} the target"


def table(
    title: str, sizes: list[str], rows: list[dict[str, Any]], ops: tuple[tuple[str, float | None], ...]
) -> str:
    out = [f"\n{title}\n"]
    out.append(
        "| operation | "
        + " | ".join(f"{s}: median (p99) ms" for s in sizes)
        + " | ratio | target | at the larger size |"
    )
    out.append("| --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: | --- |")
    for name, target in ops:
        cells = [f"{r[name]['median_ms']:.3f} ({r[name]['p99_ms']:.3f})" for r in rows]
        ratio = rows[-1][name]["median_ms"] / rows[0][name]["median_ms"]
        runs = {r[name]["runs"] for r in rows}
        note = (
            ""
            if runs == {rows[0][name]["runs"]} and rows[0][name]["runs"] >= 20
            else f" ({'/'.join(str(x) for x in sorted(runs))} runs)"
        )
        out.append(
            f"| {name}{note} | "
            + " | ".join(cells)
            + f" | {ratio:.2f} | {'' if target is None else f'<= {target:g} ms'}"
            + f" | {verdict(rows[-1][name], target)} |"
        )
    return "\n".join(out)


def human(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return f"{n:,}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--part", choices=["queue", "log", "both"], default="both")
    ap.add_argument("--rows", type=int, default=10_000_000, help="inbox and outbox rows, the large size")
    ap.add_argument("--base-rows", type=int, default=100_000, help="inbox and outbox rows, the baseline")
    ap.add_argument("--leaves", default="1000000,10000000", help="log sizes, ascending")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per operation")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per operation at most (>= 5 runs)")
    ap.add_argument("--dir", help="where SQLite files go (default: a temporary directory under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    ap.add_argument(
        "--compare-without",
        metavar="INDEX",
        help="after the queue's figures, drop this index and time the operations it serves again "
        "(ix_outbox_status: the figures before revision 0011)",
    )
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    leaves = sorted(int(s) for s in args.leaves.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="onrecord-growth-", dir=args.dir))
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    report: dict[str, Any] = {
        "benchmark": "growth",
        "when": datetime.now(UTC).isoformat(),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "args": vars(args),
        "queue": {},
        "log": {},
    }
    tables: list[str] = []
    started = time.perf_counter()
    try:
        for kind in kinds:
            if args.part in ("queue", "both"):
                sizes = []
                for rows in (args.base_rows, args.rows):
                    print(f"{kind}: inbox and outbox of {rows:,} rows", file=sys.stderr)
                    with database(kind, workdir, f"queue{rows}", args.keep) as db:
                        built = fill_queue(db, rows)
                        built["bytes"] = db.size_bytes()
                        print(
                            f"    built in {built['seconds']:.0f} s, {built['bytes'] / 1e9:.2f} GB",
                            file=sys.stderr,
                        )
                        ops = measure_queue(db, rows, workdir, args)
                        if args.compare_without:
                            print(f"    again without {args.compare_without}:", file=sys.stderr)
                            with db.engine.begin() as conn:
                                conn.execute(sa.text(f"DROP INDEX {args.compare_without}"))
                            ops |= measure_queue(
                                db, rows, workdir, args, set(COMPARED), f" (without {args.compare_without})"
                            )
                        sizes.append({"rows": rows, "build": built, "ops": ops})
                report["queue"][kind] = sizes
                tables.append(
                    table(
                        f"{kind}: inbox and outbox of {sizes[0]['rows']:,} "
                        f"and of {sizes[1]['rows']:,} rows each",
                        [f"{human(s['rows'])} rows" for s in sizes],
                        [s["ops"] for s in sizes],
                        QUEUE_OPS
                        + tuple(
                            (f"{name} (without {args.compare_without})", target)
                            for name, target in QUEUE_OPS
                            if args.compare_without and name in COMPARED
                        ),
                    )
                )
            if args.part in ("log", "both"):
                key = SigningKey.generate()
                rng = random.Random(6962)
                sizes = []
                with database(kind, workdir, "log", args.keep) as db:
                    size = 0
                    for target in leaves:
                        print(f"{kind}: log of {target:,} leaves", file=sys.stderr)
                        grown = grow_log(db, size, target)
                        checked = validate_log(db, target, key, rng)
                        print(
                            f"    grown in {grown:.0f} s, validated in {checked['seconds']:.0f} s",
                            file=sys.stderr,
                        )
                        row = measure_log(db, key, target, args)
                        row |= {"grow_seconds": grown, "validation": checked, "bytes": db.size_bytes()}
                        sizes.append(row)
                        size = row["size"]
                report["log"][kind] = sizes
                tables.append(
                    table(
                        f"{kind}: provenance log",
                        [f"{human(s['size'] - s['size'] % 1000)} leaves" for s in sizes],
                        [s["ops"] for s in sizes],
                        LOG_OPS,
                    )
                )
    finally:
        dispose_engines()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    for t in tables:
        print(t)
    print(
        f"\nwhole run {report['seconds']:.0f} s; "
        f"load average at the start {report['machine']['load_average_at_start']}"
    )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"growth-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
