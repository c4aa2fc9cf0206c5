"""`outbox` and `deadletters`: what is waiting, what went out, what was given up on."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from plugin.cli import print_json
from plugin.config import Config
from plugin.stats import pipeline_stats
from plugin.storage import begin_write, get_engine, inbox, outbox


def _rows(conn: sa.Connection, status: str, limit: int) -> list[dict[str, Any]]:
    cols = [
        outbox.c.id,
        outbox.c.target,
        outbox.c.object,
        outbox.c.record_key,
        outbox.c.operation,
        outbox.c.payload,
        outbox.c.attempts,
        outbox.c.next_attempt_at,
        outbox.c.last_error,
        outbox.c.created_at,
        outbox.c.sent_at,
    ]
    order = outbox.c.id.desc() if status == "sent" else outbox.c.id
    # The ids first, from ix_outbox_status alone, then their rows: asked for whole rows, PostgreSQL
    # walked the primary key through the sent history while a CRM outage's backlog was pending
    # (354 ms at a million rows; 0.16 ms this way, bench/growth.py).
    ids = list(
        conn.execute(
            sa.select(outbox.c.id).where(outbox.c.status == status).order_by(order).limit(limit)
        ).scalars()
    )
    if not ids:
        return []
    stmt = sa.select(*cols).where(outbox.c.id.in_(ids)).order_by(order)
    return [dict(r._mapping) for r in conn.execute(stmt)]


# Sent writes are history: counting them all took 1-2 s at 10 million rows (docs/benchmarks.md,
# "Growth"), so `outbox` counts them only this far and then says "at least".
SENT_COUNTED_UP_TO = 10_000


def _sent(conn: sa.Connection) -> int:
    """Sent writes, counted up to SENT_COUNTED_UP_TO + 1 (a range of ix_outbox_status at most)."""
    some = sa.select(outbox.c.id).where(outbox.c.status == "sent").limit(SENT_COUNTED_UP_TO + 1).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(some)).scalar() or 0)


def run_outbox(args: argparse.Namespace, config: Config) -> int:
    """Counts, then the oldest pending, newest sent and oldest dead rows."""
    engine = get_engine(config.storage.url)
    stats = pipeline_stats(engine)  # pending and dead: ranges of the status index, whatever the history
    with engine.connect() as conn:
        sent = _sent(conn)
        listing = {s: _rows(conn, s, args.limit) for s in ("pending", "sent", "dead")}
    capped = sent > SENT_COUNTED_UP_TO
    counts = {
        "pending": stats.outbox_pending,
        "sent": min(sent, SENT_COUNTED_UP_TO),
        "dead": stats.outbox_dead,
    }
    if args.json:
        print_json({"counts": counts, **({"sent_at_least": True} if capped else {}), **listing})
        return 0
    shown_sent = f"over {SENT_COUNTED_UP_TO:,}" if capped else str(counts["sent"])
    print(f"outbox: {counts['pending']} pending, {shown_sent} sent, {counts['dead']} dead")
    for status, rows in listing.items():
        if rows:
            print(f"\n{status}:")
        for r in rows:
            when = r["sent_at"] if status == "sent" else r["next_attempt_at"]
            # target: the CRM the write goes to ("salesforce", "dataverse"), or "notification"
            line = f"  {r['id']:>8} {r['target']:<12} {r['operation']:<7} {r['object']}/{r['record_key']}"
            line += f" fields={sorted(r['payload'])}"
            line += f" attempts={r['attempts']} {when:%Y-%m-%d %H:%M:%S}"
            if r["last_error"]:
                line += f"\n           error: {r['last_error']}"
            print(line)
    return 0


def run_deadletters(args: argparse.Namespace, config: Config) -> int:
    """`list` or `retry`."""
    engine = get_engine(config.storage.url)
    if args.action == "list":
        return _list(engine, args.json)
    return _retry(engine, args.ids, args.all)


def _list(engine: sa.Engine, as_json: bool) -> int:
    with engine.connect() as conn:
        writes = _rows(conn, "dead", 10_000)
        events = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(
                    inbox.c.id,
                    inbox.c.source,
                    inbox.c.delivery_id,
                    inbox.c.kind,
                    inbox.c.ordering_key,
                    inbox.c.attempts,
                    inbox.c.error,
                    inbox.c.received_at,
                )
                .where(inbox.c.status == "parked")
                .order_by(inbox.c.id)
            )
        ]
    if as_json:
        print_json({"writes": writes, "events": events})
        return 0
    if not writes and not events:
        print("no dead letters")
    for w in writes:
        print(f"write:{w['id']} {w['operation']} {w['object']}/{w['record_key']} attempts={w['attempts']}")
        print(f"    error: {w['last_error']}")
    for e in events:
        print(f"event:{e['id']} {e['source']} {e['kind']} {e['ordering_key']} attempts={e['attempts']}")
        print(f"    error: {e['error']}")
    return 0


def _requeue(conn: sa.Connection, row: Any, now: datetime) -> int:
    """Requeue one dead write without the fields a newer write to the record has set since:
    retrying an old value must never overwrite a newer one in the CRM."""
    newer = conn.execute(
        sa.select(outbox.c.payload).where(
            outbox.c.target == row.target,
            outbox.c.object == row.object,
            outbox.c.record_key == row.record_key,
            outbox.c.status.in_(("pending", "sent")),
            outbox.c.occurred_at > row.occurred_at,
        )
    ).scalars()
    superseded = {name for payload in newer for name in payload}
    keep = {k: v for k, v in row.payload.items() if k not in superseded}
    label = f"write:{row.id} {row.object}/{row.record_key}"
    if row.target == "crm" and not keep:
        print(
            f"{label} stays dead: every field of it was written again since ({', '.join(sorted(superseded))})"
        )
        return 0
    if row.target == "crm" and len(keep) < len(row.payload):
        dropped = sorted(set(row.payload) - set(keep))
        print(f"{label}: not resending {', '.join(dropped)}, written again since")
    else:
        keep = dict(row.payload)
    conn.execute(
        outbox.update()
        .where(outbox.c.id == row.id)
        .values(status="pending", attempts=0, next_attempt_at=now, payload=keep)
    )
    return 1


def _retry(engine: sa.Engine, ids: list[str], everything: bool) -> int:
    if not ids and not everything:
        print("name the dead letters to retry (write:N, event:N) or pass --all")
        return 2
    write_ids: list[int] = []
    event_ids: list[int] = []
    for raw in ids:
        kind, _, number = raw.rpartition(":")
        if kind not in ("", "write", "event") or not number.isdigit():
            print(f"{raw!r} is not a dead letter id (write:N, event:N or N)")
            return 2
        (event_ids if kind == "event" else write_ids).append(int(number))
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        dead = sa.select(outbox).where(outbox.c.status == "dead")
        e = inbox.update().where(inbox.c.status == "parked")
        if not everything:
            dead = dead.where(outbox.c.id.in_(write_ids))
            e = e.where(inbox.c.id.in_(event_ids))
        found = list(conn.execute(dead))
        writes = sum(_requeue(conn, row, now) for row in found)
        events = conn.execute(e.values(status="pending")).rowcount
    print(f"requeued {writes} write(s) and {events} event(s)")
    missing = len(write_ids) + len(event_ids) - len(found) - events
    if not everything and missing:
        print(f"{missing} of the named ids were not dead letters")
        return 1
    return 0
