"""Salesforce outbound messages: one fixture in, one expected result out."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree
from zeep import exceptions as zeep_exceptions
from zeep.loader import parse_xml

from connectors.salesforce import outbound_schema
from connectors.salesforce.outbound import (
    MAX_BODY_BYTES,
    SOURCE,
    Notification,
    OutboundMessage,
    OutboundRejected,
    OutboundWsdlError,
    ack_response,
    fault_response,
    json_value,
    normalise_org_id,
    parse_outbound,
    preload_wsdls,
    to_events,
)
from plugin.events import Event

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "salesforce" / "fixtures"
OPPORTUNITY_WSDL = FIXTURES / "opportunity_outbound.wsdl"
BUDGET_WSDL = FIXTURES / "budget_request_outbound.wsdl"
BOTH_WSDLS = (OPPORTUNITY_WSDL, BUDGET_WSDL)

ORG = "00D5g000004PzQxEAK"
ACTION = "04k5g000000Tb1QAAS"
ENTERPRISE_URL = "https://acme.my.salesforce.com/services/Soap/c/61.0/00D5g000004PzQx"
PARTNER_URL = "https://acme.my.salesforce.com/services/Soap/u/61.0/00D5g000004PzQx"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def rejection(body: bytes, **kwargs: object) -> OutboundRejected:
    with pytest.raises(OutboundRejected) as caught:
        parse_outbound(body, **kwargs)  # type: ignore[arg-type]
    return caught.value


def envelope(notifications: str, *, header: str | None = None) -> bytes:
    """A message in Salesforce's exact envelope, with the given Notification elements."""
    if header is None:
        header = (
            f"<OrganizationId>{ORG}</OrganizationId><ActionId>{ACTION}</ActionId>"
            f'<SessionId xsi:nil="true"/><EnterpriseUrl>{ENTERPRISE_URL}</EnterpriseUrl>'
            f"<PartnerUrl>{PARTNER_URL}</PartnerUrl>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP11}" xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<soapenv:Body><notifications xmlns="{OUTBOUND}">{header}{notifications}'
        "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def opportunity(i: int, fields: str = "") -> str:
    return (
        f"<Notification><Id>04l5g0000{i:06d}AAA</Id>"
        '<sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>0065g0000{i:06d}AAA</sf:Id>{fields}</sObject></Notification>"
    )


def hundred_notifications(n: int = 100) -> bytes:
    fields = (
        "<sf:Amount>{i}500.0</sf:Amount><sf:IsWon>true</sf:IsWon>"
        "<sf:LastModifiedById>0055g00000AaBbCAAV</sf:LastModifiedById>"
        "<sf:LastModifiedDate>2024-11-26T10:{m:02d}:00.000Z</sf:LastModifiedDate>"
        "<sf:Name>Deal {i}</sf:Name>"
    )
    return envelope("".join(opportunity(i, fields.format(i=i, m=i % 60)) for i in range(n)))


# --- valid messages ---


def test_single_opportunity_is_typed_per_its_wsdl() -> None:
    msg = parse_outbound(fixture("outbound__single_opportunity.xml"), wsdl_paths=[OPPORTUNITY_WSDL])

    assert msg == OutboundMessage(
        organization_id=ORG,
        action_id=ACTION,
        session_id_present=False,
        enterprise_url=ENTERPRISE_URL,
        partner_url=PARTNER_URL,
        notifications=(
            Notification(
                id="04l5g00002kHqsAAAS",
                object_type="Opportunity",
                fields={
                    "Id": "0065g00000KbBElAAN",
                    "AccountId": "0015g00000WluN0AAJ",
                    "Amount": Decimal("120000.0"),
                    "CloseDate": date(2024, 12, 20),
                    "Description": None,
                    "FiscalQuarter": 4,
                    "FiscalYear": 2024,
                    "IsClosed": False,
                    "IsWon": False,
                    "LastModifiedById": "0055g00000AaBbCAAV",
                    "LastModifiedDate": utc(2024, 11, 26, 10, 15, 30),
                    "Name": "Express Logistics SLA",
                    "Probability": Decimal("90.0"),
                    "StageName": "Negotiation/Review",
                    "SystemModstamp": utc(2024, 11, 26, 10, 15, 31),
                },
                typed=True,
            ),
        ),
        parsed_at=msg.parsed_at,
    )
    assert msg.parsed_at.tzinfo is UTC


def test_single_opportunity_becomes_one_record_changed_event() -> None:
    msg = parse_outbound(fixture("outbound__single_opportunity.xml"), wsdl_paths=[OPPORTUNITY_WSDL])

    events = to_events(msg, raw_digest="ab" * 32, sender=ORG)

    assert events == [
        Event(
            source=SOURCE,
            delivery_id="04l5g00002kHqsAAAS",
            kind="record.changed",
            occurred_at=utc(2024, 11, 26, 10, 15, 30),
            object="Opportunity",
            record_id="0065g00000KbBElAAN",
            actor="0055g00000AaBbCAAV",
            data={
                "org_id": ORG,
                "action_id": ACTION,
                "typed": True,
                "fields": {
                    "Id": "0065g00000KbBElAAN",
                    "AccountId": "0015g00000WluN0AAJ",
                    "Amount": "120000.0",
                    "CloseDate": "2024-12-20",
                    "Description": None,
                    "FiscalQuarter": 4,
                    "FiscalYear": 2024,
                    "IsClosed": False,
                    "IsWon": False,
                    "LastModifiedById": "0055g00000AaBbCAAV",
                    "LastModifiedDate": "2024-11-26T10:15:30.000Z",
                    "Name": "Express Logistics SLA",
                    "Probability": "90.0",
                    "StageName": "Negotiation/Review",
                    "SystemModstamp": "2024-11-26T10:15:31.000Z",
                },
            },
            sender=ORG,
            raw_digest="ab" * 32,
        )
    ]
    json.dumps(events[0].data)  # JSON-serialisable as it is


def test_hundred_notifications_are_all_read_in_order() -> None:
    msg = parse_outbound(hundred_notifications(), wsdl_paths=[OPPORTUNITY_WSDL])

    assert len(msg.notifications) == 100
    assert [n.id for n in msg.notifications] == [f"04l5g0000{i:06d}AAA" for i in range(100)]
    assert msg.notifications[42] == Notification(
        id="04l5g0000000042AAA",
        object_type="Opportunity",
        fields={
            "Id": "0065g0000000042AAA",
            "Amount": Decimal("42500.0"),
            "IsWon": True,
            "LastModifiedById": "0055g00000AaBbCAAV",
            "LastModifiedDate": utc(2024, 11, 26, 10, 42),
            "Name": "Deal 42",
        },
        typed=True,
    )
    events = to_events(msg, raw_digest="0" * 64, sender=ORG)
    assert len({e.delivery_id for e in events}) == 100


def test_nil_session_is_absent_and_nil_fields_are_none() -> None:
    msg = parse_outbound(fixture("outbound__nil_session.xml"), wsdl_paths=[OPPORTUNITY_WSDL])

    assert msg.session_id_present is False
    assert [n.fields for n in msg.notifications] == [
        {
            "Id": "0065g00000KbBGnAAN",
            "Amount": None,
            "Name": "Renewal FY25",
            "SystemModstamp": utc(2024, 11, 28, 12, 30),
        },
        {"Id": "0065g00000KbBHoAAN", "StageName": "Prospecting"},
    ]


def test_occurred_at_falls_back_to_system_modstamp_then_to_parse_time() -> None:
    msg = parse_outbound(fixture("outbound__nil_session.xml"), wsdl_paths=[OPPORTUNITY_WSDL])

    first, second = to_events(msg, raw_digest="0" * 64, sender=ORG)

    assert first.occurred_at == utc(2024, 11, 28, 12, 30)  # no LastModifiedDate sent
    assert second.occurred_at == msg.parsed_at  # neither sent
    assert first.actor is None and second.actor is None  # LastModifiedById not selected


def test_session_id_is_noted_but_never_kept() -> None:
    body = fixture("outbound__session_present.xml")
    session_id = "00D5g000004PzQx!AQ4AQFzR8.NotARealSession_q1w2e3r4t5y6u7i8o9p0aLsKdJfHgZmXnCbV"
    assert session_id.encode() in body

    msg = parse_outbound(body, wsdl_paths=[OPPORTUNITY_WSDL])
    events = to_events(msg, raw_digest="0" * 64, sender=ORG)

    assert msg.session_id_present is True
    assert session_id not in repr(msg) and session_id not in repr(events)
    assert "!AQ4AQ" not in json.dumps([e.data for e in events])


def test_custom_object_every_field_type_is_typed_per_its_wsdl() -> None:
    msg = parse_outbound(fixture("outbound__custom_object.xml"), wsdl_paths=BOTH_WSDLS)

    (notification,) = msg.notifications
    assert notification == Notification(
        id="04l5g00002kHqwEAAS",
        object_type="Budget_Request__c",
        fields={
            "Id": "a0X5g00000Tq3RkEAJ",
            "Amount__c": Decimal("1234567.89"),  # currency: xsd:double, kept exact
            "Approved_At__c": datetime(2024, 11, 26, 14, 5, 9, 123000, tzinfo=UTC),
            "Approved__c": True,
            "Cost_Center__c": "EMEA & Marketing",  # picklist: string
            "Headcount__c": 12,
            "Justification__c": None,
            "LastModifiedById": "0055g00000AaBbCAAV",
            "LastModifiedDate": utc(2024, 11, 26, 14, 5, 10),
            "Name": "BR-000042",
            "Opportunity__c": "0065g00000KbBElAAN",  # custom lookup: ent:ID
            "OwnerId": "0055g00000DdEeFAAV",
            "Region__c": "EMEA",  # selected after the WSDL was downloaded: text
            "Start_Date__c": date(2025, 1, 1),
            "Status__c": "Approved",
            "SystemModstamp": utc(2024, 11, 26, 14, 5, 10),
        },
        typed=True,
    )
    (event,) = to_events(msg, raw_digest="0" * 64, sender=ORG)
    assert event.object == "Budget_Request__c" and event.record_id == "a0X5g00000Tq3RkEAJ"
    assert event.data["fields"]["Amount__c"] == "1234567.89"
    assert event.data["fields"]["Approved_At__c"] == "2024-11-26T14:05:09.123Z"
    assert event.data["fields"]["Start_Date__c"] == "2025-01-01"
    json.dumps(event.data)


def test_custom_object_without_its_wsdl_arrives_as_text() -> None:
    msg = parse_outbound(fixture("outbound__custom_object.xml"), wsdl_paths=[OPPORTUNITY_WSDL])

    (notification,) = msg.notifications
    assert notification.typed is False
    assert notification.fields == {
        "Id": "a0X5g00000Tq3RkEAJ",
        "Amount__c": "1234567.89",
        "Approved_At__c": "2024-11-26T14:05:09.123Z",
        "Approved__c": "true",
        "Cost_Center__c": "EMEA & Marketing",
        "Headcount__c": "12",
        "Justification__c": None,
        "LastModifiedById": "0055g00000AaBbCAAV",
        "LastModifiedDate": "2024-11-26T14:05:10.000Z",
        "Name": "BR-000042",
        "Opportunity__c": "0065g00000KbBElAAN",
        "OwnerId": "0055g00000DdEeFAAV",
        "Region__c": "EMEA",
        "Start_Date__c": "2025-01-01",
        "Status__c": "Approved",
        "SystemModstamp": "2024-11-26T14:05:10.000Z",
    }
    (event,) = to_events(msg, raw_digest="0" * 64, sender=ORG)
    assert event.occurred_at == utc(2024, 11, 26, 14, 5, 10)  # still read from the text
    assert event.actor == "0055g00000AaBbCAAV"


def test_typed_values_agree_with_zeeps_own_deserialisation() -> None:
    schema = outbound_schema.load_wsdl(BUDGET_WSDL)
    # zeep's strict parse refuses the whole message for a field its WSDL lacks: drop that one
    body = fixture("outbound__custom_object.xml").replace(b"<sf:Region__c>EMEA</sf:Region__c>", b"")
    root = parse_xml(body, None, settings=outbound_schema.ZEEP_SETTINGS)  # type: ignore[arg-type]
    element = schema.get_element(f"{{{OUTBOUND}}}notifications")
    zeep_sobject = element.parse(root[0][0], schema).Notification[0].sObject  # type: ignore[no-untyped-call]

    ours = parse_outbound(fixture("outbound__custom_object.xml"), wsdl_paths=[BUDGET_WSDL])
    for name, value in ours.notifications[0].fields.items():
        if name == "Region__c":
            continue
        theirs = zeep_sobject[name]
        assert (float(value) if isinstance(value, Decimal) else value) == theirs, name


def test_value_not_of_the_wsdl_type_is_kept_as_text() -> None:
    fields = "<sf:Amount>lots</sf:Amount><sf:FiscalYear>1_000</sf:FiscalYear><sf:IsWon>yes</sf:IsWon>"
    fields += "<sf:Probability>1E999999999</sf:Probability><sf:SystemModstamp>today</sf:SystemModstamp>"
    body = envelope(opportunity(1, fields))

    (notification,) = parse_outbound(body, wsdl_paths=[OPPORTUNITY_WSDL]).notifications

    assert notification.fields == {
        "Id": "0065g0000000001AAA",
        "Amount": "lots",
        "FiscalYear": "1_000",  # int() would take it; xsd:int does not
        "IsWon": "yes",  # zeep alone would read it as False
        "Probability": "1E999999999",
        "SystemModstamp": "today",
    }


def test_fifteen_character_org_id_in_a_message_is_normalised() -> None:
    header = f"<OrganizationId>{ORG[:15]}</OrganizationId><ActionId>{ACTION}</ActionId>"
    msg = parse_outbound(envelope(opportunity(1), header=header))

    assert msg.organization_id == ORG
    assert msg.enterprise_url is None and msg.partner_url is None


# --- org ids ---


def test_fifteen_and_eighteen_character_org_ids_compare_equal() -> None:
    assert normalise_org_id("00D5g000004PzQx") == normalise_org_id("00D5g000004PzQxEAK") == ORG
    assert normalise_org_id("00D000000000062") == "00D000000000062EAA"
    assert normalise_org_id("00D7F00000107Xs") == "00D7F00000107XsUAI"


def test_eighteen_character_org_id_whose_case_was_lost_is_restored() -> None:
    assert normalise_org_id(ORG.lower()) == ORG
    assert normalise_org_id("00d7f00000107xsuai") == "00D7F00000107XsUAI"


@pytest.mark.parametrize(
    "bad",
    [
        "00D5g000004PzQxAAA",  # wrong suffix
        "00D5g000004PzQxEA",  # 17 characters
        "00D5g000004PzQ",  # 14
        "00D5g000004PzQx!AK",  # not alphanumeric
        "0065g00000KbBElAAN",  # a record id, not an org id
        "",
    ],
)
def test_malformed_org_id_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_org_id(bad)


# --- hostile and malformed bodies ---


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("outbound__xxe_file.xml", "dtd_forbidden"),
        ("outbound__xxe_network.xml", "dtd_forbidden"),
        ("outbound__billion_laughs.xml", "dtd_forbidden"),
        ("outbound__external_dtd.xml", "dtd_forbidden"),
        ("outbound__wrong_namespace.xml", "wrong_namespace"),
        ("outbound__not_soap.xml", "not_soap"),
        ("outbound__soap12.xml", "not_soap"),
    ],
)
def test_hostile_fixture_is_rejected_with_its_reason(name: str, reason: str) -> None:
    error = rejection(fixture(name), wsdl_paths=BOTH_WSDLS)

    assert error.reason == reason
    assert "root:" not in error.message  # nothing of /etc/passwd


