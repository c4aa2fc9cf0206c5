"""POST /hooks/salesforce/events: signed JSON in, durable inbox rows out, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from connectors.salesforce.ids import to_18
from plugin.app import create_app
from plugin.config import Config
from plugin.storage import get_engine, inbox
from tests.conftest import TEST_SECRET, make_config
from tests.support.events import ORG_ID, USER_ID, change_event, record_id, signed, signed_headers

URL = "/hooks/salesforce/events"
OTHER_SECRET = "whsec_" + "B" * 43 + "="


@pytest.fixture
def app(config: Config) -> Flask:
    return create_app(config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def stored(config: Config) -> list[Any]:
    with get_engine(config.storage.url).connect() as conn:
        return list(conn.execute(sa.select(inbox).order_by(inbox.c.id)))


def post(client: FlaskClient, payload: Any, secret: str = TEST_SECRET, **kw: Any) -> Any:
    body, headers = signed(secret, payload, **kw)
    return client.post(URL, data=body, headers=headers)


def test_signed_event_is_stored_and_acknowledged(client: FlaskClient, config: Config) -> None:
    resp = post(client, change_event(1, fields={"StageName": "Prospecting"}), webhook_id="msg_one")
    assert resp.status_code == 200, resp.json
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    (row,) = stored(config)
    assert (row.source, row.delivery_id, row.kind) == ("salesforce.events", "msg_one", "record.changed")
    assert (row.object, row.record_id, row.status) == ("Opportunity", record_id(1), "pending")
    assert row.data["fields"]["StageName"] == "Prospecting" and "attributes" not in row.data["fields"]
    assert (
        row.data["org_id"] == ORG_ID
        and row.sender == "salesforce.events_secret"
        and len(row.raw_digest) == 64
    )


def test_duplicate_delivery_is_acknowledged_and_stored_once(client: FlaskClient, config: Config) -> None:
    body, headers = signed(TEST_SECRET, change_event(1))
    first = client.post(URL, data=body, headers=headers)
    again = client.post(URL, data=body, headers=headers)
    assert first.json["stored"] == 1 and again.status_code == 200 and again.json["duplicates"] == 1
    assert len(stored(config)) == 1


def test_batch_of_200_is_stored_with_positional_delivery_ids(client: FlaskClient, config: Config) -> None:
    resp = post(client, {"events": [change_event(i) for i in range(200)]}, webhook_id="msg_batch")
    assert resp.status_code == 200 and resp.json["stored"] == 200
    rows = stored(config)
    assert [r.delivery_id for r in rows[:3]] == ["msg_batch:0", "msg_batch:1", "msg_batch:2"]


def test_batch_over_200_is_refused(client: FlaskClient, config: Config) -> None:
    resp = post(client, {"events": [change_event(i) for i in range(201)]})
    assert resp.status_code == 400 and resp.json["reason"] == "bad_shape"
    assert stored(config) == []


def tampered(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"1000", b"9000"), headers


def expired(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, signed_headers(TEST_SECRET, body, ts=int(time.time()) - 3600)


def unsigned(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {"content-type": "application/json"}


def malformed(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {**headers, "webhook-signature": "v1,@@@"}


def wrong_key(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, signed_headers(OTHER_SECRET, body)


def bad_timestamp(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {**headers, "webhook-timestamp": "1e9"}


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (tampered, "bad_signature"),
        (expired, "expired_signature"),
        (unsigned, "missing_signature"),
        (malformed, "malformed_signature"),
        (wrong_key, "bad_signature"),
        (bad_timestamp, "malformed_signature"),
    ],
)
def test_unauthenticated_requests_get_401_and_nothing_is_stored(
    client: FlaskClient, config: Config, spoil: Any, reason: str
) -> None:
    body, headers = spoil(*signed(TEST_SECRET, change_event(1)))
    resp = client.post(URL, data=body, headers=headers)
    assert resp.status_code == 401 and resp.json["reason"] == reason
    assert stored(config) == []


def test_secret_rotation_accepts_either_key(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.events_secret": [OTHER_SECRET, TEST_SECRET]})
    client = create_app(cfg).test_client()
    assert post(client, change_event(1), secret=TEST_SECRET).status_code == 200
    assert post(client, change_event(2), secret=OTHER_SECRET).status_code == 200


def test_missing_secret_fails_closed_with_503(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.events_secret": []})
    resp = post(create_app(cfg).test_client(), change_event(1))
    assert resp.status_code == 503 and resp.json["reason"] == "not_configured"
    assert stored(cfg) == []


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ([1, 2], "body must be a JSON object"),
        ({"events": []}, "events must be a list"),
        ({**change_event(1), "occurred_at": "yesterday"}, "event.occurred_at"),
        (
            {**change_event(1), "occurred_at": "2026-11-26T10:00:00"},
            "event.occurred_at must carry a time zone",
        ),
        ({k: v for k, v in change_event(1).items() if k != "record"}, "event.record"),
        ({**change_event(1), "org_id": "not-an-id"}, "event.org_id"),
        ({**change_event(1), "object": "Robert'); DROP TABLE"}, "event.object"),
        ({**change_event(1), "type": "Record Changed"}, "event.type"),
        ({"events": [change_event(1), {**change_event(2), "id": 7}]}, "events[1].id"),
    ],
)
def test_payloads_salesforce_would_not_send_are_400_naming_the_field(
    client: FlaskClient, config: Config, payload: Any, named: str
) -> None:
    resp = post(client, payload)
    assert resp.status_code == 400 and named in resp.json["error"]
    assert stored(config) == []


def test_record_id_with_a_wrong_checksum_is_refused(client: FlaskClient, config: Config) -> None:
    event = change_event(1)
    event["record"]["Id"] = event["record"]["Id"][:15] + "ZZZ"
    resp = post(client, event)
    assert resp.status_code == 400 and "record.Id" in resp.json["error"]


def test_non_json_body_is_400(client: FlaskClient) -> None:
    body = b"<xml/>"
    resp = client.post(URL, data=body, headers=signed_headers(TEST_SECRET, body))
    assert resp.status_code == 400 and resp.json["reason"] == "not_json"


def test_known_event_type_we_do_not_handle_is_200_and_ignored(client: FlaskClient, config: Config) -> None:
    resp = post(client, change_event(1, type="record.deleted"))
    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert stored(config) == []


def test_changes_by_onrecords_own_integration_user_are_never_stored(db_url: str, tmp_path: Path) -> None:
    own = to_18("0055g00000OnReC")
    cfg = make_config(db_url, tmp_path, **{"salesforce.integration_user_id": own[:15]})
    client = create_app(cfg).test_client()
    resp = post(client, {"events": [change_event(1, actor=own), change_event(2)]})
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 1}
    assert [r.record_id for r in stored(cfg)] == [record_id(2)]


def test_event_from_another_org_is_403(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.org_id": "00D000000000062"})
    resp = post(create_app(cfg).test_client(), change_event(1))
    assert resp.status_code == 403 and resp.json["reason"] == "wrong_org"
    assert stored(cfg) == []


def test_configured_org_matches_in_15_or_18_characters(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.org_id": ORG_ID[:15]})
    assert post(create_app(cfg).test_client(), change_event(1)).status_code == 200


def test_oversized_body_is_413_before_anything_is_read(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"server.max_body_bytes": 64 * 1024})
    client = create_app(cfg).test_client()
    payload = change_event(1, fields={"Description": "x" * 70_000})
    resp = post(client, payload)
    assert resp.status_code == 413 and resp.json["reason"] == "too_large"
    assert stored(cfg) == []


def test_storage_failure_is_503_so_the_sender_retries(app: Flask, config: Config) -> None:
    with get_engine(config.storage.url).begin() as conn:
        conn.execute(sa.text("DROP TABLE inbox"))
    resp = post(app.test_client(), change_event(1))
    assert resp.status_code == 503 and resp.json["reason"] == "store_failed"
    assert resp.headers["Retry-After"]


def test_every_response_carries_a_request_id(client: FlaskClient) -> None:
    resp = post(client, change_event(1))
    assert len(resp.headers["X-Request-Id"]) == 32
    echoed = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"
    assert json.loads(echoed.data) == {"status": "ok"}


def test_objects_that_are_not_governed_are_acknowledged_and_ignored(
    client: FlaskClient, config: Config
) -> None:
    resp = post(client, {"events": [change_event(1, object="Lead"), change_event(2)]})
    assert resp.status_code == 200 and resp.json == {"stored": 1, "duplicates": 0, "ignored": 1}
    assert [r.object for r in stored(config)] == ["Opportunity"]


def test_a_batch_under_the_longest_webhook_id_is_stored_and_deduplicated(
    client: FlaskClient, config: Config
) -> None:
    # webhook-id may be 255 characters; ":<position>" makes the delivery id longer than the column.
    wid = "m" * 255
    payload = {"events": [change_event(i) for i in range(12)]}
    for _ in range(2):
        resp = post(client, payload, webhook_id=wid)
        assert resp.status_code == 200, resp.json
    assert resp.json == {"stored": 0, "duplicates": 12, "ignored": 0}
    rows = stored(config)
    assert len(rows) == 12 and all(len(r.delivery_id) <= 255 for r in rows)
    assert len({r.delivery_id for r in rows}) == 12


# -- Real-Time Event Monitoring: report and dashboard views ------------------------------------

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "salesforce" / "fixtures"


def monitoring(name: str, **record: Any) -> dict[str, Any]:
    """A fixture body (`report_viewed`, `dashboard_viewed`), its record's fields changed (None: removed)."""
    body: dict[str, Any] = json.loads((FIXTURES / f"events__{name}.json").read_text())
    for key, value in record.items():
        if value is None:
            body["record"].pop(key, None)
        else:
            body["record"][key] = value
    return body


