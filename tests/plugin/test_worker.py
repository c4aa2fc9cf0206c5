"""The rules worker: exactly once in effect, in occurrence order per record, faults parked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config
from plugin.events import Event, Outcome, Timer
from plugin.inbox import insert_events
from plugin.rules import Rule, StateReader, load_rules
from plugin.storage import begin_write, get_engine, inbox, key_leases, outbox, rule_state
from plugin.worker import LeaseLost, Worker
from tests.support.events import record_id

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def event(n: int, *, record: int = 1, at: datetime | None = None, **fields: Any) -> Event:
    return Event(
        source="test",
        delivery_id=f"d{n}",
        kind="record.changed",
        occurred_at=at or T0 + timedelta(seconds=n),
        object="Opportunity",
        record_id=record_id(record),
        actor="0055g00000AbCdEAAV",
        data={"fields": {"Amount": n, **fields}},
        sender="test",
        raw_digest="0" * 64,
    )


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


def store(engine: sa.Engine, *events: Event) -> None:
    with begin_write(engine) as conn:
        insert_events(conn, events, datetime.now(UTC))


def state(engine: sa.Engine, key: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(rule_state.c.value).where(rule_state.c.key == key)).scalar()


def statuses(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(inbox.c.delivery_id, inbox.c.status)).tuples().all())


def worker(engine: sa.Engine, config: Config, **kw: Any) -> Worker:
    return Worker(engine, load_rules(config), **kw)


def test_events_are_applied_once_with_state_and_outbox_in_one_transaction(
    engine: sa.Engine, config: Config
) -> None:
    store(engine, event(1), event(2), event(3, record=2))
    w = worker(engine, config)
    assert w.run_once().done == 3
    assert w.run_once().done == 0  # nothing is applied twice
    assert state(engine, f"count:Opportunity/{record_id(1)}")["deliveries"] == ["d1", "d2"]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.record_key, outbox.c.payload).order_by(outbox.c.id)).all()
    assert [(r.record_key, r.payload["Count__c"]) for r in rows] == [
        (record_id(1), 1),
        (record_id(1), 2),
        (record_id(2), 1),
    ]
    assert set(statuses(engine).values()) == {"done"}


def test_events_of_one_record_apply_in_the_order_they_occurred_not_arrived(
    engine: sa.Engine, config: Config
) -> None:
    store(engine, event(3), event(1), event(2))  # arrived 3, 1, 2
    worker(engine, config).run_once()
    assert state(engine, f"count:Opportunity/{record_id(1)}")["deliveries"] == ["d1", "d2", "d3"]


def test_a_failing_rule_parks_its_event_without_holding_up_others(engine: sa.Engine, config: Config) -> None:
    store(engine, event(1), event(2, Explode__c=True), event(3), event(4, record=2))
    result = worker(engine, config).run_once()
    assert (result.done, result.parked) == (3, 1)
    assert statuses(engine) == {"d1": "done", "d2": "parked", "d3": "done", "d4": "done"}
    with engine.connect() as conn:
        error = conn.execute(sa.select(inbox.c.error).where(inbox.c.delivery_id == "d2")).scalar()
    assert "RuntimeError: this event makes the rule fail" in error


def test_a_key_leased_by_a_live_worker_is_left_alone_until_the_lease_expires(
    engine: sa.Engine, config: Config
) -> None:
    store(engine, event(1))
    dead = worker(engine, config, lease_seconds=30)
    assert dead.claim_keys(datetime.now(UTC)) == [f"Opportunity/{record_id(1)}"]  # then it "dies"
    other = worker(engine, config, lease_seconds=30)
    assert other.run_once().done == 0
    assert other.run_once(datetime.now(UTC) + timedelta(seconds=31)).done == 1
    assert statuses(engine) == {"d1": "done"}


def test_a_worker_whose_lease_was_taken_over_commits_nothing(engine: sa.Engine, config: Config) -> None:
    store(engine, event(1))
    slow = worker(engine, config, lease_seconds=1)
    now = datetime.now(UTC)
    keys = slow.claim_keys(now)
    fast = worker(engine, config, lease_seconds=1)
    assert fast.run_once(now + timedelta(seconds=2)).done == 1
    store(engine, event(2))
    with pytest.raises(LeaseLost):
        slow._process(keys, now)
    assert state(engine, f"count:Opportunity/{record_id(1)}")["deliveries"] == ["d1"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(key_leases)).scalar() == 0


def test_timers_wake_the_rule_that_asked(engine: sa.Engine, config: Config) -> None:
    woken: list[Any] = []

    def ask(ev: Event, st: StateReader, now: datetime) -> Outcome:
        if ev.kind == "timer.fired":
            woken.append((ev.data["why"], ev.ordering_key, ev.occurred_at))
            return Outcome()
        return Outcome(
            timers=[
                Timer(key=ev.ordering_key, due_at=ev.occurred_at + timedelta(hours=1), data={"why": "grace"})
            ]
        )

    def bystander(ev: Event, st: StateReader, now: datetime) -> Outcome:
        assert ev.kind != "timer.fired", "timers go only to the rule that set them"
        return Outcome()

    rules = [
        Rule("asker", frozenset({"record.changed", "timer.fired"}), ask),
        Rule("bystander", frozenset({"record.changed", "timer.fired"}), bystander),
    ]
    w = Worker(engine, rules)
    store(engine, event(1))
    w.run_once()
    assert w.run_once(T0 + timedelta(minutes=30)).done == 0
    w.run_once(T0 + timedelta(hours=2))
    assert woken == [("grace", f"Opportunity/{record_id(1)}", T0 + timedelta(seconds=1, hours=1))]


def test_a_timer_set_after_the_last_one_fired_fires_too(engine: sa.Engine, config: Config) -> None:
    """SQLite gives a new row the id of a deleted one when the table is empty: the second timer's
    event must not be taken for a re-delivery of the first's (an approval left Pending for ever)."""
    woken: list[str] = []

    def ask(ev: Event, st: StateReader, now: datetime) -> Outcome:
        if ev.kind == "timer.fired":
            woken.append(ev.ordering_key)
            return Outcome()
        return Outcome(timers=[Timer(key=ev.ordering_key, due_at=ev.occurred_at + timedelta(minutes=5))])

    w = Worker(engine, [Rule("asker", frozenset({"record.changed", "timer.fired"}), ask)], lease_seconds=1)
    store(engine, event(1))
    w.run_once(T0)
    w.run_once(T0 + timedelta(hours=1))  # the first timer fires; the timers table is empty again
    w.run_once(T0 + timedelta(hours=2))
    store(engine, event(2, record=2, at=T0 + timedelta(hours=2)))
    w.run_once(T0 + timedelta(hours=3))
    w.run_once(T0 + timedelta(hours=4))  # the second timer fires
    w.run_once(T0 + timedelta(hours=5))
    assert woken == [f"Opportunity/{record_id(1)}", f"Opportunity/{record_id(2)}"]


