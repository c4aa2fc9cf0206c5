"""The Dataverse login poller: user access audit rows (action 64, "User Access via Web") from a
watermark, every page, once each; web-services access and OnRecord's own application user never
count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from connectors.dataverse import connector
from connectors.dataverse.logins import (
    FIELDS,
    FIRST_LOOKBACK,
    INTERACTIVE_LOGIN_TYPES,
    JOB_NAME,
    OVERLAP,
    SOURCE,
    LoginPoller,
    login_poll_job,
    login_query,
    poll_logins_now,
)
from plugin import registry
from plugin.config import Config
from plugin.migrate import upgrade
from plugin.storage import get_engine, inbox
from tests.connectors.dataverse.conftest import config_for
from tests.dvemu import DataverseEmulator
from tests.dvemu.people import USER_ACCESS_VIA_WEB_SERVICES, add_access, add_user

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
LEADER = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
APP_USER = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def web_time(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def audit(n: int, when: dt.datetime, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "auditid": f"00000000-0000-4000-8000-{n:012d}",
        "createdon": web_time(when),
        "action": 64,
        "operation": 4,
        "objecttypecode": "systemuser",
        "_objectid_value": LEADER,
        "_userid_value": LEADER,
    }
    values.update(over)
    return values


class FakeAudits:
    """Audit rows, and the query options each poll sent (the filter's `createdon ge` honoured)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries: list[tuple[str, Mapping[str, str]]] = []

    def get_all(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[Mapping[str, Any]]:
        assert params is not None
        self.queries.append((path, params))
        since = params["$filter"].split("createdon ge ")[1].split(" ")[0]
        for r in sorted(self.rows, key=lambda r: r["createdon"]):
            if r["createdon"] >= since:
                yield r


def since_of(params: Mapping[str, str]) -> dt.datetime:
    return dt.datetime.fromisoformat(params["$filter"].split("createdon ge ")[1].split(" ")[0])


# --- pure: the query and the poll --------------------------------------------------------------------


def test_the_query_asks_for_web_access_from_the_watermark_minus_the_overlap() -> None:
    path, params = login_query(NOW - OVERLAP)

    assert path == "audits"
    assert params["$filter"] == "createdon ge 2025-03-10T11:45:00Z and action eq 64"
    assert params["$orderby"] == "createdon asc"
    assert params["$select"].split(",") == list(FIELDS)
    assert "_userid_value" in FIELDS and "auditid" in FIELDS


def test_only_web_access_of_people_becomes_a_login_event() -> None:
    rows = [
        audit(1, NOW - dt.timedelta(minutes=30)),
        audit(2, NOW - dt.timedelta(minutes=29), action=65),  # web services: an API client
        audit(3, NOW - dt.timedelta(minutes=28), _userid_value=APP_USER),  # OnRecord itself
        audit(4, NOW - dt.timedelta(minutes=27), _userid_value=None),
        audit(5, NOW - dt.timedelta(minutes=26), _userid_value=LEADER.upper()),
    ]
    poller = LoginPoller(
        FakeAudits(rows), environment="https://contoso.crm.dynamics.com", application_user_id=APP_USER
    )

    result = poller.run({}, NOW)

    assert [e.delivery_id for e in result.events] == [rows[0]["auditid"], rows[4]["auditid"]]
    event = result.events[0]
    assert event.source == SOURCE == "dataverse.audit"
    assert event.kind == "user.activity"
    assert event.actor == LEADER
    assert result.events[1].actor == LEADER  # lower case whatever Dataverse sent
    assert event.occurred_at == NOW - dt.timedelta(minutes=30)
    assert event.data["activity"] == "login"
    assert event.data["login_type"] == "User Access via Web"
    assert event.data["login_type"] in INTERACTIVE_LOGIN_TYPES
    assert event.sender == "https://contoso.crm.dynamics.com audits"
    assert len(event.raw_digest) == 64


def test_the_first_poll_looks_back_a_day_then_goes_on_from_the_watermark() -> None:
    org = FakeAudits([audit(1, NOW - dt.timedelta(hours=2))])
    poller = LoginPoller(org)

    first = poller.run({}, NOW)
    second = poller.run(first.state, NOW + dt.timedelta(minutes=5))

    assert since_of(org.queries[0][1]) == NOW - FIRST_LOOKBACK - OVERLAP
    assert first.state["watermark"] == (NOW - dt.timedelta(hours=2)).isoformat()
    assert since_of(org.queries[1][1]) == NOW - dt.timedelta(hours=2) - OVERLAP
    assert len(first.events) == 1 and second.events == []


def test_rows_written_late_or_sharing_the_watermark_are_neither_lost_nor_repeated() -> None:
    org = FakeAudits([audit(1, NOW), audit(2, NOW)])
    poller = LoginPoller(org)
    first = poller.run({"watermark": (NOW - dt.timedelta(hours=1)).isoformat()}, NOW)
    # Dataverse writes audit rows a little late: one for the watermark's second, one 10 minutes back
    org.rows += [audit(3, NOW), audit(4, NOW - dt.timedelta(minutes=10))]

    second = poller.run(first.state, NOW + dt.timedelta(minutes=5))

    assert len(first.events) == 2
    assert sorted(e.delivery_id for e in second.events) == [
        audit(3, NOW)["auditid"],
        audit(4, NOW)["auditid"],
    ]
    assert set(second.state["seen"]) == {audit(n, NOW)["auditid"] for n in (1, 2, 3, 4)}


def test_ids_older_than_the_overlap_are_forgotten() -> None:
    old = audit(1, NOW - dt.timedelta(hours=1))
    org = FakeAudits([old, audit(2, NOW)])

    result = LoginPoller(org).run({"watermark": (NOW - dt.timedelta(hours=2)).isoformat()}, NOW)

    assert len(result.events) == 2
    assert set(result.state["seen"]) == {audit(2, NOW)["auditid"]}


def test_a_run_stops_after_its_row_budget_and_the_next_goes_on_from_there() -> None:
    rows = [audit(n, NOW - dt.timedelta(minutes=60 - n)) for n in range(10)]
    org = FakeAudits(rows)
    poller = LoginPoller(org, max_rows=4)
    start = {"watermark": (NOW - dt.timedelta(hours=2)).isoformat()}

    first = poller.run(start, NOW)
    second = poller.run(first.state, NOW)
    third = poller.run(second.state, NOW)

    assert [len(r.events) for r in (first, second, third)] == [4, 4, 2]
    assert first.state["watermark"] == (NOW - dt.timedelta(minutes=57)).isoformat()
    ids = [e.delivery_id for r in (first, second, third) for e in r.events]
    assert ids == [r["auditid"] for r in rows]


def test_the_signals_rule_is_told_which_login_types_count_for_this_source() -> None:
    assert INTERACTIVE_LOGIN_TYPES == ("User Access via Web",)
    assert connector.LOGIN_SOURCE == SOURCE
    assert tuple(connector.INTERACTIVE_LOGIN_TYPES) == INTERACTIVE_LOGIN_TYPES
    assert registry.login_types()[SOURCE] == frozenset(INTERACTIVE_LOGIN_TYPES)
    assert "User Access via Web Services" not in registry.login_types()[SOURCE]


# --- through the emulator ---------------------------------------------------------------------------


def dv_config(dv: DataverseEmulator, tmp_path: Path, **more: Any) -> Config:
    return config_for(dv, f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **more)


def stored_logins(url: str) -> list[Any]:
    with get_engine(url).connect() as conn:
        return list(conn.execute(sa.select(inbox).where(inbox.c.source == SOURCE)))


def test_the_poller_reads_every_page_of_the_audit_table_and_stores_web_logins(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    dv = dataverse
    dv.state.max_page_size = 4
    config = dv_config(dv, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)
    leader = add_user(dv.state, "Carla CEO", domainname="ceo@contoso.com")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for i in range(10):  # ten web accesses: three pages of four
        add_access(dv.state, leader, start + dt.timedelta(minutes=i))
    add_access(dv.state, leader, start, action=USER_ACCESS_VIA_WEB_SERVICES)
    add_access(dv.state, dv.application_user_id, start)  # OnRecord's own application user
    add_access(dv.state, leader, start - dt.timedelta(days=3))  # before the first look-back

    result = poll_logins_now(config, engine, owner="test")

    assert len(result.events) == 10
    assert {e.actor for e in result.events} == {leader}
    assert len(stored_logins(config.storage.url)) == 10
    reads = [c for c in dv.api_calls() if urlsplit(c.path).path.endswith("/audits")]
    assert len(reads) == 3
    query = parse_qs(urlsplit(reads[0].path).query)
    assert query["$filter"][0].endswith(" and action eq 64")
    assert query["$orderby"] == ["createdon asc"]

    add_access(dv.state, leader, start + dt.timedelta(minutes=9))  # the watermark's second, late
    again = poll_logins_now(config, engine, owner="test")

    assert len(again.events) == 1
    assert len(stored_logins(config.storage.url)) == 11


def test_the_job_is_named_and_scheduled_by_the_audit_poll_interval(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    dv = dataverse
    config = dv_config(dv, tmp_path, **{"dataverse.poll_audit_interval_seconds": 120})

    job = login_poll_job(config)

    assert job.name == JOB_NAME == "dataverse.logins"
    assert job.interval_seconds == 120