def test_a_report_run_from_event_monitoring_is_stored_as_a_report_view(
    client: FlaskClient, config: Config
) -> None:
    resp = post(client, monitoring("report_viewed"), webhook_id="msg_report")
    assert resp.status_code == 200, resp.json
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    (row,) = stored(config)
    assert (row.source, row.kind, row.actor) == ("salesforce.events", "user.activity", USER_ID)
    # one report run is one view, whichever chunk or copy of it arrives: keyed by its execution
    assert row.delivery_id == "ReportEvent:a50a4025-84f2-425d-8af9-2c780869f3b5"
    assert row.occurred_at == datetime(2026, 11, 26, 10, 15, 26, 965000, tzinfo=UTC)
    assert row.object is None and row.record_id is None
    assert row.data == {
        "activity": "report_view",
        "org_id": ORG_ID,
        "event_id": "evt-report-1",
        "object": "ReportEventStream",
        "event_identifier": "0a4779b0-0da1-4619-a373-0a36991dff90",
        "operation": "ReportRunFromLightning",
        "username": "jane@contoso.com",
        "report_id": "00O5g000004RpTaEAK",
        "report_name": "Pipeline by Stage",
        "event_source": "Lightning",
    }


def test_a_dashboard_opened_in_lightning_is_stored_as_a_dashboard_view(
    client: FlaskClient, config: Config
) -> None:
    resp = post(client, monitoring("dashboard_viewed"))
    assert resp.status_code == 200 and resp.json["stored"] == 1, resp.json
    (row,) = stored(config)
    assert (row.kind, row.actor, row.delivery_id) == (
        "user.activity",
        USER_ID,
        "LightningUriEvent:7c2d9e41-3f8a-4b6c-8d1e-5a9b0c7f2e63",
    )
    # EventDate in milliseconds since the epoch, as the Pub/Sub API carries it
    assert row.occurred_at == datetime(2026, 11, 26, 10, 20, tzinfo=UTC)
    assert row.data["activity"] == "dashboard_view"
    assert row.data["dashboard_id"] == "01Z5g000000DbRdEAK"
    assert row.data["queried_entities"] == "Dashboard"


