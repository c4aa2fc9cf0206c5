"""Idle passes leave SQLite's write lock alone.

The rules worker and the dispatcher poll every `worker.poll_interval_seconds` and the job runner
every second, in the process beside the inbox writer, whose commits acknowledge senders. A pass
with nothing to do must not queue for the write lock (nor pay a commit's fsync)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import plugin.dispatch
import plugin.leases
import plugin.worker
from plugin import migrate
from plugin.config import Config
from plugin.dispatch import Dispatcher
from plugin.dryrun import DryRunWriter
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.rules import load_rules
from plugin.storage import begin_write, get_engine
from plugin.worker import Worker

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every write transaction the worker, the dispatcher and their leases take."""
    taken: list[str] = []

    @contextmanager
    def counting(e: sa.Engine) -> Iterator[sa.Connection]:
        taken.append("write")
        with begin_write(e) as conn:
            yield conn

    for module in (plugin.worker, plugin.dispatch, plugin.leases):
        monkeypatch.setattr(module, "begin_write", counting)
    return taken


def test_an_idle_rules_pass_takes_no_write_lock(engine: sa.Engine, config: Config, writes: list[str]) -> None:
    w = Worker(engine, load_rules(config))
    assert w.run_once(T0).done == 0
    assert writes == []
    with begin_write(engine) as conn:
        event = Event(
            source="test", delivery_id="d1", kind="user.activity", occurred_at=T0, actor="u1", sender="t"
        )
        insert_events(conn, [event], T0)
    assert w.run_once(T0).done == 1  # with work: claim and store
    assert len(writes) == 2


def test_an_idle_dispatch_pass_takes_no_write_lock(engine: sa.Engine, writes: list[str]) -> None:
    d = Dispatcher(engine, DryRunWriter(engine), owner="d")
    assert d.run_once(T0).calls == 0  # the first pass takes the lease
    del writes[:]
    for seconds in (1, 2, 5, 10):
        assert d.run_once(T0 + timedelta(seconds=seconds)).calls == 0
    assert writes == []


def test_a_due_timer_is_still_fired(engine: sa.Engine, config: Config, writes: list[str]) -> None:
    from plugin.storage import timers

    with begin_write(engine) as conn:
        conn.execute(
            timers.insert().values(
                rule="approvals", ordering_key="k", due_at=T0, data={"x": 1}, origin_event_id=1
            )
        )
    w = Worker(engine, [])
    assert w.fire_timers(T0 - timedelta(seconds=1)) == 0 and writes == []
    assert w.fire_timers(T0) == 1 and writes == ["write"]
