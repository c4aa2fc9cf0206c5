"""Leader signals through the real hooks, inbox and worker (builtin rules), on both databases:
every source event is one fact, however often it is delivered."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask.testing import FlaskClient

from connectors.power_automate.payloads import parse_signals
from connectors.salesforce.ids import to_18
from connectors.salesforce.logins import LoginPoller
from plugin import migrate
from plugin.app import create_app
from plugin.config import Config
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.provenance.api import CITATION_SOURCE
from plugin.provenance.rule import key_store
from plugin.rules import load_rules
from plugin.storage import begin_write, facts, get_engine
from plugin.worker import Worker
from tests.conftest import TEST_SECRET, make_config
from tests.support.events import ORG_ID, USER_ID, change_event, record_id, signed

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=1)
JANE_ID = to_18("0055g00000JaneD")
INTEGRATION_USER = to_18("0055g00000OnRec")
TRAINING = to_18("7015g000000TrnA")
FIXTURES = Path(__file__).resolve().parents[2] / "connectors" / "salesforce" / "fixtures"


def configure(db_url: str, tmp_path: Path) -> Config:
    config = make_config(
        db_url,
        tmp_path,
        **{
            "worker.rules": ["plugin.rules:builtin_rules"],
            "salesforce.integration_user_id": INTEGRATION_USER,
            "leaders.training_campaigns": [TRAINING[:15]],
        },
    )
    key_store(config).create(NOW)
    migrate.upgrade(get_engine(config.storage.url))
    return config


def login() -> list[Event]:
    row = {
        "Id": "0Ya5g00000LgnAa",
        "UserId": JANE_ID,
        "LoginTime": T0.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "LoginType": "Application",
        "Status": "Success",
    }
    return list(LoginPoller(lambda soql: [row], org_id=ORG_ID).run({}, NOW).events)


def training_signal() -> Event:
    body = {"kind": "training", "leader": "jane@contoso.com", "occurred_at": T0.isoformat(), "id": "t-1"}
    [event] = parse_signals(json.dumps(body).encode(), sender="flow").events
    return event


def citation() -> Event:
    return Event(
        source=CITATION_SOURCE,
        delivery_id="c1" * 32,
        kind="citation.made",
        occurred_at=T0,
        object="Opportunity",
        record_id=record_id(1),
        actor="jane@contoso.com",
        data={
            "leader": "jane@contoso.com",
            "field": "Amount",
            "value": 1000,
            "verified": True,
            "citation": "c1" * 32,
        },
    )


def salesforce_events() -> dict[str, Any]:
    """One signed callout batch: a governed change by a person, an attended training, two views."""
    monitoring = [
        json.loads((FIXTURES / f"events__{n}.json").read_text())
        for n in ("report_viewed", "dashboard_viewed")
    ]
    member = change_event(
        2,
        object="CampaignMember",
        occurred_at=T0,
        fields={"CampaignId": TRAINING, "Status": "Attended", "Email": "Jane@Contoso.com"},
    )
    return {
        "events": [change_event(1, occurred_at=T0, fields={"StageName": "Proposal"}), member, *monitoring]
    }


def deliver(config: Config, client: FlaskClient, direct: list[Event]) -> None:
    body, headers = signed(TEST_SECRET, salesforce_events())  # a new webhook-id each time
    resp = client.post("/hooks/salesforce/events", data=body, headers=headers)
    assert resp.status_code == 200, resp.json
    engine = get_engine(config.storage.url)
    with begin_write(engine) as conn:
        insert_events(conn, direct, NOW)
    worker = Worker(engine, load_rules(config))
    while worker.run_once().done:
        pass


def test_each_signal_is_one_fact_however_often_it_is_delivered(db_url: str, tmp_path: Path) -> None:
    config = configure(db_url, tmp_path)
    client = create_app(config).test_client()
    direct = [*login(), training_signal(), citation()]
    deliver(config, client, direct)
    # everything again: the callout re-sent under a new webhook-id, the direct events re-stored,
    # and the governed change relayed once more by an outbound message
    change = salesforce_events()["events"][0]
    outbound = Event(
        source="salesforce.outbound",
        delivery_id="04l-relayed",
        kind="record.changed",
        occurred_at=T0,
        object="Opportunity",
        record_id=change["record"]["Id"],
        actor=USER_ID,
        data={"fields": change["record"]},
    )
    deliver(config, client, [*direct, outbound])
    with get_engine(config.storage.url).connect() as conn:
        rows = conn.execute(
            sa.select(facts.c.kind, facts.c.fact_key, facts.c.person, facts.c.retracted)
        ).all()
    assert sorted((kind, person, retracted) for kind, _, person, retracted in rows) == sorted(
        [
            ("login", JANE_ID, False),
            ("training", "jane@contoso.com", False),  # the Power Automate signal
            ("training", "jane@contoso.com", False),  # the training campaign's member
            ("citation", "jane@contoso.com", False),
            ("report_view", USER_ID, False),
            ("dashboard_view", USER_ID, False),
            ("record_touched", USER_ID, False),
        ]
    )
    keys = {kind: key for kind, key, _, _ in rows}
    assert keys["login"] == "salesforce.logins:0Ya5g00000LgnAa"
    assert keys["report_view"] == "salesforce.events:ReportEvent:a50a4025-84f2-425d-8af9-2c780869f3b5"
    assert keys["citation"] == f"{CITATION_SOURCE}:{'c1' * 32}"
    assert keys["record_touched"].startswith("salesforce.events:msg_")
