"""The `leaders.aggregate` job through the real job runner and database (both): what it writes to
the CRM (through the outbox), only when something changed; a late fact rewrites its own week
only; a champion is announced once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugin.config import Config
from plugin.events import CrmWrite
from plugin.jobs import JobRun, JobRunner, builtin_jobs
from plugin.leaders.job import COUNT_FIELDS, JOB_NAME, KEY_FIELD, OBJECT, leaders_job
from plugin.leaders.periods import parse_period
from plugin.storage import facts, jobs, outbox
from tests.conftest import make_config
from tests.plugin.leaders.world import ANA, BO, CARLA, Act, prepare, store

W46, W47, W48 = (parse_period(f"2026-W{n}", "week") for n in (46, 47, 48))
NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)  # in W48
STORED = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)


def configure(db_url: str, tmp_path: Path, **more: Any) -> Config:
    leaders = {
        "users": [
            {"email": ANA.email, "salesforce_id": ANA.user_id},
            {"email": BO.email},
            {"email": CARLA.email, "name": "Carla D."},
        ],
        "champions_top": 1,
        "champion_threshold": 10.0,
        "champion_clean_periods": 2,
        **more,
    }
    return make_config(db_url, tmp_path, leaders=leaders)


class Org:
    """A database with three leaders (Bo unknown to the directory), the job and a runner."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = prepare(config, [ANA, CARLA])
        self.runner = JobRunner(self.engine, [leaders_job(config, self.engine)], owner="test")
        self.serial = 0

    def fact(self, who: str, kind: str, at: datetime, *, stored: datetime = STORED, n: int = 1) -> None:
        acts = []
        for _ in range(n):
            self.serial += 1
            acts.append(Act(kind, f"t:{self.serial}", who, at, None))
        store(self.engine, acts, updated_at=stored)

    def run(self, now: datetime = NOW) -> JobRun:
        return self.runner.run_now(JOB_NAME, now)

    def outbox(self, target: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(outbox).where(outbox.c.target == target).order_by(outbox.c.id)).all()
            )

    def state(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(jobs.c.state).where(jobs.c.name == JOB_NAME)).scalar()
        return dict(value or {})


@pytest.fixture
def org(db_url: str, tmp_path: Path) -> Org:
    return Org(configure(db_url, tmp_path))


def keys(writes: list[CrmWrite] | Any) -> set[str]:
    return {w.external_id for w in writes}


def test_the_job_upserts_each_leader_period_and_then_only_what_changed(org: Org) -> None:
    org.fact(ANA.email, "training", W47.start + timedelta(days=1), n=2)  # 10 points in W47
    org.fact(ANA.user_id[:15], "login", W48.start + timedelta(days=2), n=3)
    org.fact(BO.email.upper(), "form_approval", W48.start + timedelta(days=1), n=4)  # 12 points in W48

    first = org.run()

    leaders = (ANA.user_id, BO.email, CARLA.user_id)  # keys: the user id, else the e-mail
    assert keys(first.writes) == {f"{who}:{week}" for who in leaders for week in ("2026-W47", "2026-W48")}
    (ana,) = [w for w in first.writes if w.external_id == f"{ANA.user_id}:2026-W48"]
    assert (ana.object, ana.external_id_field) == (OBJECT, KEY_FIELD)
    assert ana.fields == {
        "OnRecord_Leader__c": ANA.user_id,
        "OnRecord_Period__c": "2026-W48",
        "OnRecord_Period_Start__c": "2026-11-23",
        **{name: (3 if kind == "login" else 0) for kind, name in COUNT_FIELDS.items()},
        "OnRecord_Score__c": 3.0,
        "OnRecord_Weights_Version__c": "2026.1",
        "OnRecord_Champion_Candidate__c": False,
    }
    (bo,) = [w for w in first.writes if w.external_id == f"{BO.email}:2026-W48"]
    assert "OnRecord_Leader__c" not in bo.fields  # only an e-mail is known of Bo: no user id
    assert (
        bo.fields["OnRecord_Champion_Candidate__c"] is True and bo.fields["OnRecord_Form_Approvals__c"] == 4
    )
    rows = org.outbox("crm")
    assert len(rows) == 6 and {r.record_key for r in rows} == keys(first.writes)
    assert {(r.operation, r.external_id_field, r.object) for r in rows} == {("upsert", KEY_FIELD, OBJECT)}

    again = org.run(NOW + timedelta(minutes=1))

    assert again.writes == [] and again.notifications == []
    assert len(org.outbox("crm")) == 6
    assert org.state()["written"] == 0


