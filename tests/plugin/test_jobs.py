"""Scheduled jobs: one runner at a time, state and events stored together, re-run after a crash."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config
from plugin.events import Event
from plugin.jobs import Job, JobRun, JobRunner, load_jobs
from plugin.storage import get_engine, inbox, jobs

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def poller(calls: list[Mapping[str, Any]]) -> Job:
    def run(state: Mapping[str, Any], now: datetime) -> JobRun:
        calls.append(dict(state))
        mark = state.get("mark", 0)
        events = [
            Event(source="poll", delivery_id=f"login-{i}", kind="user.activity", occurred_at=now, actor="u1")
            for i in range(mark, mark + 2)
        ]
        return JobRun(events=events, state={"mark": mark + 2})

    return Job(name="poller", interval_seconds=60, run=run)


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


def delivery_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(inbox.c.delivery_id).order_by(inbox.c.id)).scalars())


def test_a_job_runs_when_due_and_keeps_its_state(engine: sa.Engine) -> None:
    calls: list[Mapping[str, Any]] = []
    runner = JobRunner(engine, [poller(calls)], owner="w1")
    assert runner.run_due(T0) == 1
    assert runner.run_due(T0 + timedelta(seconds=30)) == 0  # not due yet
    assert runner.run_due(T0 + timedelta(seconds=61)) == 1
    assert calls == [{}, {"mark": 2}]
    assert delivery_ids(engine) == ["login-0", "login-1", "login-2", "login-3"]


def test_only_one_runner_runs_a_job_at_a_time(engine: sa.Engine) -> None:
    calls: list[Mapping[str, Any]] = []
    first = JobRunner(engine, [poller(calls)], owner="w1")
    second = JobRunner(engine, [poller(calls)], owner="w2")
    assert first._claim(first.jobs[0], T0, force=False) is not None  # w1 is running it...
    assert second.run_due(T0) == 0  # ...so w2 leaves it alone
    with pytest.raises(RuntimeError, match="running elsewhere"):
        second.run_now("poller", T0)


def test_a_crashed_run_is_retaken_after_its_lease_and_its_events_dedupe(engine: sa.Engine) -> None:
    calls: list[Mapping[str, Any]] = []
    dead = JobRunner(engine, [poller(calls)], owner="dead", lease_seconds=10)
    dead._claim(dead.jobs[0], T0, force=False)  # claimed, then the process died
    alive = JobRunner(engine, [poller(calls)], owner="alive", lease_seconds=10)
    assert alive.run_due(T0 + timedelta(seconds=5)) == 0
    assert alive.run_due(T0 + timedelta(seconds=11)) == 1
    alive.run_now("poller", T0 + timedelta(seconds=12))
    with engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.state).where(jobs.c.name == "poller")).scalar() == {"mark": 4}
    assert len(delivery_ids(engine)) == 4


def test_a_failing_job_keeps_its_state_and_is_retried_sooner(engine: sa.Engine) -> None:
    def broken(state: Mapping[str, Any], now: datetime) -> JobRun:
        raise ConnectionError("Salesforce is down")

    calls: list[Mapping[str, Any]] = []
    runner = JobRunner(engine, [Job("broken", 3600, broken), poller(calls)], owner="w1")
    assert runner.run_due(T0) == 2  # the broken job did not stop the next one
    assert calls == [{}]
    with pytest.raises(ConnectionError):
        runner.run_now("broken", T0 + timedelta(hours=2))
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.name == "broken")).one()
    assert row.state == {} and row.lease_owner is None
    assert row.next_run_at == T0 + timedelta(hours=2, seconds=60)


def test_run_now_names_an_unknown_job(engine: sa.Engine) -> None:
    with pytest.raises(KeyError, match="no job named 'logins'"):
        JobRunner(engine, [], owner="w1").run_now("logins", T0)


def test_builtin_jobs_follow_the_configuration(config: Config) -> None:
    # Governed objects: the provenance log's sequencer; no Salesforce credentials: no login poller.
    assert [j.name for j in load_jobs(config)] == ["provenance.sequencer"]
    ungoverned = config.model_copy(update={"governed": []})
    assert load_jobs(ungoverned) == []


def test_a_jobs_crm_writes_and_notifications_go_to_the_outbox_with_its_state(engine: sa.Engine) -> None:
    from plugin.events import CrmWrite, Notification
    from plugin.storage import outbox

    def aggregate(state: Mapping[str, Any], now: datetime) -> JobRun:
        write = CrmWrite(
            object="OnRecord_Leader_Signal__c",
            fields={"OnRecord_Score__c": 12.5},
            external_id_field="OnRecord_Key__c",
            external_id="005-2026-W48",
        )
        return JobRun(
            state={"runs": state.get("runs", 0) + 1},
            writes=[write],
            notifications=[Notification("leader.champion", {"leader": "dana@contoso.com"})],
        )

    runner = JobRunner(engine, [Job(name="aggregate", interval_seconds=60, run=aggregate)], owner="w1")
    runner.run_due(T0)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbox.c.target, outbox.c.operation, outbox.c.record_key, outbox.c.payload)
        ).all()
        state = conn.execute(sa.select(jobs.c.state).where(jobs.c.name == "aggregate")).scalar()
    assert sorted(map(tuple, rows)) == [
        ("crm", "upsert", "005-2026-W48", {"OnRecord_Score__c": 12.5}),
        ("notification", "notify", "job/aggregate", {"leader": "dana@contoso.com"}),
    ]
    assert state == {"runs": 1}


def test_a_pass_with_nothing_due_takes_no_write_lock(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run_due runs every second beside the inbox writer: it must not queue for the write lock
    # (nor pay a commit) for jobs that are not due.
    import plugin.jobs

    calls: list[Mapping[str, Any]] = []
    runner = JobRunner(
        engine, [poller(calls), Job(name="other", interval_seconds=60, run=poller(calls).run)], owner="w1"
    )
    assert runner.run_due(T0) == 2
    writes: list[str] = []
    real = plugin.jobs.begin_write

    def counting(e: sa.Engine) -> Any:
        writes.append("write")
        return real(e)

    monkeypatch.setattr(plugin.jobs, "begin_write", counting)
    assert runner.run_due(T0 + timedelta(seconds=30)) == 0
    assert writes == []
    assert runner.run_due(T0 + timedelta(seconds=61)) == 2  # due again: claimed and finished
    assert len(writes) == 4
