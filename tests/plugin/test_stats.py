"""Pipeline counts for /metrics cost what is pending, not what was ever processed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from plugin import migrate
from plugin.stats import pipeline_stats
from plugin.storage import begin_write, get_engine, inbox

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