@pytest.mark.parametrize(
    "name", ["outbound__xxe_file.xml", "outbound__billion_laughs.xml", "outbound__external_dtd.xml"]
)
def test_zeep_settings_alone_also_refuse_the_dtd_fixtures(name: str) -> None:
    with pytest.raises(zeep_exceptions.Error):  # DTDForbidden, or libxml2's amplification limit
        parse_xml(fixture(name), None, settings=outbound_schema.ZEEP_SETTINGS)  # type: ignore[arg-type]


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback TCP port that records any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(b"connected")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join(1)
    server.close()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])  # utf-16 passes the byte scan: lxml refuses
def test_xxe_and_external_dtd_never_reach_the_network(
    listener: tuple[int, list[bytes]], encoding: str
) -> None:
    port, seen = listener
    for name in ("outbound__xxe_network.xml", "outbound__external_dtd.xml"):
        text = fixture(name).decode().replace("127.0.0.1:9/", f"127.0.0.1:{port}/")
        body = text.replace('encoding="UTF-8"', f'encoding="{encoding.upper()}"').encode(encoding)

        assert rejection(body).reason == "dtd_forbidden"
    time.sleep(0.1)
    assert seen == []


def test_entity_reference_is_rejected() -> None:
    assert rejection(b"<a>&xxe;</a>").reason == "entity_forbidden"
    laughs = fixture("outbound__billion_laughs.xml").decode().replace('"UTF-8"', '"UTF-16"')
    assert rejection(laughs.encode("utf-16")).reason in ("dtd_forbidden", "entity_forbidden")


