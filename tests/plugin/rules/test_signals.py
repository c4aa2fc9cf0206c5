"""The leader-signals rule, without a database: each event as its connector produces it, in; the
facts it gives, out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.power_automate.payloads import parse_signals
from connectors.salesforce.ids import to_18
from connectors.salesforce.logins import LoginPoller
from plugin.config import Config, load_config
from plugin.events import Event, Fact
from plugin.provenance.api import CITATION_SOURCE
from plugin.rules import DictState
from plugin.rules.signals import KINDS, fact_key, member_state_key, signals_rule

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
JANE_ID = to_18("0055g00000JaneD")
INTEGRATION_USER = to_18("0055g00000OnRec")
TRAINING = to_18("7015g000000TrnA")  # configured by its 15 characters below
OTHER_CAMPAIGN = to_18("7015g000000OthR")
MEMBER = to_18("00v5g00000MbrAa")
CONTACT = to_18("0035g00000CntCt")
LEAD = to_18("00Q5g00000LeadL")
ORG_ID = to_18("00D5g000004XyZa")


def config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "leaders.training_campaigns": [TRAINING[:15]],
        "salesforce.integration_user_id": INTEGRATION_USER,
    }
    values.update(overrides)
    return load_config(path=None, env={}, overrides=values)


class Run:
    """Applies events to the rule one at a time, like the worker, keeping state and facts."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.rule = signals_rule(cfg or config())
        self.state = DictState()
        self.facts: list[Fact] = []

    def apply(self, *events: Event) -> list[Fact]:
        found: list[Fact] = []
        for event in events:
            assert event.kind in self.rule.kinds
            outcome = self.rule.apply(event, self.state, event.occurred_at + timedelta(seconds=2))
            self.state.values.update(outcome.state)
            found += outcome.facts
        self.facts += found
        return found


def one(events: Iterable[Event], cfg: Config | None = None) -> Fact:
    [fact] = Run(cfg).apply(*events)
    return fact


# -- events as the connectors make them ---------------------------------------------------------


def login(
    login_id: str = "0Ya5g00000LgnAa", user: str = JANE_ID[:15], login_type: str = "Application"
) -> list[Event]:
    """What the LoginHistory poller emits for one LoginHistory row (nothing if it does not count)."""
    row = {
        "Id": login_id,
        "UserId": user,
        "LoginTime": "2026-11-26T09:00:00.000+0000",
        "LoginType": login_type,
        "Application": "Browser",
        "Platform": "Mac OSX",
        "SourceIp": "203.0.113.7",
        "Status": "Success",
    }
    poller = LoginPoller(lambda soql: [row], org_id=ORG_ID, integration_user_id="")
    return list(poller.run({}, T0).events)


def signal(kind: str, signal_id: str = "s-1", leader: str = "Jane@Contoso.com") -> Event:
    """What the Power Automate signals hook makes of a flow's body."""
    body = {"kind": kind, "leader": leader, "occurred_at": "2026-11-26T09:00:00Z", "id": signal_id}
    [event] = parse_signals(json.dumps(body).encode(), sender="flow-token").events
    return event


def api_citation(leader: str = "jane@contoso.com") -> Event:
    """The event `POST /api/citations` stores (its delivery id: the signed citation's digest)."""
    return Event(
        source=CITATION_SOURCE,
        delivery_id="9f" * 32,
        kind="citation.made",
        occurred_at=T0,
        object="Opportunity",
        record_id=to_18("0065g00000AcmeA"),
        actor=leader,
        data={
            "leader": leader,
            "field": "Amount",
            "value": 120000,
            "occasion": "board pack",
            "verified": True,
            "reason": "matches the signed record",
            "citation": "9f" * 32,
        },
        sender="api-token",
    )


def monitored_view(activity: str = "report_view", identifier: str = "0a4779b0") -> Event:
    """A report or dashboard view from Event Monitoring, as the Salesforce events hook makes it."""
    target = {"report_view": {"report_id": to_18("00O5g000004RpTa")}}.get(
        activity, {"dashboard_id": to_18("01Z5g000000DbRd")}
    )
    prefix = "ReportEvent" if activity == "report_view" else "LightningUriEvent"
    return Event(
        source="salesforce.events",
        delivery_id=f"{prefix}:{identifier}",
        kind="user.activity",
        occurred_at=T0,
        actor=JANE_ID,
        data={"activity": activity, "org_id": ORG_ID, "event_identifier": identifier, **target},
        sender="salesforce.events_secret",
    )


