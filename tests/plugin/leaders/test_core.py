"""The pure core: periods, who the leaders are, scores, trends, champion candidates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.api_responses import SignalCounts
from plugin.config import DEFAULT_WEIGHTS, SIGNAL_KINDS
from plugin.directory import Directory, Person
from plugin.leaders import FactRow, PeriodError, aggregate, resolve_leaders
from plugin.leaders.periods import (
    last_periods,
    next_period,
    parse_period,
    period_of,
    periods_between,
    previous_period,
)
from tests.conftest import make_config
from tests.plugin.leaders.world import ANA, BO, CARLA, DEV, EVE, INTEGRATION, human

# --- periods -------------------------------------------------------------------------------------


def test_weeks_are_iso_weeks_from_monday_midnight_utc() -> None:
    w48 = parse_period("2026-W48", "week")
    assert (w48.start, w48.end) == (datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    assert period_of(datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC), "week") == w48
    assert period_of(datetime(2026, 11, 30, tzinfo=UTC), "week").name == "2026-W49"
    # ISO years: 1 January 2027 is a Friday of 2026-W53; 2026 has 53 weeks.
    assert period_of(datetime(2027, 1, 1, 12, tzinfo=UTC), "week").name == "2026-W53"
    assert next_period(parse_period("2026-W53", "week")).name == "2027-W01"
    assert previous_period(parse_period("2027-W01", "week")).name == "2026-W53"
    assert [p.name for p in last_periods(w48, 3)] == ["2026-W46", "2026-W47", "2026-W48"]
    assert len(periods_between(parse_period("2026-W01", "week"), parse_period("2026-W53", "week"))) == 53


def test_days_are_utc_days() -> None:
    day = parse_period("2026-11-26", "day")
    assert (day.start, day.end) == (datetime(2026, 11, 26, tzinfo=UTC), datetime(2026, 11, 27, tzinfo=UTC))
    from zoneinfo import ZoneInfo

    late_in_new_york = datetime(2026, 11, 26, 22, 0, tzinfo=ZoneInfo("America/New_York"))
    assert period_of(late_in_new_york, "day").name == "2026-11-27"
    assert previous_period(parse_period("2026-03-01", "day")).name == "2026-02-28"
    assert [p.name for p in last_periods(day, 2)] == ["2026-11-25", "2026-11-26"]


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("2026-11", "week", "is not an ISO week like 2026-W48"),
        ("2026-W54", "week", "2026 has ISO weeks 01 to 53, not 54"),
        ("2025-W53", "week", "2025 has ISO weeks 01 to 52, not 53"),
        ("2026-W00", "week", "not 00"),
        ("2026-11-26", "week", "counts ISO weeks, not days"),
        ("2026-W48", "day", "counts days, not ISO weeks"),
        ("2026-02-30", "day", "is not a calendar day"),
        ("26-11-26", "day", "is not a day like 2026-11-26"),
        ("", "week", "is not an ISO week"),
    ],
)
def test_a_malformed_period_names_the_problem(name: str, kind: Any, problem: str) -> None:
    with pytest.raises(PeriodError, match=problem):
        parse_period(name, kind)


def test_period_of_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        period_of(datetime(2026, 11, 26), "week")


# --- who the leaders are -------------------------------------------------------------------------


def config(**leaders: Any) -> Any:
    return make_config("sqlite://", Path("/nonexistent"), leaders=leaders)


def test_roles_are_kept_merged_and_round_trip_in_the_directory() -> None:
    crm = Person("005A", "Ana", ("ana@contoso.com",), roles=("VP Sales",))
    conf = Person("ana@contoso.com", "Ana Ruiz", ("ana@contoso.com",), roles=("vp sales", "Board"))
    (merged,) = Directory((crm, conf)).people
    assert merged.roles == ("VP Sales", "Board")  # compared case-insensitively, first spelling kept
    assert Person.from_json(merged.to_json()) == merged
    assert "roles" not in Person("x", "X").to_json()  # stored rows without roles stay as they were


def test_listed_users_and_role_members_are_leaders_once_each() -> None:
    directory = Directory(tuple(h.person() for h in (ANA, BO, CARLA, DEV, EVE)))
    found = resolve_leaders(
        config(
            users=[{"email": CARLA.upn}, {"salesforce_id": CARLA.user_id[:15], "name": "Carla"}],
            roles=["vp sales"],
        ),
        directory,
    )
    assert [(leader.name, leader.email, leader.salesforce_id) for leader in found] == [
        ("Carla", CARLA.upn, CARLA.user_id),  # listed twice, and in the role: one leader
        ("Dev Patel", DEV.email, DEV.user_id),
    ]


def test_a_listed_user_the_directory_does_not_know_is_still_a_leader() -> None:
    (leader,) = resolve_leaders(config(users=[{"email": "New.Boss@Contoso.com"}]), Directory())
    assert (leader.key, leader.name, leader.email, leader.salesforce_id) == (
        "new.boss@contoso.com",
        "new.boss@contoso.com",
        "new.boss@contoso.com",
        "",
    )


def test_the_integration_user_and_status_writers_are_never_leaders() -> None:
    flow = human(91, "Approval Flow", roles=("VP Sales",))
    directory = Directory(tuple(h.person() for h in (ANA, INTEGRATION, flow)))
    from tests.plugin.rules.support import policy

    conf = make_config(
        "sqlite://",
        Path("/nonexistent"),
        leaders={"users": [{"email": ANA.email}, {"email": INTEGRATION.email}], "roles": ["VP Sales"]},
        **{
            "salesforce.integration_user_id": INTEGRATION.user_id,
            "governed": [policy(status_writers=[flow.upn]).model_dump()],
        },
    )
    assert [leader.name for leader in resolve_leaders(conf, directory)] == ["Ana Ruiz"]


# --- scores, trends, champions -------------------------------------------------------------------

W48 = parse_period("2026-W48", "week")


def facts(who: str, kind: str, n: int, at: datetime, *, retracted: bool = False) -> list[FactRow]:
    return [FactRow(kind, f"{who}:{kind}:{at.isoformat()}:{i}", who, at, retracted) for i in range(n)]


def signals(rows: list[FactRow], *people: Any, **settings: Any) -> dict[str, Any]:
    directory = Directory(tuple(h.person() for h in people))
    conf = config(users=[{"email": h.email} for h in people], **settings)
    result = aggregate(W48, rows, resolve_leaders(conf, directory), directory, conf.leaders)
    return result.to_json()


def by_email(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["email"]: row for row in body["leaders"]}


def test_every_kind_is_counted_and_weighed_with_the_published_weights() -> None:
    at = W48.start + timedelta(days=1)
    rows = [f for n, kind in enumerate(SIGNAL_KINDS, start=1) for f in facts(ANA.user_id, kind, n, at)]
    rows += facts(ANA.email, "login", 5, at, retracted=True)

    ana = by_email(signals(rows, ANA))[ANA.email]

    assert ana["counts"] == {kind: n for n, kind in enumerate(SIGNAL_KINDS, start=1)}
    expected = sum(DEFAULT_WEIGHTS[kind] * n for n, kind in enumerate(SIGNAL_KINDS, start=1))
    assert ana["score"] == round(expected, 1) == 1 + 4 + 9 - 40 + 25 + 24 + 3.5 + 4


def test_scores_round_to_a_tenth_and_trend_is_the_change_from_last_period() -> None:
    weights = {**DEFAULT_WEIGHTS, "login": 0.33}
    rows = facts(ANA.email, "login", 3, W48.start) + facts(
        ANA.email, "login", 7, W48.start - timedelta(days=2)
    )
    ana = by_email(signals(rows, ANA, weights=weights))[ANA.email]
    assert (ana["score"], ana["trend"]) == (1.0, -1.3)  # 0.99 -> 1.0; 2.31 -> 2.3


def test_champions_are_the_best_clean_scores_over_the_threshold_ties_by_name() -> None:
    at = W48.start + timedelta(days=2)
    rows = (
        facts(ANA.email, "training", 4, at)  # 20
        + facts(BO.email, "training", 4, at)  # 20, "Bo Chen" after "Ana Ruiz"
        + facts(CARLA.email, "training", 5, at)  # 25, but an off-system approval 3 weeks ago
        + facts(CARLA.email, "off_system_approval", 1, W48.start - timedelta(weeks=3))
        + facts(DEV.email, "login", 10, at)  # 10: not over the threshold
        + facts(EVE.email, "training", 3, at)  # 15
    )
    body = signals(rows, ANA, BO, CARLA, DEV, EVE, champions_top=2, champion_threshold=10.0)
    assert [row["name"] for row in body["leaders"]] == [
        "Carla Diaz",
        "Ana Ruiz",
        "Bo Chen",
        "Eve Moreau",
        "Dev Patel",
    ]
    assert body["champions"] == [ANA.email, BO.email]
    assert [row["champion_candidate"] for row in body["leaders"]] == [False, True, True, False, False]

    # Four weeks back, the off-system approval is out of Carla's last 4 periods.
    older = [
        FactRow(f.kind, f.key, f.person, f.occurred_at - timedelta(weeks=1), f.retracted)
        if f.kind == "off_system_approval"
        else f
        for f in rows
    ]
    assert signals(older, ANA, BO, CARLA, DEV, EVE)["champions"] == [CARLA.email, ANA.email]
    assert signals(rows, ANA, BO, CARLA, DEV, EVE, champions_top=0)["champions"] == []


def test_the_api_schema_lists_every_kind() -> None:
    # GET /api/leaders' counts: one per signal kind, in order, as the response model has them.
    assert list(SignalCounts.model_fields) == list(SIGNAL_KINDS)


# --- a fact is a leader's exactly when the directory says it is the same person ------------------

_FOLKS = (ANA, BO, CARLA, DEV, EVE, INTEGRATION)
_DIRECTORY = Directory(tuple(h.person() for h in _FOLKS))
_LEADERS = resolve_leaders(
    config(
        users=[{"email": ANA.upn}, {"salesforce_id": BO.user_id[:15]}, {"email": "x.y@elsewhere.example"}]
    ),
    _DIRECTORY,
)


def _spellings(h: Any) -> list[str]:
    return [h.email, h.email.upper(), h.upn, h.user_id, h.user_id[:15], h.user_id.lower(), h.user_id.upper()]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sampled_from(
            [s for h in _FOLKS for s in _spellings(h)] + ["X.Y@Elsewhere.example", " ana.ruiz@contoso.com "]
        ),
        st.text(alphabet="0123456789abcdefgABCDEFG5@.", min_size=0, max_size=20),
    )
)
def test_a_fact_is_a_leaders_exactly_when_the_directory_says_same_person(identifier: str) -> None:
    from plugin.leaders.core import LeaderIndex

    expected = next(
        (
            leader.key
            for leader in _LEADERS
            if any(_DIRECTORY.same_person(identifier, ident) for ident in leader.identifiers)
        ),
        None,
    )
    assert LeaderIndex(_LEADERS, _DIRECTORY).leader_of(identifier) == expected
