"""Pipeline counts for /metrics cost what is pending, not what was ever processed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from plugin import migrate
from plugin.commands.outbox import _rows
from plugin.dispatch import Dispatcher
from plugin.dryrun import DryRunWriter
from plugin.stats import pipeline_stats
from plugin.storage import begin_write, get_engine, inbox, outbox

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_metrics_counts_read_only_the_status_index_ranges_they_need(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path}/stats.db")
    migrate.upgrade(engine)
    row = {
        "source": "s",
        "kind": "record.changed",
        "ordering_key": "k",
        "occurred_at": NOW,
        "received_at": NOW,
        "sender": "x",
        "raw_digest": "0" * 64,
        "data": {},
    }
    with begin_write(engine) as conn:
        conn.execute(inbox.insert(), [{**row, "delivery_id": f"d{i}", "status": "done"} for i in range(3000)])
        conn.execute(inbox.insert(), [{**row, "delivery_id": f"p{i}", "status": "pending"} for i in range(3)])
    stats = pipeline_stats(engine)
    assert (stats.inbox_pending, stats.inbox_parked, stats.inbox_done) == (3, 0, None)
    assert pipeline_stats(engine, totals=True).inbox_done == 3000
    with engine.connect() as conn:
        plan = " ".join(
            str(r[-1])
            for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM inbox WHERE status = 'pending'"
            )
        )
    assert "USING COVERING INDEX" in plan and "SCAN inbox" not in plan.replace("USING", "")


def _statements(engine: sa.Engine, call: Callable[[], object]) -> list[tuple[str, Any]]:
    """The SELECTs on the outbox that `call` sends to the database, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM outbox" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


def _plan(engine: sa.Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        return " | ".join(str(r[-1]) for r in rows)


def test_outbox_listings_read_only_the_rows_they_show(tmp_path: Path) -> None:
    """`outbox` and `deadletters list` walk ix_outbox_status in id order: no sort of every sent row."""
    engine = get_engine(f"sqlite:///{tmp_path}/listings.db")
    migrate.upgrade(engine)
    row = {
        "target": "salesforce",
        "object": "Opportunity",
        "operation": "update",
        "payload": {"Amount": 1},
        "occurred_at": NOW,
        "next_attempt_at": NOW,
        "created_at": NOW,
    }
    with begin_write(engine) as conn:
        conn.execute(
            outbox.insert(),
            [
                {**row, "record_key": f"r{i}", "status": ("pending", "sent", "dead")[i % 3]}
                for i in range(300)
            ],
        )
    with engine.connect() as conn:
        listings = _statements(engine, lambda: [_rows(conn, s, 20) for s in ("pending", "sent", "dead")])
    assert len(listings) == 6  # per status: its ids from the index, then those rows by id
    for statement, parameters in listings[0::2]:
        plan = _plan(engine, statement, parameters)
        assert "USING COVERING INDEX ix_outbox_status" in plan and "TEMP B-TREE" not in plan, plan
    for statement, parameters in listings[1::2]:
        plan = _plan(engine, statement, parameters)
        assert "USING INTEGER PRIMARY KEY" in plan, plan


def test_the_dispatchers_claim_still_reads_only_due_rows(tmp_path: Path) -> None:
    """ix_outbox_status must not take the claim over: it would walk every pending row in backoff."""
    engine = get_engine(f"sqlite:///{tmp_path}/claim.db")
    migrate.upgrade(engine)
    dispatcher = Dispatcher(engine, DryRunWriter(engine), owner="test")
    (statement, parameters), *_ = _statements(engine, lambda: dispatcher._claim(NOW))
    assert "ix_outbox_due" in _plan(engine, statement, parameters)