def test_a_late_fact_rewrites_its_own_week_only(org: Org) -> None:
    for week in (W46, W47, W48):
        for who in (ANA.email, BO.email, CARLA.email):
            org.fact(who, "login", week.start + timedelta(hours=5))
    org.run()
    written = len(org.outbox("crm"))

    # A training Ana attended in W46, recorded only now (its updated_at after the watermark).
    org.fact(ANA.email, "training", W46.start + timedelta(days=3), stored=NOW + timedelta(minutes=1))
    late = org.run(NOW + timedelta(minutes=2))

    assert keys(late.writes) == {f"{ANA.user_id}:2026-W46"}
    (write,) = late.writes
    assert write.fields["OnRecord_Trainings__c"] == 1 and write.fields["OnRecord_Score__c"] == 6.0
    assert len(org.outbox("crm")) == written + 1
    assert {"2026-W46", "2026-W48"} <= set(org.state()["recomputed"])  # W47 too: the watermark's overlap

    # Nothing new: the watermark's overlap still reaches the late fact, so W46 is recomputed
    # again, but nothing changed and nothing is written.
    quiet = org.run(NOW + timedelta(minutes=30))
    assert quiet.writes == [] and org.state()["recomputed"] == ["2026-W46", "2026-W48"]


def test_the_champion_is_announced_once(org: Org) -> None:
    org.fact(CARLA.email, "citation", W48.start + timedelta(days=1), n=3)  # 12 points
    first = org.run()

    assert [n.topic for n in first.notifications] == ["leader.champion"]
    assert first.notifications[0].data == {
        "leader": CARLA.email,
        "leader_name": "Carla D.",
        "salesforce_id": CARLA.user_id,  # the directory knows her user id
        "period": "2026-W48",
        "score": 12.0,
        "weights_version": "2026.1",
    }
    # Still the champion with more points, then not (an off-system approval), then again
    # (it is retracted): never announced twice for the week.
    org.fact(CARLA.email, "citation", W48.start + timedelta(days=2), stored=NOW + timedelta(minutes=1))
    assert org.run(NOW + timedelta(minutes=2)).notifications == []
    org.fact(
        CARLA.email, "off_system_approval", W48.start + timedelta(days=2), stored=NOW + timedelta(minutes=3)
    )
    dropped = org.run(NOW + timedelta(minutes=4))
    assert dropped.notifications == []
    assert [w.fields["OnRecord_Champion_Candidate__c"] for w in dropped.writes] == [False]
    with org.engine.begin() as conn:
        conn.execute(
            facts.update()
            .where(facts.c.kind == "off_system_approval")
            .values(retracted=True, updated_at=NOW + timedelta(minutes=5))
        )
    back = org.run(NOW + timedelta(minutes=6))
    assert back.notifications == [] and [w.fields["OnRecord_Champion_Candidate__c"] for w in back.writes] == [
        True
    ]

    rows = org.outbox("notification")
    assert [(r.object, r.payload["leader"]) for r in rows] == [("leader.champion", CARLA.email)]


def test_an_off_system_approval_removes_the_candidate_in_the_weeks_it_reaches(org: Org) -> None:
    for week in (W47, W48):
        org.fact(CARLA.email, "citation", week.start + timedelta(days=1), n=4)  # 16 points
        org.fact(ANA.email, "citation", week.start + timedelta(days=1), n=3)  # 12 points
    first = org.run()
    champions = {w.external_id for w in first.writes if w.fields["OnRecord_Champion_Candidate__c"]}
    assert champions == {f"{CARLA.user_id}:2026-W47", f"{CARLA.user_id}:2026-W48"}

    # Recorded late: Carla approved off-system in W47. With 2 clean weeks required, she is no
    # candidate in W47 or W48; Ana takes the one place in both.
    org.fact(
        CARLA.email, "off_system_approval", W47.start + timedelta(days=4), stored=NOW + timedelta(minutes=1)
    )
    late = org.run(NOW + timedelta(minutes=2))

    flags = {w.external_id: w.fields["OnRecord_Champion_Candidate__c"] for w in late.writes}
    assert flags == {
        f"{CARLA.user_id}:2026-W47": False,
        f"{CARLA.user_id}:2026-W48": False,
        f"{ANA.user_id}:2026-W47": True,
        f"{ANA.user_id}:2026-W48": True,
    }
    announced = {(n.data["leader"], n.data["period"]) for n in late.notifications}
    assert announced == {(ANA.email, "2026-W47"), (ANA.email, "2026-W48")}


def test_the_state_keeps_digests_of_recent_weeks_only(org: Org) -> None:
    old = parse_period("2026-W40", "week")
    org.fact(ANA.email, "login", old.start + timedelta(days=1))
    org.fact(ANA.email, "login", W48.start + timedelta(days=1))

    run = org.run()

    assert f"{ANA.user_id}:2026-W40" in keys(run.writes)  # first run: every week with facts
    kept = {k.rpartition(":")[2] for k in org.state()["digests"]}
    assert kept == {"2026-W48"}  # W45..W48 kept (clean periods 2 + 1 = 3 weeks: W46..W48)
    assert org.state()["watermark"] == STORED.isoformat()


def test_the_job_runs_only_when_leaders_are_configured(db_url: str, tmp_path: Path) -> None:
    none = make_config(db_url, tmp_path)
    assert JOB_NAME not in [j.name for j in builtin_jobs(none)]
    config = configure(db_url, tmp_path, aggregate_seconds=120)
    (job,) = [j for j in builtin_jobs(config) if j.name == JOB_NAME]
    assert job.interval_seconds == 120
    by_role = make_config(db_url, tmp_path, leaders={"roles": ["VP Sales"]})
    assert JOB_NAME in [j.name for j in builtin_jobs(by_role)]
