"""POST /hooks/salesforce/outbound through the Flask test client, on SQLite and PostgreSQL:
one message in, its events stored (or not) and Salesforce's answer out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree

from connectors.salesforce import outbound_view
from connectors.salesforce.ids import to_18
from plugin.app import create_app
from plugin.inbox import StoreError
from plugin.storage import inbox
from tests.conftest import make_config
from tests.connectors.salesforce.outbound_messages import (
    BUDGET_WSDL,
    OPPORTUNITY_WSDL,
    ORG_ID,
    OUTBOUND,
    SOAP11,
    USER_ID,
    envelope,
    fixture,
    notification,
    notification_id,
    opportunities,
    opportunity_fields,
    opportunity_id,
)

TOKEN = "t0ken-for-the-outbound-url-0123456789"
URL = f"/hooks/salesforce/outbound?token={TOKEN}"
INTEGRATION_USER = to_18("0055g00000IntEg")  # configured in its 15-character form
SESSION_ID = "00D5g000004PzQx!AQ4AQFzR8.NotARealSession_q1w2e3r4t5y6u7i8o9p0aLsKdJfHgZmXnCbV"
GOVERNED = [
    {"object": "Opportunity", "fields": ["Amount", "StageName"]},
    {"object": "Budget_Request__c", "fields": ["Amount__c", "Status__c"]},
]


def build_app(db_url: str, tmp_path: Path, **overrides: Any) -> Flask:
    values: dict[str, Any] = {
        "salesforce.outbound_token": TOKEN,
        "salesforce.org_id": ORG_ID,
        "salesforce.integration_user_id": "0055g00000IntEg",
        "salesforce.outbound_wsdls": [str(OPPORTUNITY_WSDL), str(BUDGET_WSDL)],
        "governed": GOVERNED,
    }
    values.update(overrides)
    app = create_app(make_config(db_url, tmp_path, **values))
    app.testing = True
    return app


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Flask:
    return build_app(db_url, tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def stored(app: Flask) -> list[Any]:
    with app.extensions["onrecord"].engine.connect() as conn:
        return list(conn.execute(sa.select(inbox).order_by(inbox.c.id)))


def is_ack(body: bytes) -> bool:
    root = etree.fromstring(body)
    ack = root.findtext(f"{{{SOAP11}}}Body/{{{OUTBOUND}}}notificationsResponse/{{{OUTBOUND}}}Ack")
    return bool(ack == "true")


def ignored(client: FlaskClient, reason: str) -> float:
    """The process's count of events ignored for `reason` (metrics are per process)."""
    text = client.get("/metrics").data.decode()
    label = f'onrecord_events_ignored_total{{reason="{reason}",source="salesforce.outbound"}} '
    return next(
        (float(line.removeprefix(label)) for line in text.splitlines() if line.startswith(label)), 0.0
    )


