"""A month of synthetic activity for 5 leaders and 200 staff gives exactly the counts, scores,
trends and champion candidates computed from who did what (both databases), and however the
facts arrive (twice, shuffled, late) nothing changes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from plugin.leaders import aggregate, leader_history, leaders_snapshot, parse_period, resolve_leaders
from plugin.storage import begin_write, facts, is_postgres
from tests.plugin.leaders.world import (
    ANA,
    BO,
    DEV,
    DIRECTORY,
    LEADERS,
    STAFF,
    UPDATED,
    Act,
    expected_weeks,
    month_of_activity,
    prepare,
    store,
    world_config,
)

ACTS = month_of_activity()
EXPECTED = expected_weeks(ACTS)
IN_LAST_WEEK = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)  # Thursday of 2026-W48


def test_the_world_is_what_the_tests_think_it_is() -> None:
    assert len(LEADERS) == 5 and len(STAFF) == 200
    assert sum(1 for a in ACTS if a.owner in {h.n for h in STAFF}) > 1000
    champions = {week: body["champions"] for week, body in EXPECTED.items()}
    # The off-system approvals bite: Bo is never a champion up to W47, Dev not in W47-W48.
    assert all(BO.email not in c for w, c in champions.items() if w <= "2026-W47")
    assert all(DEV.email not in champions[w] for w in ("2026-W47", "2026-W48"))
    assert any(champions.values()) and any(len(c) == 2 for c in champions.values())


def test_a_month_of_activity_gives_exactly_the_expected_signals(db_url: str, tmp_path: Path) -> None:
    config = world_config(db_url, tmp_path)
    engine = prepare(config)
    store(engine, ACTS)

    history = leader_history(engine, config, periods=5, now=IN_LAST_WEEK)

    assert [h["period"] for h in history] == sorted(EXPECTED)
    for snapshot in history:
        assert snapshot == EXPECTED[snapshot["period"]], snapshot["period"]
    assert leaders_snapshot(engine, config, "2026-W46") == EXPECTED["2026-W46"]
    assert leaders_snapshot(engine, config, now=IN_LAST_WEEK) == EXPECTED["2026-W48"]


def test_the_pure_aggregate_agrees_with_the_expectations() -> None:
    config = world_config("sqlite://", Path("/nonexistent"))
    leaders = resolve_leaders(config, DIRECTORY)
    rows = [a.row() for a in ACTS]
    for week, body in EXPECTED.items():
        got = aggregate(parse_period(week, "week"), rows, leaders, DIRECTORY, config.leaders)
        assert got.to_json() == body


def test_who_the_leaders_are() -> None:
    config = world_config("sqlite://", Path("/nonexistent"))
    leaders = resolve_leaders(config, DIRECTORY)
    # The integration user and the flow user are listed and in a role; the retired manager is
    # in a role but inactive; Carla is listed and in a role: one leader.
    assert sorted(leader.name for leader in leaders) == sorted(h.name for h in LEADERS)
    bo = next(leader for leader in leaders if leader.name == "Bo Chen")
    assert (bo.key, bo.email, bo.salesforce_id) == (BO.user_id, BO.email, BO.user_id)


# --- delivered twice, shuffled -------------------------------------------------------------------

SMALL = month_of_activity(seed=7, staff=STAFF[:20])
SMALL_ROWS = [a.row() for a in SMALL]
SMALL_CONFIG = world_config("sqlite://", Path("/nonexistent"))
SMALL_LEADERS = resolve_leaders(SMALL_CONFIG, DIRECTORY)
W47 = parse_period("2026-W47", "week")
BASELINE = aggregate(W47, SMALL_ROWS, SMALL_LEADERS, DIRECTORY, SMALL_CONFIG.leaders)


@settings(max_examples=60, deadline=None)
@given(
    rng=st.randoms(use_true_random=False),
    twice=st.lists(st.booleans(), min_size=len(SMALL_ROWS), max_size=len(SMALL_ROWS)),
    later=st.booleans(),
)
def test_delivering_facts_twice_and_in_any_order_changes_nothing(
    rng: random.Random, twice: list[bool], later: bool
) -> None:
    delivered = list(SMALL_ROWS)
    for row, again in zip(SMALL_ROWS, twice, strict=True):
        if again:  # a re-delivery: the same fact, stored again (maybe later)
            stamp = (row.updated_at or UPDATED) + (timedelta(minutes=5) if later else timedelta(0))
            delivered.append(type(row)(row.kind, row.key, row.person, row.occurred_at, row.retracted, stamp))
    rng.shuffle(delivered)

    got = aggregate(W47, delivered, SMALL_LEADERS, DIRECTORY, SMALL_CONFIG.leaders)

    assert got == BASELINE


def test_the_last_word_on_a_fact_wins_whatever_the_order() -> None:
    act = next(a for a in SMALL if a.owner == ANA.n and not a.retracted and a.occurred_at >= W47.start)
    if act.occurred_at >= W47.end:
        pytest.skip("no fact of Ana in W47 for this seed")
    withdrawn = act.row(UPDATED + timedelta(hours=1))
    withdrawn = type(withdrawn)(act.kind, act.key, act.person, act.occurred_at, True, withdrawn.updated_at)
    for rows in ([*SMALL_ROWS, withdrawn], [withdrawn, *SMALL_ROWS]):
        got = aggregate(W47, rows, SMALL_LEADERS, DIRECTORY, SMALL_CONFIG.leaders)
        ana = next(s for s in got.leaders if s.leader.email == ANA.email)
        before = next(s for s in BASELINE.leaders if s.leader.email == ANA.email)
        assert ana.counts[act.kind] == before.counts[act.kind] - 1


def test_storing_every_fact_again_in_shuffled_order_changes_nothing(db_url: str, tmp_path: Path) -> None:
    config = world_config(db_url, tmp_path)
    engine = prepare(config)
    store(engine, ACTS)
    again = list(ACTS)
    random.Random(3).shuffle(again)
    insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    stmt = insert(facts)
    upsert = stmt.on_conflict_do_update(  # what the worker does with a fact emitted again
        index_elements=["kind", "fact_key"],
        set_={c: stmt.excluded[c] for c in ("person", "occurred_at", "data", "retracted", "updated_at")},
    )
    with begin_write(engine) as conn:
        conn.execute(upsert, [a.db_row(UPDATED + timedelta(hours=1)) for a in again])
        assert conn.execute(sa.select(sa.func.count()).select_from(facts)).scalar() == len(ACTS)

    assert leaders_snapshot(engine, config, "2026-W48") == EXPECTED["2026-W48"]


def test_staff_robots_and_strangers_never_count(db_url: str, tmp_path: Path) -> None:
    config = world_config(db_url, tmp_path)
    engine = prepare(config)
    noise = [a for a in ACTS if a.owner not in {h.n for h in LEADERS}]
    assert {a.kind for a in noise if a.owner is None} == {"login"}
    store(engine, noise)

    snapshot = leaders_snapshot(engine, config, "2026-W47")

    assert [leader["name"] for leader in snapshot["leaders"]] == sorted(h.name for h in LEADERS)
    assert all(set(leader["counts"].values()) == {0} for leader in snapshot["leaders"])
    assert all(leader["score"] == 0.0 and leader["trend"] == 0.0 for leader in snapshot["leaders"])
    assert snapshot["champions"] == []


def test_facts_outside_the_period_do_not_count_in_it(db_url: str, tmp_path: Path) -> None:
    config = world_config(db_url, tmp_path)
    engine = prepare(config)
    w47 = parse_period("2026-W47", "week")
    edges = [
        Act("training", "edge:1", ANA.email, w47.start - timedelta(microseconds=1), ANA.n),  # W46
        Act("training", "edge:2", ANA.email, w47.start, ANA.n),  # W47
        Act("training", "edge:3", ANA.email, w47.end - timedelta(microseconds=1), ANA.n),  # W47
        Act("training", "edge:4", ANA.email, w47.end, ANA.n),  # W48
    ]
    store(engine, edges)

    weeks = {s["period"]: s for s in leader_history(engine, config, periods=3, now=w47.end)}

    ana = {w: next(x for x in s["leaders"] if x["email"] == ANA.email) for w, s in weeks.items()}
    assert {w: a["counts"]["training"] for w, a in ana.items()} == {
        "2026-W46": 1,
        "2026-W47": 2,
        "2026-W48": 1,
    }
    assert (ana["2026-W47"]["score"], ana["2026-W47"]["trend"]) == (10.0, 5.0)
    assert (ana["2026-W48"]["score"], ana["2026-W48"]["trend"]) == (5.0, -5.0)


def test_the_migrations_create_the_indexes_aggregation_reads_by(db_url: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from plugin.storage import metadata

    engine = prepare(world_config(db_url, tmp_path), [])
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("facts")}
    assert [d for d in diff if "facts" in str(d)] == []
    assert {"ix_facts_time", "ix_facts_updated", "ix_facts_kind_time"} <= indexes
