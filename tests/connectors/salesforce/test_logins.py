"""The LoginHistory poller: interactive logins only, from a watermark, every page, once each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.salesforce.ids import to_18
from connectors.salesforce.logins import JOB_NAME, LoginPoller, login_poll_job, login_query, poll_logins_now
from plugin.cli import main
from plugin.config import Config
from plugin.jobs import builtin_jobs
from plugin.migrate import upgrade
from plugin.storage import get_engine, inbox
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import cli_environment, connect, overrides
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)


def sf_time(value: dt.datetime) -> str:
    """LoginTime as Salesforce's REST API writes it."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def row(n: int, when: dt.datetime, **over: Any) -> dict[str, Any]:
    values = {
        "Id": f"0Ya5g0000{n:06d}AAA",
        "UserId": "0055g00000AbCdEAAV",
        "LoginTime": sf_time(when),
        "LoginType": "Application",
        "Application": "Browser",
        "Platform": "Mac OSX",
        "SourceIp": "203.0.113.7",
        "Status": "Success",
    }
    values.update(over)
    return values


class FakeOrg:
    """LoginHistory rows, and the SOQL each poll sent."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries: list[str] = []

    def query(self, soql: str) -> Iterator[Mapping[str, Any]]:
        self.queries.append(soql)
        since = dt.datetime.fromisoformat(soql.split("LoginTime >= ")[1].split(" ")[0])
        for r in sorted(self.rows, key=lambda r: r["LoginTime"]):
            if dt.datetime.fromisoformat(r["LoginTime"]) >= since:
                yield r


# --- the poller alone ---


def test_query_asks_for_interactive_login_types_from_the_watermark_minus_overlap() -> None:
    soql = login_query(dt.datetime(2025, 3, 10, 12, 0, 30, 500000, tzinfo=dt.UTC))

    assert soql.startswith("SELECT Id, UserId, LoginTime, LoginType, Application, Platform, SourceIp, Status")
    assert "WHERE LoginTime >= 2025-03-10T12:00:30Z AND LoginType IN ('Application', " in soql
    for excluded in ("Remote Access 2.0", "Other Apex API", "Partner Product", "SysAdmin Switch"):
        assert excluded not in soql
    assert soql.endswith("ORDER BY LoginTime ASC LIMIT 20000")


def test_only_successful_interactive_logins_of_people_become_events() -> None:
    t = NOW - dt.timedelta(minutes=30)
    org = FakeOrg(
        [
            row(1, t),
            row(2, t, LoginType="SAML Idp Initiated SSO"),
            row(3, t, LoginType="Remote Access Client", Application="Salesforce for iOS", Platform="iOS"),
            row(4, t, Status="Invalid Password"),
            row(5, t, LoginType="Remote Access 2.0", Application="OnRecord"),  # an integration
            row(6, t, LoginType="Other Apex API", Application="N/A"),
            row(7, t, UserId=to_18("0055g00000IntEg")),  # the integration user, configured as 15
        ]
    )
    poller = LoginPoller(org.query, org_id="00D5g000004PzQxEAK", integration_user_id="0055g00000IntEg")

    result = poller.run({}, NOW)

    assert [e.delivery_id for e in result.events] == [row(n, t)["Id"] for n in (1, 2, 3)]
    first = result.events[0]
    assert (first.source, first.kind, first.actor) == (
        "salesforce.logins",
        "user.activity",
        "0055g00000AbCdEAAV",
    )
    assert first.occurred_at == t and first.ordering_key == "actor/0055g00000AbCdEAAV"
    assert first.data == {
        "activity": "login",
        "login_type": "Application",
        "application": "Browser",
        "platform": "Mac OSX",
        "source_ip": "203.0.113.7",
    }
    assert first.sender == "00D5g000004PzQxEAK LoginHistory" and len(first.raw_digest) == 64


def test_first_poll_looks_back_a_day_then_goes_on_from_the_watermark() -> None:
    org = FakeOrg([row(1, NOW - dt.timedelta(hours=2)), row(2, NOW - dt.timedelta(days=2))])
    poller = LoginPoller(org.query)

    first = poller.run({}, NOW)
    org.rows.append(row(3, NOW + dt.timedelta(minutes=10)))
    second = poller.run(first.state, NOW + dt.timedelta(minutes=15))

    assert "LoginTime >= 2025-03-09T11:55:00Z" in org.queries[0]  # a day back, minus the overlap
    assert [e.delivery_id for e in first.events] == [row(1, NOW)["Id"]]
    assert first.state["watermark"] == (NOW - dt.timedelta(hours=2)).isoformat()
    assert "LoginTime >= 2025-03-10T09:55:00Z" in org.queries[1]
    assert [e.delivery_id for e in second.events] == [row(3, NOW)["Id"]]


def test_logins_sharing_the_watermarks_second_are_neither_lost_nor_repeated() -> None:
    t = NOW - dt.timedelta(minutes=1)
    org = FakeOrg([row(1, t), row(2, t)])
    poller = LoginPoller(org.query)

    first = poller.run({}, NOW)
    org.rows.append(row(3, t))  # same LoginTime, visible only now
    org.rows.append(row(4, t - dt.timedelta(minutes=2)))  # written late, inside the overlap
    second = poller.run(first.state, NOW)
    third = poller.run(second.state, NOW)

    assert [e.delivery_id for e in first.events] == [row(1, t)["Id"], row(2, t)["Id"]]
    assert sorted(e.delivery_id for e in second.events) == [row(3, t)["Id"], row(4, t)["Id"]]
    assert third.events == []


# --- against the emulator, through the writer's query() ---


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(query_batch_size=4) as emulator:
        connect(emulator, keypair)
        yield emulator
    assert emulator.errors == []


def sf_config(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path, **more: Any) -> Config:
    return make_config(
        f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **overrides(emu, keypair, tmp_path), **more
    )


def stored_logins(url: str) -> list[Any]:
    with get_engine(url).connect() as conn:
        return list(conn.execute(sa.select(inbox).where(inbox.c.source == "salesforce.logins")))


def test_poller_reads_every_page_of_login_history_and_keeps_interactive_logins(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    config = sf_config(emu, keypair, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)
    leader = emu.add_user("ceo@acme.example")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for i in range(10):  # 10 UI logins: three pages of 4
        emu.add_login_history(leader, start + dt.timedelta(minutes=i))
    emu.add_login_history(leader, start, login_type="Remote Access 2.0", application="Data Loader")
    emu.add_login_history(leader, start, status="Invalid Password")
    emu.add_login_history(emu.user_id(), start)  # OnRecord's own user

    result = poll_logins_now(config, engine, owner="test")

    assert len(result.events) == 10
    assert len(stored_logins(config.storage.url)) == 10
    paths = [c.path for c in emu.calls if "/query" in c.path]
    assert len(paths) == 3 and all(p.endswith("/query/") or "/query/01g" in p for p in paths)

    emu.add_login_history(leader, start + dt.timedelta(minutes=9))  # same second as the watermark
    again = poll_logins_now(config, engine, owner="test")

    assert len(again.events) == 1
    assert len(stored_logins(config.storage.url)) == 11


def test_login_poll_job_is_scheduled_when_salesforce_is_configured(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    config = sf_config(emu, keypair, tmp_path, **{"salesforce.poll_logins_interval_seconds": 120})

    (job,) = [j for j in builtin_jobs(config) if j.name == JOB_NAME]

    assert job.interval_seconds == 120
    assert login_poll_job(config).name == JOB_NAME
    unscheduled = sf_config(emu, keypair, tmp_path, **{"salesforce.poll_logins_interval_seconds": 0})
    assert JOB_NAME not in [j.name for j in builtin_jobs(unscheduled)]


def test_poll_logins_command_prints_how_many_logins_it_found(
    emu: SalesforceEmulator,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_environment(monkeypatch, tmp_path, emu, keypair)
    leader = emu.add_user("cfo@acme.example")
    for i in range(3):
        emu.add_login_history(leader, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=i + 1))

    assert main(["poll", "logins"]) == 0
    assert capsys.readouterr().out.startswith("found 3 interactive logins; LoginHistory read up to ")
    assert main(["poll", "logins"]) == 0
    assert capsys.readouterr().out.startswith("found 0 interactive logins")


def test_poll_logins_without_salesforce_says_what_to_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "onrecord.toml").write_text("")
    monkeypatch.setenv("ONRECORD_CONFIG", str(tmp_path / "onrecord.toml"))
    monkeypatch.setenv("ONRECORD_STORAGE__URL", f"sqlite:///{tmp_path}/cli.db")

    assert main(["poll", "logins"]) == 2
    assert "salesforce.client_id" in capsys.readouterr().err