def test_external_dtd_file_is_never_loaded(tmp_path: Path) -> None:
    dtd = tmp_path / "evil.dtd"
    dtd.write_text("this is not a DTD: loading it would fail the parse")
    body = f'<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE a SYSTEM "{dtd.as_uri()}">\n<a/>'

    assert rejection(body.encode("utf-16")).reason == "dtd_forbidden"  # not a parse error: not read


def test_ten_megabyte_body_is_rejected_quickly_without_parsing() -> None:
    body = b"<" + b"x" * (10 * 1024 * 1024)  # would be not_xml if it were parsed
    assert len(body) > MAX_BODY_BYTES

    started = time.perf_counter()
    error = rejection(body)

    assert error.reason == "too_large"
    assert time.perf_counter() - started < 0.05


def test_nesting_deeper_than_32_is_rejected() -> None:
    nested = "<sf:Name>" + "<sf:x>" * 30 + "deep" + "</sf:x>" * 30 + "</sf:Name>"
    assert rejection(envelope(opportunity(1, nested))).reason == "too_deep"
    very_deep = b"<a>" * 100_000 + b"</a>" * 100_000  # past libxml2's own limit too
    assert rejection(very_deep).reason == "too_deep"


@pytest.mark.parametrize("body", [b"", b"   ", b'{"notifications": []}', b"<a><b></a>", b"\xff\xfe\x00"])
def test_non_xml_body_is_rejected(body: bytes) -> None:
    assert rejection(body).reason == "not_xml"