def member_change(
    minutes: float = 0,
    status: str = "Attended",
    *,
    campaign: str = TRAINING,
    delivery: str | None = None,
    source: str = "salesforce.events",
    **fields: Any,
) -> Event:
    """A CampaignMember change, as the Salesforce change receivers make it."""
    values = {
        "Id": MEMBER,
        "CampaignId": campaign,
        "Status": status,
        "Email": "Jane@Contoso.com",
        "ContactId": CONTACT,
        "LastModifiedById": JANE_ID,
        **fields,
    }
    return Event(
        source=source,
        delivery_id=delivery or f"msg_{minutes}_{status}",
        kind="record.changed",
        occurred_at=T0 + timedelta(minutes=minutes),
        object="CampaignMember",
        record_id=MEMBER,
        actor=JANE_ID,
        data={"org_id": ORG_ID, "event_id": "evt-1", "fields": {k: v for k, v in values.items() if v}},
    )


# -- each kind: exactly one fact, about the right person, keyed by what produced it -------------


def test_an_interactive_login_is_one_login_fact_about_the_crm_user() -> None:
    fact = one(login())
    assert (fact.kind, fact.person, fact.key) == ("login", JANE_ID, "salesforce.logins:0Ya5g00000LgnAa")
    assert fact.occurred_at == T0 and not fact.retracted
    assert fact.data == {"source": "salesforce.logins", "login_type": "Application", "application": "Browser"}


@pytest.mark.parametrize(
    ("kind", "fact_kind"),
    [
        ("report.viewed", "report_view"),
        ("dashboard.viewed", "dashboard_view"),
        ("training", "training"),
        ("training.attended", "training"),
        ("citation", "citation"),
    ],
)
def test_a_power_automate_signal_is_one_fact_about_the_leaders_email(kind: str, fact_kind: str) -> None:
    fact = one([signal(kind, signal_id="sig-42")])
    assert (fact.kind, fact.person) == (fact_kind, "jane@contoso.com")
    assert fact.key == "power_automate.signals:signal:sig-42"


@pytest.mark.parametrize(
    ("activity", "prefix"), [("report_view", "ReportEvent"), ("dashboard_view", "LightningUriEvent")]
)
def test_an_event_monitoring_view_is_one_fact_about_the_crm_user(activity: str, prefix: str) -> None:
    fact = one([monitored_view(activity, identifier="e-7")])
    assert (fact.kind, fact.person, fact.key) == (activity, JANE_ID, f"salesforce.events:{prefix}:e-7")


def test_a_citation_through_the_api_is_one_fact_about_the_leader() -> None:
    fact = one([api_citation()])
    assert (fact.kind, fact.person, fact.key) == (
        "citation",
        "jane@contoso.com",
        f"onrecord.citations:{'9f' * 32}",
    )
    assert fact.data["field"] == "Amount" and fact.data["verified"] is True


def test_a_training_campaign_member_who_attended_is_one_training_fact_about_the_member() -> None:
    fact = one([member_change()])
    assert (fact.kind, fact.person, fact.key) == ("training", "jane@contoso.com", f"CampaignMember:{MEMBER}")
    assert fact.data == {"source": "campaign_member", "campaign_id": TRAINING, "campaign_member_id": MEMBER}


@pytest.mark.parametrize(
    ("fields", "person"),
    [({"Email": None}, CONTACT), ({"Email": None, "ContactId": None, "LeadId": LEAD[:15]}, LEAD)],
)
def test_a_member_without_an_email_is_named_by_its_contact_or_lead(
    fields: dict[str, Any], person: str
) -> None:
    assert one([member_change(**fields)]).person == person