def fault_of(body: bytes) -> tuple[str, str]:
    """(faultcode, faultstring) of a SOAP 1.1 fault body; fails if it is not one."""
    root = etree.fromstring(body)
    assert root.tag == f"{{{SOAP11}}}Envelope"
    fault = root.find(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault")
    assert fault is not None, body
    return fault.findtext("faultcode") or "", fault.findtext("faultstring") or ""


# --- messages Salesforce sends ---


def test_one_notification_is_stored_then_acknowledged_with_soap_ack(app: Flask, client: FlaskClient) -> None:
    resp = client.post(URL, data=fixture("outbound__single_opportunity.xml"), content_type="text/xml")

    assert resp.status_code == 200 and is_ack(resp.data)
    assert resp.headers["Content-Type"] == "text/xml; charset=utf-8"
    (row,) = stored(app)
    assert (row.source, row.delivery_id, row.kind) == (
        "salesforce.outbound",
        "04l5g00002kHqsAAAS",
        "record.changed",
    )
    assert (row.object, row.record_id, row.actor) == ("Opportunity", "0065g00000KbBElAAN", USER_ID)
    assert row.data["fields"]["Amount"] == "120000.0" and row.data["fields"]["IsWon"] is False
    assert row.data["org_id"] == ORG_ID and row.sender.startswith(ORG_ID)
    assert len(row.raw_digest) == 64


def test_hundred_notifications_are_all_stored_by_one_message(app: Flask, client: FlaskClient) -> None:
    resp = client.post(URL, data=opportunities(100))

    assert resp.status_code == 200 and is_ack(resp.data)
    rows = stored(app)
    assert [r.delivery_id for r in rows] == [notification_id(n) for n in range(100)]
    assert {r.record_id for r in rows} == {opportunity_id(n) for n in range(100)}


def test_message_with_nil_session_is_stored(app: Flask, client: FlaskClient) -> None:
    resp = client.post(URL, data=fixture("outbound__nil_session.xml"))

    assert resp.status_code == 200 and is_ack(resp.data)
    first, second = stored(app)
    assert first.data["fields"] == {
        "Id": "0065g00000KbBGnAAN",
        "Amount": None,
        "Name": "Renewal FY25",
        "SystemModstamp": "2024-11-28T12:30:00.000Z",
    }
    assert second.data["fields"] == {"Id": "0065g00000KbBHoAAN", "StageName": "Prospecting"}


def test_custom_object_arrives_with_every_field_type_typed(app: Flask, client: FlaskClient) -> None:
    resp = client.post(URL, data=fixture("outbound__custom_object.xml"))

    assert resp.status_code == 200 and is_ack(resp.data)
    (row,) = stored(app)
    assert (row.object, row.record_id) == ("Budget_Request__c", "a0X5g00000Tq3RkEAJ")
    assert row.data["typed"] is True
    assert row.data["fields"] == {
        "Id": "a0X5g00000Tq3RkEAJ",  # ID
        "Amount__c": "1234567.89",  # double (currency), exact
        "Approved_At__c": "2024-11-26T14:05:09.123Z",  # dateTime
        "Approved__c": True,  # boolean
        "Cost_Center__c": "EMEA & Marketing",  # string (picklist)
        "Headcount__c": 12,  # int
        "Justification__c": None,  # nil
        "LastModifiedById": USER_ID,
        "LastModifiedDate": "2024-11-26T14:05:10.000Z",
        "Name": "BR-000042",
        "Opportunity__c": "0065g00000KbBElAAN",  # lookup (ID)
        "OwnerId": "0055g00000DdEeFAAV",
        "Region__c": "EMEA",  # not in the WSDL: text
        "Start_Date__c": "2025-01-01",  # date
        "Status__c": "Approved",
        "SystemModstamp": "2024-11-26T14:05:10.000Z",
    }


def test_resent_message_is_acknowledged_and_stored_once(app: Flask, client: FlaskClient) -> None:
    body = opportunities(3)
    for _ in range(3):  # Salesforce may deliver a message more than once
        resp = client.post(URL, data=body)
        assert resp.status_code == 200 and is_ack(resp.data)

    assert [r.delivery_id for r in stored(app)] == [notification_id(n) for n in range(3)]


@pytest.mark.parametrize(
    ("configured", "sent"),
    [(ORG_ID[:15], ORG_ID), (ORG_ID, ORG_ID[:15]), (ORG_ID.lower(), ORG_ID)],
    ids=["15-configured", "15-sent", "lower-case-18"],
)
def test_fifteen_and_eighteen_character_org_ids_are_the_same_org(
    db_url: str, tmp_path: Path, configured: str, sent: str
) -> None:
    app = build_app(db_url, tmp_path, **{"salesforce.org_id": configured})
    body = envelope([notification(1, opportunity_fields(1))], org_id=sent)

    resp = app.test_client().post(URL, data=body)

    assert resp.status_code == 200 and is_ack(resp.data)
    assert len(stored(app)) == 1


def test_objects_not_governed_are_acknowledged_and_counted_not_stored(
    app: Flask, client: FlaskClient
) -> None:
    body = envelope(
        [
            notification(1, opportunity_fields(1)),
            notification(2, {"Name": "Acme"}, object_type="Account", record_id="0015g00000WluN0AAJ"),
        ]
    )

    before = ignored(client, "not_governed")

    resp = client.post(URL, data=body)

    assert resp.status_code == 200 and is_ack(resp.data)
    assert [r.object for r in stored(app)] == ["Opportunity"]
    assert ignored(client, "not_governed") == before + 1


def test_changes_by_the_integration_user_are_acknowledged_and_never_stored(
    app: Flask, client: FlaskClient
) -> None:
    body = envelope(
        [
            notification(1, opportunity_fields(1, actor=INTEGRATION_USER)),  # OnRecord's own write-back
            notification(2, opportunity_fields(2)),
        ]
    )

    resp = client.post(URL, data=body)

    assert resp.status_code == 200 and is_ack(resp.data)
    assert [r.delivery_id for r in stored(app)] == [notification_id(2)]


def test_session_id_is_never_stored_nor_logged(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = fixture("outbound__session_present.xml")
    assert SESSION_ID.encode() in body

    assert client.post(URL, data=body).status_code == 200
    assert client.post(URL.replace(TOKEN, "wrong-token"), data=body).status_code == 401

    (row,) = stored(app)
    assert "!AQ4AQ" not in repr(tuple(row)) and "!AQ4AQ" not in caplog.text
    assert TOKEN not in caplog.text


# --- refusals: always a SOAP fault, never anything stored ---


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
def test_hostile_or_malformed_fixture_is_refused_400_with_a_fault(
    app: Flask, client: FlaskClient, name: str, reason: str
) -> None:
    resp = client.post(URL, data=fixture(name))

    assert resp.status_code == 400
    code, text = fault_of(resp.data)
    assert code == "soapenv:Client" and text.startswith(f"{reason}:")
    assert "root:" not in text  # nothing of /etc/passwd
    assert stored(app) == []


def test_non_soap_body_is_refused_with_a_fault(app: Flask, client: FlaskClient) -> None:
    resp = client.post(URL, data=b'{"notifications": []}', content_type="application/json")

    assert resp.status_code == 400 and fault_of(resp.data)[1].startswith("not_xml:")
    assert stored(app) == []


def test_ten_megabyte_body_is_refused_413_with_a_fault(app: Flask, client: FlaskClient) -> None:
    body = opportunities(1).replace(b"</soapenv:Envelope>", b"<!--" + b"x" * 10 * 1024 * 1024 + b"-->")

    resp = client.post(URL, data=body)

    assert resp.status_code == 413
    assert fault_of(resp.data)[1].startswith("too_large:")
    assert stored(app) == []


def test_a_wrong_method_on_this_route_is_a_soap_fault_too(app: Flask, client: FlaskClient) -> None:
    resp = client.get(URL)

    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert fault_of(resp.data)[1].startswith("method_not_allowed:")
    assert client.get("/nowhere").is_json  # other routes keep their JSON errors


def test_message_from_another_org_is_refused_403(app: Flask, client: FlaskClient) -> None:
    body = envelope([notification(1, opportunity_fields(1))], org_id="00D000000000062EAA")

    resp = client.post(URL, data=body)

    assert resp.status_code == 403 and fault_of(resp.data)[1].startswith("wrong_org:")
    assert stored(app) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (URL.replace(TOKEN, TOKEN[:-1] + "X"), "bad_token"),
        ("/hooks/salesforce/outbound", "missing_token"),
        ("/hooks/salesforce/outbound?token=", "missing_token"),
        (URL.replace(TOKEN, "é" * 30), "bad_token"),
    ],
)
def test_wrong_or_missing_token_is_refused_401(
    app: Flask, client: FlaskClient, url: str, reason: str
) -> None:
    resp = client.post(url, data=fixture("outbound__single_opportunity.xml"))

    assert resp.status_code == 401 and fault_of(resp.data)[1].startswith(f"{reason}:")
    assert stored(app) == []