def test_hundred_and_one_notifications_are_too_many() -> None:
    assert rejection(hundred_notifications(101)).reason == "too_many_notifications"
    assert rejection(hundred_notifications(3), max_notifications=2).reason == "too_many_notifications"


def test_message_without_notifications_is_rejected() -> None:
    assert rejection(envelope("")).reason == "no_notifications"


@pytest.mark.parametrize(
    "body",
    [
        envelope(opportunity(1), header=f"<ActionId>{ACTION}</ActionId>"),  # no OrganizationId
        envelope(opportunity(1), header=f"<OrganizationId>{ORG}</OrganizationId>"),  # no ActionId
        envelope(opportunity(1).replace("<Id>04l5g0000000001AAA</Id>", "")),  # no Notification Id
        envelope("<Notification><Id>04l5g0000000001AAA</Id></Notification>"),  # no sObject
        envelope(opportunity(1).replace("<sf:Id>0065g0000000001AAA</sf:Id>", "")),  # no sObject Id
        envelope(opportunity(1).replace(' xsi:type="sf:Opportunity"', "")),  # no sObject type
    ],
)
def test_message_missing_a_required_field_is_rejected(body: bytes) -> None:
    assert rejection(body).reason == "missing_field"


def test_fields_outside_the_sobject_namespace_are_rejected() -> None:
    body = envelope(opportunity(1, '<x:Name xmlns:x="urn:evil">n</x:Name>'))
    assert rejection(body).reason == "wrong_namespace"