def test_a_view_pushed_again_or_from_its_stored_copy_is_stored_once(
    client: FlaskClient, config: Config
) -> None:
    stream = monitoring("report_viewed")
    stored_copy = {**stream, "id": "evt-report-1-copy", "object": "ReportEvent"}
    first = post(client, {"events": [stream, monitoring("dashboard_viewed")]})
    again = post(client, {"events": [stored_copy, monitoring("dashboard_viewed")]})
    assert first.json == {"stored": 2, "duplicates": 0, "ignored": 0}
    assert again.json == {"stored": 0, "duplicates": 2, "ignored": 0}
    assert len(stored(config)) == 2


@pytest.mark.parametrize(
    "payload",
    [
        monitoring("report_viewed", Operation="ReportRunFromRestApi"),
        monitoring("report_viewed", Operation="ReportScheduled"),
        monitoring("report_viewed", Operation="DashboardComponentUpdated"),
        monitoring("report_viewed", IsScheduled=True),
        monitoring("dashboard_viewed", Operation="Update"),
    ],
)
def test_event_monitoring_events_that_are_no_person_viewing_are_acknowledged_and_ignored(
    client: FlaskClient, config: Config, payload: dict[str, Any]
) -> None:
    resp = post(client, payload)
    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert stored(config) == []