@pytest.mark.parametrize(
    "missing",
    [
        {"salesforce.outbound_token": ""},
        {"salesforce.org_id": ""},
        {"salesforce.org_id": "0065g00000KbBElAAN"},
    ],
    ids=["no-token", "no-org", "org-is-not-an-org"],
)
def test_unconfigured_endpoint_fails_closed_503_with_a_fault(
    db_url: str, tmp_path: Path, missing: dict[str, str]
) -> None:
    app = build_app(db_url, tmp_path, **missing)

    resp = app.test_client().post(URL, data=fixture("outbound__single_opportunity.xml"))

    assert resp.status_code == 503
    code, text = fault_of(resp.data)
    assert code == "soapenv:Server" and text.startswith("not_configured:")
    assert stored(app) == []


FINGERPRINT = "AB:CD:" + ":".join(["0F"] * 30)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (FINGERPRINT, 200),
        ("sha256:" + FINGERPRINT.replace(":", "").lower(), 200),
        ("AB:CD:" + ":".join(["0E"] * 30), 403),
        ("not-a-fingerprint", 403),
        (None, 403),
    ],
)
def test_client_certificate_fingerprint_is_checked_when_configured(
    db_url: str, tmp_path: Path, header: str | None, status: int
) -> None:
    app = build_app(
        db_url,
        tmp_path,
        **{
            "salesforce.client_cert_header": "X-Client-Cert-SHA256",
            "salesforce.client_cert_fingerprints": [FINGERPRINT],
        },
    )
    headers = {"X-Client-Cert-SHA256": header} if header else {}

    resp = app.test_client().post(URL, data=fixture("outbound__single_opportunity.xml"), headers=headers)

    assert resp.status_code == status
    if status != 200:
        assert fault_of(resp.data)[0] == "soapenv:Client"
    assert len(stored(app)) == (1 if status == 200 else 0)