def test_field_sent_twice_is_rejected() -> None:
    body = envelope(opportunity(1, "<sf:Name>a</sf:Name><sf:Name>b</sf:Name>"))
    assert rejection(body).reason == "duplicate_field"


def test_soap_body_with_something_else_is_rejected() -> None:
    body = fixture("outbound__single_opportunity.xml").replace(b"<notifications ", b"<other ")
    body = body.replace(b"</notifications>", b"</other>")
    assert rejection(body).reason == "unexpected_element"


# --- WSDLs ---


def test_wsdls_are_loaded_once_and_reloaded_when_replaced(tmp_path: Path) -> None:
    wsdl = tmp_path / "opportunity.wsdl"
    wsdl.write_bytes(OPPORTUNITY_WSDL.read_bytes())
    before = outbound_schema.plans_for.cache_info().misses

    assert preload_wsdls([wsdl]) == ("Opportunity",)
    parse_outbound(fixture("outbound__single_opportunity.xml"), wsdl_paths=[wsdl])
    assert outbound_schema.plans_for.cache_info().misses == before + 1

    text = OPPORTUNITY_WSDL.read_text().replace(
        'name="Amount" nillable="true" minOccurs="0" type="xsd:double"',
        'name="Amount" nillable="true" minOccurs="0" type="xsd:string"',
    )
    wsdl.write_text(text)
    os.utime(wsdl, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    msg = parse_outbound(fixture("outbound__single_opportunity.xml"), wsdl_paths=[wsdl])
    assert msg.notifications[0].fields["Amount"] == "120000.0"


def test_wsdl_with_a_network_import_or_a_dtd_is_refused(
    tmp_path: Path, listener: tuple[int, list[bytes]]
) -> None:
    port, seen = listener
    source = OPPORTUNITY_WSDL.read_text()
    importing = tmp_path / "importing.wsdl"
    importing.write_text(
        source.replace(
            '<import namespace="urn:enterprise.soap.sforce.com" />',
            f'<import namespace="urn:x" schemaLocation="http://127.0.0.1:{port}/x.xsd" />',
            1,
        )
    )
    with_dtd = tmp_path / "dtd.wsdl"
    with_dtd.write_text(
        source.replace("<definitions", '<!DOCTYPE definitions [<!ENTITY e "x">]>\n<definitions', 1)
    )

    for wsdl in (importing, with_dtd, tmp_path / "missing.wsdl"):
        with pytest.raises(OutboundWsdlError):
            preload_wsdls([wsdl])
    time.sleep(0.1)
    assert seen == []


# --- responses ---


def test_ack_is_the_notifications_response_salesforce_expects() -> None:
    body = ack_response()

    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
        b"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"
    )
    root = etree.fromstring(body)
    assert root.tag == f"{{{SOAP11}}}Envelope"
    response = root.find(f"{{{SOAP11}}}Body/{{{OUTBOUND}}}notificationsResponse")
    schema = outbound_schema.base_schema()
    element = schema.get_element(f"{{{OUTBOUND}}}notificationsResponse")
    parsed = element.parse(response, schema)  # type: ignore[no-untyped-call]
    assert parsed.Ack is True