def test_a_view_without_an_operation_counts(client: FlaskClient, config: Config) -> None:
    resp = post(client, monitoring("report_viewed", Operation=None))
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}


def test_the_integration_users_views_are_never_stored(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.integration_user_id": USER_ID[:15]})
    client = create_app(cfg).test_client()
    resp = post(client, {"events": [monitoring("report_viewed"), monitoring("dashboard_viewed")]})
    assert resp.json == {"stored": 0, "duplicates": 0, "ignored": 2}
    assert stored(cfg) == []


def test_a_view_from_another_org_is_403(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"salesforce.org_id": "00D000000000062"})
    resp = post(create_app(cfg).test_client(), monitoring("dashboard_viewed"))
    assert resp.status_code == 403 and resp.json["reason"] == "wrong_org"


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({**monitoring("report_viewed"), "object": "LightningUriEvent"}, "event.object must be one of"),
        ({**monitoring("dashboard_viewed"), "object": "ReportEvent"}, "event.object must be one of"),
        ({k: v for k, v in monitoring("report_viewed").items() if k != "object"}, "event.object"),
        ({**monitoring("report_viewed"), "record": "ReportEvent"}, "event.record must be an object"),
        ({**monitoring("report_viewed"), "org_id": "00D"}, "event.org_id"),
        ({k: v for k, v in monitoring("report_viewed").items() if k != "id"}, "event.id is required"),
        (monitoring("report_viewed", EventIdentifier=None), "event.record.EventIdentifier is required"),
        (monitoring("report_viewed", EventIdentifier=""), "event.record.EventIdentifier"),
        (monitoring("report_viewed", EventDate=None), "event.record.EventDate is required"),
        (monitoring("report_viewed", EventDate="2026-11-26T10:15:26"), "event.record.EventDate must carry"),
        (monitoring("report_viewed", EventDate="last Tuesday"), "event.record.EventDate"),
        (monitoring("dashboard_viewed", EventDate=-1), "event.record.EventDate is out of range"),
        (monitoring("report_viewed", UserId=None), "event.record.UserId is required"),
        (monitoring("report_viewed", UserId=ORG_ID), "event.record.UserId is not a user id"),
        (monitoring("report_viewed", UserId="005-not-an-id"), "event.record.UserId is not a Salesforce id"),
        (monitoring("report_viewed", ReportId=None), "event.record.ReportId is required"),
        (monitoring("report_viewed", ReportId="01Z5g000000DbRdEAK"), "event.record.ReportId is not a report"),
        (monitoring("report_viewed", DashboardId="00O5g000004RpTaEAK"), "event.record.DashboardId"),
        (monitoring("report_viewed", IsScheduled="no"), "event.record.IsScheduled must be true or false"),
        (monitoring("report_viewed", Operation=7), "event.record.Operation"),
        (monitoring("dashboard_viewed", RecordId=None), "event.record.RecordId is required"),
        (monitoring("dashboard_viewed", RecordId=record_id(1)), "event.record.RecordId is not a dashboard"),
        ({"events": [change_event(1), monitoring("report_viewed", UserId=7)]}, "events[1].record.UserId"),
    ],
)
def test_event_monitoring_bodies_salesforce_would_not_send_are_400_naming_the_field(
    client: FlaskClient, config: Config, payload: Any, named: str
) -> None:
    resp = post(client, payload)
    assert resp.status_code == 400 and named in resp.json["error"], resp.json
    assert stored(config) == []