def test_failed_store_is_a_500_server_fault_so_salesforce_retries(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(app.extensions["onrecord"].committer, "store", fail)

    resp = client.post(URL, data=opportunities(2))

    assert resp.status_code == 500
    code, text = fault_of(resp.data)
    assert code == "soapenv:Server" and text.startswith("store_failed:")
    assert b"Ack" not in resp.data


def test_unexpected_error_is_a_500_server_fault(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(outbound_view, "to_events", broken)

    resp = client.post(URL, data=opportunities(1))

    assert resp.status_code == 500 and fault_of(resp.data)[1].startswith("internal_error:")
    assert stored(app) == []


def test_unusable_wsdl_is_logged_at_start_and_messages_get_a_server_fault(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.wsdl"
    broken.write_text("<definitions/>")

    app = build_app(db_url, tmp_path, **{"salesforce.outbound_wsdls": [str(broken)]})
    resp = app.test_client().post(URL, data=fixture("outbound__single_opportunity.xml"))

    assert "outbound message WSDL unusable" in caplog.text
    assert resp.status_code == 500 and fault_of(resp.data)[1].startswith("wsdl_error:")
    assert stored(app) == []


def test_wsdl_globs_are_expanded_once_and_missing_plain_paths_kept(tmp_path: Path) -> None:
    (tmp_path / "a.wsdl").write_text("x")
    (tmp_path / "b.wsdl").write_text("x")
    patterns = (str(tmp_path / "*.wsdl"), str(tmp_path / "missing.wsdl"))

    paths = outbound_view.wsdl_paths(patterns)
    (tmp_path / "c.wsdl").write_text("x")

    assert paths == (tmp_path / "a.wsdl", tmp_path / "b.wsdl", tmp_path / "missing.wsdl")
    assert outbound_view.wsdl_paths(patterns) is paths  # once per process
