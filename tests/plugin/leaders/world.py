"""A synthetic organisation and its activity, for leader-signal tests.

Five leaders (named three ways: configured users, a role, both), 200 staff, the integration user
and the approval flow's user (both listed as leaders, and in a leaders' role, yet never leaders),
an inactive manager in a leaders' role, and people the directory does not know. Every fact
remembers who really did it (`owner`), whatever identifier it names them by, so tests compute
what to expect from the activity itself, not through the code under test.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connectors.salesforce.ids import to_18
from plugin import migrate
from plugin.config import DEFAULT_WEIGHTS, SIGNAL_KINDS, Config
from plugin.directory import Directory, Person
from plugin.directory_store import replace_people
from plugin.leaders.core import FactRow
from plugin.storage import begin_write, facts, get_engine
from tests.conftest import make_config
from tests.plugin.rules.support import policy

VP = "VP Sales"
REGIONAL = "Regional Director"
UPDATED = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # when the facts were stored (after the month)


@dataclass(frozen=True)
class Human:
    """Someone in the organisation, with every identifier facts may name them by."""

    n: int
    name: str
    email: str
    upn: str
    user_id: str  # 18 characters
    roles: tuple[str, ...] = ()
    active: bool = True

    def person(self) -> Person:
        return Person(
            key=self.user_id,
            name=self.name,
            emails=(self.email, self.upn),
            crm_ids=(self.user_id,),
            roles=self.roles,
            active=self.active,
            user_type="Standard",
        )

    def some_identifier(self, rng: random.Random) -> str:
        """How a connector might name them: e-mail in any case, UPN, 15- or 18-character id."""
        return rng.choice(
            [self.email, self.email.upper(), self.upn, self.user_id, self.user_id[:15], self.user_id.lower()]
        )


def human(n: int, name: str, *, roles: tuple[str, ...] = (), active: bool = True) -> Human:
    local = name.lower().replace(" ", ".")
    return Human(
        n=n,
        name=name,
        email=f"{local}@contoso.com",
        upn=f"{local}@contoso.onmicrosoft.com",
        user_id=to_18(f"0055g{n:010d}"),
        roles=roles,
        active=active,
    )


ANA = human(1, "Ana Ruiz")  # configured by e-mail
BO = human(2, "Bo Chen")  # configured by 15-character user id, with a name
CARLA = human(3, "Carla Diaz", roles=(VP,))  # configured by e-mail, and in a leaders' role
DEV = human(4, "Dev Patel", roles=(VP,))  # the role only
EVE = human(5, "Eve Moreau", roles=(REGIONAL,))  # another role only ("regional director" in config)
LEADERS = (ANA, BO, CARLA, DEV, EVE)
INTEGRATION = human(90, "Integration User", roles=(VP,))
FLOW = human(91, "Approval Flow", roles=(VP,))
RETIRED = human(92, "Old Manager", roles=(VP,), active=False)
STAFF = tuple(
    human(1000 + i, f"Staff Member{i:03d}", roles=("Sales Rep",) if i % 3 else ()) for i in range(200)
)
EVERYONE = (*LEADERS, INTEGRATION, FLOW, RETIRED, *STAFF)
DIRECTORY = Directory(tuple(h.person() for h in EVERYONE))


def leaders_settings() -> dict[str, Any]:
    """[leaders] as the tests configure it (weights: the published defaults)."""
    return {
        "users": [
            {"email": ANA.email},
            {"salesforce_id": BO.user_id[:15], "name": "Bo Chen"},
            {"email": CARLA.email.upper()},
            {"salesforce_id": INTEGRATION.user_id},  # listed, yet never a leader
            {"email": FLOW.upn},  # the flow's user, a status writer: never a leader
        ],
        "roles": [VP, "regional director"],
        "period": "week",
        "champions_top": 2,
        "champion_threshold": 10.0,
        "champion_clean_periods": 4,
    }


def world_config(db_url: str, tmp_path: Path, **more: Any) -> Config:
    """A configuration with the world's leaders, integration user and status writer."""
    values: dict[str, Any] = {
        "leaders": leaders_settings(),
        "salesforce.integration_user_id": INTEGRATION.user_id[:15],
        "governed": [policy(status_writers=[FLOW.user_id]).model_dump()],
    }
    values.update(more)
    return make_config(db_url, tmp_path, **values)


# --- activity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Act:
    """One fact, with who really did it."""

    kind: str
    key: str
    person: str
    occurred_at: datetime
    owner: int | None  # Human.n, None for someone the directory does not know
    retracted: bool = False

    def row(self, updated_at: datetime = UPDATED) -> FactRow:
        return FactRow(self.kind, self.key, self.person, self.occurred_at, self.retracted, updated_at)

    def db_row(self, updated_at: datetime = UPDATED) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fact_key": self.key,
            "person": self.person,
            "occurred_at": self.occurred_at,
            "data": {},
            "retracted": self.retracted,
            "event_id": None,
            "updated_at": updated_at,
        }


