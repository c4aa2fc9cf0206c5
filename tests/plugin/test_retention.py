"""storage.retention_days: old done payloads pruned in batches, the evidence and everything else kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.jobs import JobRunner, builtin_jobs
from plugin.retention import JOB_NAME, PRUNED, Retention, retention_job
from plugin.storage import begin_write, get_engine, inbox
from tests.conftest import make_config

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EVIDENCE = ("source", "delivery_id", "kind", "ordering_key", "received_at", "sender", "raw_digest", "status")


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


def add(engine: sa.Engine, name: str, *, days_ago: float, status: str) -> None:
    event = Event(
        source="test",
        delivery_id=name,
        kind="user.activity",
        occurred_at=NOW - timedelta(days=days_ago),
        actor="u1",
        data={"body": name, "nested": {"x": 1}},
        sender="org-1",
        raw_digest="ab" * 32,
    )
    with begin_write(engine) as conn:
        insert_events(conn, [event], NOW - timedelta(days=days_ago))
        conn.execute(inbox.update().where(inbox.c.delivery_id == name).values(status=status))


def rows(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.delivery_id: r for r in conn.execute(sa.select(inbox))}


def seed(engine: sa.Engine) -> None:
    for i in range(7):
        add(engine, f"old-done-{i}", days_ago=40 + i, status="done")
    add(engine, "recent-done", days_ago=5, status="done")
    add(engine, "old-pending", days_ago=50, status="pending")
    add(engine, "old-parked", days_ago=60, status="parked")


def test_old_done_payloads_are_pruned_and_nothing_else_changes(engine: sa.Engine) -> None:
    seed(engine)
    before = rows(engine)
    retention = Retention(30, engine, batch=3, max_batches=10)
    state = retention.run({}, NOW).state
    after = rows(engine)
    assert {k for k, r in after.items() if r.data == PRUNED} == {f"old-done-{i}" for i in range(7)}
    for name in ("recent-done", "old-pending", "old-parked"):
        assert after[name].data == before[name].data == {"body": name, "nested": {"x": 1}}
    for name, row in after.items():
        assert tuple(getattr(row, c) for c in EVIDENCE) == tuple(getattr(before[name], c) for c in EVIDENCE)
        assert row.processed_at == before[name].processed_at

    # A second run finds nothing more to do.
    assert retention._prune_batch(start=None, cutoff=NOW - timedelta(days=30)) == []
    retention.run(state, NOW + timedelta(hours=1))
    assert rows(engine) == after


def test_rows_pruned_before_json_was_written_compact_are_not_pruned_again(engine: sa.Engine) -> None:
    # Earlier versions stored PRUNED as the standard library writes it, with a space.
    add(engine, "pruned-long-ago", days_ago=90, status="done")
    with begin_write(engine) as conn:
        conn.execute(
            sa.text("UPDATE inbox SET data = :d WHERE delivery_id = 'pruned-long-ago'"),
            {"d": '{"pruned": true}'},
        )
    assert rows(engine)["pruned-long-ago"].data == PRUNED
    assert Retention(30, engine, batch=3)._prune_batch(start=None, cutoff=NOW - timedelta(days=30)) == []


def test_a_run_is_bounded_and_the_next_continues(engine: sa.Engine) -> None:
    seed(engine)
    retention = Retention(30, engine, batch=2, max_batches=2)
    state = retention.run({}, NOW).state
    assert sum(r.data == PRUNED for r in rows(engine).values()) == 4  # oldest first, 2 x 2
    retention.run(state, NOW + timedelta(hours=1))
    assert sum(r.data == PRUNED for r in rows(engine).values()) == 7


def test_a_parked_event_done_later_is_still_pruned(engine: sa.Engine) -> None:
    seed(engine)
    retention = Retention(30, engine)
    state = retention.run({}, NOW).state
    with begin_write(engine) as conn:  # retried after the cursor moved on
        conn.execute(inbox.update().where(inbox.c.delivery_id == "old-parked").values(status="done"))
    retention.run(state, NOW + timedelta(hours=1))
    assert rows(engine)["old-parked"].data == PRUNED


def test_the_job_runs_under_the_runner(
    engine: sa.Engine, config: Config, db_url: str, tmp_path: Path
) -> None:
    seed(engine)
    job = retention_job(make_config(db_url, tmp_path, **{"storage.retention_days": 30}), engine)
    assert job.name == JOB_NAME
    JobRunner(engine, [job], owner="w1").run_now(JOB_NAME, NOW)
    assert sum(r.data == PRUNED for r in rows(engine).values()) == 7


def test_the_job_is_registered_only_when_retention_is_set(
    config: Config, db_url: str, tmp_path: Path
) -> None:
    assert config.storage.retention_days == 0
    assert JOB_NAME not in {j.name for j in builtin_jobs(config)}
    kept = make_config(db_url, tmp_path, **{"storage.retention_days": 30})
    assert JOB_NAME in {j.name for j in builtin_jobs(kept)}
