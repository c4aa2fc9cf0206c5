"""POST /hooks/salesforce/events: signed JSON in, durable inbox rows out, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
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
from tests.support.events import ORG_ID, change_event, record_id, signed, signed_headers

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