def monday(year: int, week: int) -> datetime:
    day = date.fromisocalendar(year, week, 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# The month: ISO weeks 45 to 48 of 2026, and the week before it (for the first week's trend).
WEEKS = [(2026, w) for w in range(44, 49)]
# Off-system approvals leaders gave: (leader, week). Bo's in week 44 keeps him from being a
# champion up to week 47 (4 clean weeks, this one included); Dev's in week 47 for weeks 47-48.
OFF_SYSTEM = [(BO, 44), (DEV, 47)]


@dataclass
class Activity:
    acts: list[Act] = field(default_factory=list)

    def add(self, act: Act) -> None:
        self.acts.append(act)


def month_of_activity(seed: int = 20261126, staff: Sequence[Human] = STAFF) -> list[Act]:
    """About five weeks of facts: leaders busy (and named every way), staff, the integration user
    and the flow user busier still, strangers, some facts retracted."""
    rng = random.Random(seed)
    activity = Activity()
    serial = 0

    def emit(who: Human | None, kind: str, year: int, week: int, *, retracted: bool = False) -> None:
        nonlocal serial
        serial += 1
        at = monday(year, week) + timedelta(seconds=rng.randrange(7 * 86400))
        if who is None:
            person, owner = f"stranger{rng.randrange(50)}@elsewhere.example", None
        else:
            person, owner = who.some_identifier(rng), who.n
        activity.add(Act(kind, f"{kind}:{serial}", person, at, owner, retracted))

    ordinary = [k for k in SIGNAL_KINDS if k != "off_system_approval"]
    for year, week in WEEKS:
        for leader in LEADERS:
            for _ in range(rng.randrange(2, 14)):
                emit(leader, rng.choice(ordinary), year, week, retracted=rng.random() < 0.1)
        for leader, off_week in OFF_SYSTEM:
            if off_week == week:
                emit(leader, "off_system_approval", year, week)
        emit(ANA, "off_system_approval", year, week, retracted=True)  # withdrawn: never counts
        for member in staff:
            for _ in range(rng.randrange(0, 4)):
                emit(member, rng.choice(SIGNAL_KINDS), year, week, retracted=rng.random() < 0.1)
        for robot in (INTEGRATION, FLOW, RETIRED):
            for _ in range(rng.randrange(10, 30)):
                emit(robot, rng.choice(SIGNAL_KINDS), year, week)
        for _ in range(rng.randrange(5, 15)):
            emit(None, "login", year, week)
    return activity.acts


# --- what to expect, from the activity itself -----------------------------------------------------


def week_name(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def expected_weeks(acts: Iterable[Act], weights: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Per week of WEEKS: the snapshot the API must give, computed from who did what."""
    weights = weights or DEFAULT_WEIGHTS
    leader_ns = {h.n: h for h in LEADERS}
    counts: dict[tuple[str, int], Counter[str]] = {}
    for act in acts:
        if act.retracted or act.owner not in leader_ns:
            continue
        counts.setdefault((week_name(act.occurred_at), act.owner), Counter())[act.kind] += 1
    names = [f"{y}-W{w:02d}" for y, w in [(2026, 43), *WEEKS]]

    def score(week: str, leader: Human) -> float:
        got = counts.get((week, leader.n), Counter())
        return round(sum(weights[k] * got[k] for k in SIGNAL_KINDS), 1) + 0.0

    out: dict[str, dict[str, Any]] = {}
    for i, week in enumerate(names[1:], start=1):
        window = names[max(0, i - 3) : i + 1]
        rows = []
        for leader in LEADERS:
            got = counts.get((week, leader.n), Counter())
            rows.append(
                {
                    "email": leader.email,
                    "name": leader.name,
                    "salesforce_id": leader.user_id,
                    "counts": {k: got[k] for k in SIGNAL_KINDS},
                    "score": score(week, leader),
                    "trend": round(score(week, leader) - score(names[i - 1], leader), 1) + 0.0,
                    "champion_candidate": False,
                }
            )
        rows.sort(key=lambda r: (-r["score"], r["name"], r["email"]))
        dirty = {
            leader.email
            for leader in LEADERS
            for w in window
            if counts.get((w, leader.n), Counter())["off_system_approval"]
        }
        eligible = [r for r in rows if r["score"] > 10.0 and r["email"] not in dirty][:2]
        for r in eligible:
            r["champion_candidate"] = True
        out[week] = {
            "period": week,
            "weights_version": "2026.1",
            "leaders": rows,
            "champions": [r["email"] for r in eligible],
        }
    return out


# --- storage -----------------------------------------------------------------------------------


def prepare(config: Config, people: Iterable[Human] = EVERYONE) -> sa.Engine:
    """The schema, and the people as the Salesforce directory job would have stored them."""
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    replace_people(engine, "salesforce", [h.person() for h in people])
    return engine


def store(engine: sa.Engine, acts: Iterable[Act], updated_at: datetime = UPDATED) -> None:
    """Insert facts directly (executemany), as the worker would have stored them."""
    rows = [a.db_row(updated_at) for a in acts]
    if rows:
        with begin_write(engine) as conn:
            conn.execute(facts.insert(), rows)