def test_later_rules_see_earlier_rules_state_for_the_same_event(engine: sa.Engine) -> None:
    def first(ev: Event, st: StateReader, now: datetime) -> Outcome:
        return Outcome(state={"shared": (st.get("shared") or 0) + 1})

    def second(ev: Event, st: StateReader, now: datetime) -> Outcome:
        return Outcome(state={"seen": st.get("shared")})

    kinds = frozenset({"record.changed"})
    store(engine, event(1), event(2, record=2))
    Worker(engine, [Rule("first", kinds, first), Rule("second", kinds, second)]).run_once()
    assert state(engine, "shared") == 2 and state(engine, "seen") == 2


def test_load_rules_names_a_bad_entry(config: Config) -> None:
    bad = config.model_copy(update={"worker": config.worker.model_copy(update={"rules": ["plugin.rules"]})})
    with pytest.raises(ValueError, match="module:attribute"):
        load_rules(bad)


def test_rules_run_outside_the_write_lock_and_a_state_changed_meanwhile_is_never_overwritten(
    engine: sa.Engine,
) -> None:
    """The rules decide in a read transaction; a state key another worker changed between that
    and the store makes the pass store nothing, and the next pass decides again on the new state."""
    meddled: list[bool] = []

    def counting(event: Event, state: StateReader, now: datetime) -> Outcome:
        current = state.get("shared:total") or 0
        if not meddled:  # another worker writes the shared key while this one is deciding
            meddled.append(True)
            with begin_write(engine) as conn:  # would deadlock if the pass held the write lock
                conn.execute(rule_state.insert().values(key="shared:total", value=100, updated_at=now))
        return Outcome(state={"shared:total": current + 1})

    rule = Rule("shared", frozenset({"record.changed"}), counting, state_keys=lambda e: ["shared:total"])
    store(engine, event(1))
    w = Worker(engine, [rule])
    with pytest.raises(LeaseLost, match="changed"):
        w.run_once(T0)
    w.release(["Opportunity/" + record_id(1)])
    assert statuses(engine) == {"d1": "pending"} and state(engine, "shared:total") == 100
    assert w.run_once(T0 + timedelta(seconds=1)).done == 1
    assert state(engine, "shared:total") == 101