# -- CampaignMember changes of training campaigns ----------------------------------------------

TRAINING = to_18("7015g000000TrnA")


def member(n: int, campaign: str = TRAINING, status: str = "Attended") -> dict[str, Any]:
    fields = {"CampaignId": campaign, "Status": status, "Email": "jane@contoso.com"}
    return change_event(n, object="CampaignMember", fields=fields)


def test_members_of_training_campaigns_are_taken_in_others_ignored(db_url: str, tmp_path: Path) -> None:
    cfg = make_config(db_url, tmp_path, **{"leaders.training_campaigns": [TRAINING[:15]]})
    client = create_app(cfg).test_client()
    other = to_18("7015g000000OthR")
    resp = post(client, {"events": [member(1), member(2, status="Sent"), member(3, campaign=other)]})
    assert resp.json == {"stored": 2, "duplicates": 0, "ignored": 1}
    rows = stored(cfg)
    assert [(r.object, r.data["fields"]["Status"]) for r in rows] == [
        ("CampaignMember", "Attended"),
        ("CampaignMember", "Sent"),  # the rule decides: a correction away from Attended counts too
    ]


def test_campaign_members_are_ignored_when_no_training_campaign_is_configured(
    client: FlaskClient, config: Config
) -> None:
    resp = post(client, member(1))
    assert resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}


def test_long_fields_salesforce_sends_are_accepted(client: FlaskClient, config: Config) -> None:
    entities = ", ".join(["Opportunity"] * 80)  # QueriedEntities: up to 1,000 characters
    report = monitoring("report_viewed", QueriedEntities=entities, ColumnHeaders="[X]" * 3000)
    dashboard = monitoring("dashboard_viewed", QueriedEntities=entities[:1000], ReportId=None)
    resp = post(client, {"events": [report, dashboard]})
    assert resp.json == {"stored": 2, "duplicates": 0, "ignored": 0}, resp.json
    too_long = post(client, monitoring("dashboard_viewed", QueriedEntities="D" * 1001))
    assert too_long.status_code == 400 and "event.record.QueriedEntities" in too_long.json["error"]


def test_ids_are_kept_in_18_characters(client: FlaskClient, config: Config) -> None:
    post(client, monitoring("report_viewed", ReportId="00O5g000004RpTa", UserId=USER_ID[:15]))
    (row,) = stored(config)
    assert (row.actor, row.data["report_id"]) == (USER_ID, "00O5g000004RpTaEAK")


@pytest.mark.parametrize("year", ["0001", "9999"])
def test_a_date_onrecord_cannot_process_is_refused_at_the_door(client: Any, year: str) -> None:
    # An occurred_at in year 9999 was acknowledged and then crashed the worker (OverflowError).
    event = change_event(1)
    event["occurred_at"] = f"{year}-01-01T00:00:00Z"
    body, headers = signed(TEST_SECRET, event)
    resp = client.post(URL, data=body, headers=headers)
    assert resp.status_code == 400 and "out of range" in resp.json["error"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "e", "id": "f"}', "duplicate_key"),
        (b'{"Amount": NaN}', "not_a_number"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"n": ' + b"9" * 4400 + b"}", "not_a_number"),
        ('{"a": "b"}'.encode("utf-16"), "not_utf8"),
        (b'{"a": "\\ud800"}', "bad_string"),
    ],
)
def test_a_hostile_signed_body_is_400_naming_the_problem(client: Any, raw: bytes, reason: str) -> None:
    headers = signed_headers(TEST_SECRET, raw)
    resp = client.post(URL, data=raw, headers=headers)
    assert resp.status_code == 400 and resp.json["reason"] == reason