# -- what is no signal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(replace(monitored_view(), data={"activity": "list_view"}), id="unrelated activity"),
        pytest.param(replace(monitored_view(), data={}), id="activity without a name"),
        pytest.param(replace(login()[0], source="power_automate.signals"), id="login not from the poller"),
        pytest.param(
            replace(login()[0], data={**login()[0].data, "login_type": "Remote Access 2.0"}),
            id="non-interactive login",
        ),
        pytest.param(replace(login()[0], actor=INTEGRATION_USER), id="integration user's login"),
        pytest.param(replace(monitored_view(), actor=INTEGRATION_USER[:15]), id="integration user's view"),
        pytest.param(member_change(campaign=OTHER_CAMPAIGN), id="member of another campaign"),
        pytest.param(member_change(status="Sent"), id="member not attended"),
        pytest.param(member_change(Email=None, ContactId=None), id="member naming nobody"),
        pytest.param(replace(member_change(), object="Opportunity"), id="another object's change"),
        pytest.param(
            replace(signal("training"), actor="jane@" + "d" * 260 + ".com"), id="person too long to store"
        ),
    ],
)
def test_events_that_are_no_signal_give_no_fact(event: Event) -> None:
    assert Run().apply(event) == []


def test_the_poller_never_emits_what_does_not_count() -> None:
    assert login(login_type="Remote Access 2.0") == []  # an API login never reaches the inbox
    assert one(login(login_type="SAML Idp Initiated SSO")).kind == "login"


def test_no_campaign_member_counts_when_no_training_campaign_is_configured() -> None:
    assert Run(config(**{"leaders.training_campaigns": []})).apply(member_change()) == []


# -- once per source event ---------------------------------------------------------------------


def test_the_same_event_delivered_twice_gives_the_same_key() -> None:
    for make in (
        lambda: login(),
        lambda: [signal("citation")],
        lambda: [api_citation()],
        lambda: [monitored_view()],
    ):
        first, again = Run().apply(*make()), Run().apply(*make())
        assert [f.key for f in first] == [f.key for f in again] and len(first) == 1


def test_one_attendance_counts_once_however_many_changes_and_channels_carry_it() -> None:
    run = Run()
    assert len(run.apply(member_change(0))) == 1
    # a later edit of the member, the same change relayed by outbound message, a re-delivery
    assert run.apply(member_change(5, Description="sat at the front")) == []
    assert run.apply(member_change(0, source="salesforce.outbound")) == []
    assert run.apply(member_change(0)) == []
    assert {f.key for f in run.facts} == {f"CampaignMember:{MEMBER}"}


def test_an_attendance_corrected_away_is_retracted_and_a_late_older_change_changes_nothing() -> None:
    run = Run()
    run.apply(member_change(0))
    [retracted] = run.apply(member_change(10, "Responded"))
    assert retracted.retracted and retracted.key == f"CampaignMember:{MEMBER}"
    assert retracted.occurred_at == T0 and retracted.person == "jane@contoso.com"
    assert run.apply(member_change(5, Description="late edit")) == []  # older than the correction
    assert run.state.get(member_state_key(MEMBER))["counted"] is False
    [again] = run.apply(member_change(20))
    assert not again.retracted and again.occurred_at == T0 + timedelta(minutes=20)


def test_a_key_never_outgrows_the_column() -> None:
    long = replace(monitored_view(), delivery_id="ReportEvent:" + "x" * 300)
    [fact] = Run().apply(long)
    assert len(fact.key) <= 255 and fact.key == fact_key("salesforce.events", "ReportEvent:" + "x" * 300)
    assert fact_key("a", "b") == "a:b"


def test_the_rule_listens_to_exactly_the_signal_kinds() -> None:
    assert frozenset({"user.activity", "training.attended", "citation.made", "record.changed"}) == KINDS


def test_the_rule_names_the_state_it_reads_so_the_worker_can_read_a_batch_at_once() -> None:
    rule = signals_rule(config())
    assert rule.state_keys is not None
    assert list(rule.state_keys(member_change())) == [member_state_key(MEMBER)]
    assert list(rule.state_keys(replace(member_change(), record_id=MEMBER[:15]))) == [
        member_state_key(MEMBER)
    ]
    assert list(rule.state_keys(login()[0])) == [] and list(rule.state_keys(signal("citation"))) == []