@pytest.mark.parametrize(
    ("reason", "code"),
    [("not_soap", "soapenv:Client"), ("too_large", "soapenv:Client"), ("store_failed", "soapenv:Server")],
)
def test_fault_is_soap11_with_client_or_server_code(reason: str, code: str) -> None:
    root = etree.fromstring(fault_response(reason, "what went wrong"))

    fault = root.find(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault")
    assert root.tag == f"{{{SOAP11}}}Envelope" and fault is not None
    assert fault.findtext("faultcode") == code
    assert fault.findtext("faultstring") == f"{reason}: what went wrong"


def test_fault_string_carries_no_session_id_and_stays_well_formed() -> None:
    message = "bad <input> & \x00 session 00D5g000004PzQx!AQ4AQFzR8.NotARealSession " + "x" * 1000

    fault = etree.fromstring(fault_response("not_xml", message)).find(f".//{{{SOAP11}}}Fault")

    text = fault.findtext("faultstring")
    assert "!AQ4AQ" not in text and "[redacted]" in text
    assert text.startswith("not_xml: bad <input> & ") and len(text) <= 300
    assert fault_response("not_xml", "m", server=True).count(b"soapenv:Server") == 1


def test_json_value_is_consistent_for_every_type() -> None:
    assert json_value(Decimal("1.2345678901E10")) == "12345678901"
    assert json_value(datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)) == "2024-01-02T03:04:05.123456Z"
    assert json_value(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05.000Z"
    assert json_value({"a": [date(2024, 1, 2), b"\x00\x01"]}) == {"a": ["2024-01-02", "AAE="]}
