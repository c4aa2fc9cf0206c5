"""POST /hooks/dataverse through the app: Dataverse's webhook bodies in, inbox rows out, on SQLite
and PostgreSQL; its three authentication options, key rotation, and the refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from connectors.dataverse.hooks import HOOKS
from plugin import registry
from plugin.app import create_app
from plugin.config import Config
from plugin.storage import get_engine, inbox
from tests.conftest import make_config

URL = "/hooks/dataverse"
KEY = "k" * 32
NEXT_KEY = "n" * 32
FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "dataverse" / "fixtures"
OPPORTUNITY = "a1f3c0de-8e1f-ef11-9f89-000d3a4a1c2b"
NEW_OPPORTUNITY = "b2f3c0de-8e1f-ef11-9f89-000d3a4a1c2b"
APPOINTMENT = "e7a1d902-9a1f-ef11-9f89-000d3a4a1c2b"
PERSON = "3b7c1e52-6c1c-ef11-9f89-000d3a4a1c2b"
APP_USER = "9d4e0a17-5d2d-ef11-9f89-000d3a4a1c2b"
GOVERNED = [
    {"object": "opportunity", "crm": "dataverse", "fields": ["name", "estimatedvalue", "statuscode"]},
    {
        "object": "appointment",
        "crm": "dataverse",
        "fields": ["onr_topics", "onr_budget", "regardingobjectid"],
    },
]


def dataverse_config(db_url: str, tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {"dataverse.webhook_key": [KEY], "governed": GOVERNED, **overrides}
    return make_config(db_url, tmp_path, **values)


def app_for(config: Config) -> Flask:
    return create_app(config)


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    return dataverse_config(db_url, tmp_path)


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return app_for(config).test_client()


def stored(config: Config) -> list[Any]:
    with get_engine(config.storage.url).connect() as conn:
        return list(conn.execute(sa.select(inbox).order_by(inbox.c.id)))


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def post(
    client: FlaskClient, body: bytes | dict[str, Any], query: str = f"code={KEY}", **headers: str
) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        f"{URL}?{query}" if query else URL, data=data, headers={"Content-Type": "application/json", **headers}
    )


def test_the_route_is_served_by_the_app() -> None:
    assert registry.hooks()[URL] is HOOKS[URL]


# -- taken in ----------------------------------------------------------------------------------------


def test_an_update_is_stored_with_the_post_image_over_the_target(client: FlaskClient, config: Config) -> None:
    resp = post(client, fixture("opportunity_update__pre_post_images"))
    assert resp.status_code == 200, resp.json
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    (row,) = stored(config)
    assert (row.source, row.kind, row.status) == ("dataverse.webhook", "record.changed", "pending")
    assert (row.object, row.record_id, row.actor) == ("opportunity", OPPORTUNITY, PERSON)
    assert row.delivery_id == f"5b0d7e93-a41f-ef11-9f89-000d3a4a1c2b:{OPPORTUNITY}:Update"
    assert row.occurred_at == datetime(2026, 3, 10, 9, 15, 42, 412000, tzinfo=UTC)
    assert row.sender == "dataverse.webhook_key#0" and len(row.raw_digest) == 64
    data = row.data
    assert data["fields"] == {
        "estimatedvalue": 185000.0,
        "statuscode": 2,
        "opportunityid": OPPORTUNITY,
        "modifiedon": "2026-03-10T09:15:42Z",
        "modifiedby": PERSON,
        "modifiedonbehalfby": None,
        "estimatedvalue_base": 185000.0,
        "name": "Contoso ERP rollout",  # from the post image only
        "customerid": "c47b2e10-8d1f-ef11-9f89-000d3a4a1c2b",
    }
    assert data["formatted"] == {
        "estimatedvalue": "$185,000.00",
        "statuscode": "On Hold",
        "customerid": "Contoso Ltd",
    }
    assert data["lookups"] == {"modifiedby": "systemuser", "customerid": "account"}
    assert data["images"] == ["AsynchronousStepPrimaryName", "PostImage"]
    assert (data["message"], data["stage"], data["depth"]) == ("Update", 40, 1)
    assert data["operation_id"] == "5b0d7e93-a41f-ef11-9f89-000d3a4a1c2b"
    assert data["correlation_id"] == "8c2f4b1a-3d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert data["organization_id"] == "6e1bd5f2-7a1c-ef11-9f89-000d3a4a1c2b"
    assert data["initiating_user_id"] == PERSON
    assert "truncated" not in data


def test_a_delivery_dataverse_makes_again_is_stored_once(client: FlaskClient, config: Config) -> None:
    first = post(client, fixture("opportunity_update__pre_post_images"))
    # Dataverse's second attempt of the same system job: the same context, however re-serialized.
    again = post(client, json.loads(fixture("opportunity_update__pre_post_images")))
    assert first.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert again.status_code == 200 and again.json == {"stored": 0, "duplicates": 1, "ignored": 0}
    assert len(stored(config)) == 1


def test_another_operation_on_the_same_record_is_another_event(client: FlaskClient, config: Config) -> None:
    body = json.loads(fixture("opportunity_update__pre_post_images"))
    post(client, body)
    body["OperationId"] = "5b0d7e93-a41f-ef11-9f89-000d3a4a1c2c"
    assert post(client, body).json == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert len(stored(config)) == 2


def test_a_create_is_stored_from_its_target(client: FlaskClient, config: Config) -> None:
    resp = post(client, fixture("opportunity_create__target_only"))
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}, resp.json
    (row,) = stored(config)
    assert (row.record_id, row.delivery_id) == (
        NEW_OPPORTUNITY,
        f"6c0d7e93-a41f-ef11-9f89-000d3a4a1c2b:{NEW_OPPORTUNITY}:Create",
    )
    fields = row.data["fields"]
    assert (fields["name"], fields["estimatedvalue"], fields["statuscode"]) == (
        "Fabrikam fleet renewal",
        92500.5,
        1,
    )
    assert fields["estimatedclosedate"] == "2026-06-30T00:00:00Z" and fields["exchangerate"] == 1.0
    assert row.data["lookups"]["customerid"] == "account"
    assert row.data["images"] == ["AsynchronousStepPrimaryName"] and row.data["message"] == "Create"


def test_multi_select_money_lookup_and_parties_are_stored_as_json(
    client: FlaskClient, config: Config
) -> None:
    resp = post(client, fixture("appointment_update__multiselect_money_lookup_parties"))
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}, resp.json
    (row,) = stored(config)
    assert (row.object, row.record_id) == ("appointment", APPOINTMENT)
    fields = row.data["fields"]
    assert fields["onr_topics"] == [100000000, 100000002]
    assert fields["onr_budget"] == 1250.75
    assert (
        fields["regardingobjectid"] == OPPORTUNITY
        and row.data["lookups"]["regardingobjectid"] == "opportunity"
    )
    assert row.data["formatted"]["onr_topics"] == "Pricing; Security review"
    attendee = fields["requiredattendees"][0]
    assert attendee["partyid"] == "d58c3f21-8d1f-ef11-9f89-000d3a4a1c2b"
    assert attendee["partyid@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert attendee["participationtypemask"] == 5
    assert attendee["scheduledstart"] == "2026-03-18T13:00:00Z"
    assert fields["organizer"][0]["partyid"] == PERSON


def test_an_offset_operation_date_is_stored_as_the_instant_of_the_change(
    client: FlaskClient, config: Config
) -> None:
    post(client, fixture("opportunity_update__server_offset"))
    (row,) = stored(config)
    assert row.occurred_at == datetime(2026, 1, 16, 12, 52, 16, tzinfo=UTC)
    assert row.data["fields"]["modifiedon"] == "2026-01-16T12:52:16Z"


def test_a_body_cut_for_size_is_stored_without_values(client: FlaskClient, config: Config) -> None:
    resp = post(
        client, fixture("opportunity_update__size_exceeded"), **{"x-ms-dynamics-msg-size-exceeded": "true"}
    )
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}, resp.json
    (row,) = stored(config)
    assert row.data["fields"] == {} and row.data["images"] == [] and row.data["truncated"] is True


def test_governed_tables_match_logical_names_in_any_case(db_url: str, tmp_path: Path) -> None:
    governed = [{"object": "Opportunity", "crm": "dataverse", "fields": ["name"]}]
    cfg = dataverse_config(db_url, tmp_path, governed=governed)
    resp = post(app_for(cfg).test_client(), fixture("opportunity_update__pre_post_images"))
    assert resp.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    (row,) = stored(cfg)
    assert row.object == "Opportunity"  # as configured: the rules match names exactly


def test_a_table_governed_in_salesforce_is_not_taken_from_dataverse(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(db_url, tmp_path, governed=[{"object": "opportunity", "fields": ["name"]}])
    resp = post(app_for(cfg).test_client(), fixture("opportunity_update__pre_post_images"))
    assert resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}


def test_a_body_from_another_environment_is_refused(db_url: str, tmp_path: Path) -> None:
    other = "00000000-0000-4000-8000-00000000beef"
    cfg = dataverse_config(db_url, tmp_path, **{"dataverse.organization_id": other})
    resp = post(app_for(cfg).test_client(), fixture("opportunity_update__pre_post_images"))
    assert resp.status_code == 403 and resp.json["reason"] == "wrong_org", resp.json
    assert stored(cfg) == []


# -- acknowledged and ignored ------------------------------------------------------------------------


def test_a_delete_is_acknowledged_and_ignored(client: FlaskClient, config: Config) -> None:
    resp = post(client, fixture("opportunity_delete"))
    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert stored(config) == []


def test_a_table_not_governed_is_acknowledged_and_ignored(db_url: str, tmp_path: Path) -> None:
    governed = [{"object": "opportunity", "crm": "dataverse", "fields": ["name"]}]
    cfg = dataverse_config(db_url, tmp_path, governed=governed)
    resp = post(app_for(cfg).test_client(), fixture("appointment_update__multiselect_money_lookup_parties"))
    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert stored(cfg) == []


def test_changes_by_onrecords_application_user_are_never_stored(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(db_url, tmp_path, **{"dataverse.application_user_id": APP_USER.upper()})
    client = app_for(cfg).test_client()
    assert post(client, fixture("opportunity_update__application_user")).json == {
        "stored": 0,
        "duplicates": 0,
        "ignored": 1,
    }
    assert post(client, fixture("opportunity_update__pre_post_images")).json["stored"] == 1
    assert [r.actor for r in stored(cfg)] == [PERSON]


def test_a_step_running_as_someone_else_is_still_known_by_who_initiated_it(
    db_url: str, tmp_path: Path
) -> None:
    # The step registered to run in another user's context: UserId is that user, InitiatingUserId
    # is still OnRecord's application user who made the change.
    cfg = dataverse_config(db_url, tmp_path, **{"dataverse.application_user_id": APP_USER})
    body = json.loads(fixture("opportunity_update__application_user"))
    body["UserId"] = PERSON
    assert post(app_for(cfg).test_client(), body).json == {"stored": 0, "duplicates": 0, "ignored": 1}


def test_without_an_application_user_configured_its_changes_are_taken_in(
    client: FlaskClient, config: Config
) -> None:
    assert post(client, fixture("opportunity_update__application_user")).json["stored"] == 1


# -- authentication ----------------------------------------------------------------------------------


def test_no_key_configured_fails_closed_with_503(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(db_url, tmp_path, **{"dataverse.webhook_key": []})
    resp = post(app_for(cfg).test_client(), fixture("opportunity_update__pre_post_images"))
    assert resp.status_code == 503 and resp.json["reason"] == "not_configured"
    assert resp.headers["Retry-After"] and stored(cfg) == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "missing_key"),
        ("code=", "missing_key"),
        ("key=" + KEY, "missing_key"),
        ("code=" + "x" * 32, "bad_key"),
        ("code=" + KEY[:-1], "bad_key"),
        ("code=" + KEY + "k", "bad_key"),
        (f"code={KEY}&code={KEY}", "bad_key"),
        ("code=" + KEY.upper(), "bad_key"),
    ],
)
def test_without_the_key_a_request_gets_401_and_nothing_is_stored(
    client: FlaskClient, config: Config, query: str, reason: str
) -> None:
    resp = post(client, fixture("opportunity_update__pre_post_images"), query=query)
    assert resp.status_code == 401 and resp.json["reason"] == reason, resp.json
    assert KEY not in resp.get_data(as_text=True)
    assert stored(config) == []


def test_the_key_is_checked_before_the_body_is_read(client: FlaskClient) -> None:
    resp = post(client, b"<not json/>", query="code=wrong")
    assert resp.status_code == 401 and resp.json["reason"] == "bad_key"


def test_rotation_accepts_either_key_and_says_which(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(db_url, tmp_path, **{"dataverse.webhook_key": [NEXT_KEY, KEY]})
    client = app_for(cfg).test_client()
    body = json.loads(fixture("opportunity_update__pre_post_images"))
    assert post(client, body, query=f"code={KEY}").json["stored"] == 1
    body["OperationId"] = "5b0d7e93-a41f-ef11-9f89-000d3a4a1c2c"
    assert post(client, body, query=f"code={NEXT_KEY}").json["stored"] == 1
    assert [r.sender for r in stored(cfg)] == ["dataverse.webhook_key#1", "dataverse.webhook_key#0"]


def test_http_header_authentication_reads_the_named_header(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(
        db_url,
        tmp_path,
        **{"dataverse.webhook_auth": "http_header", "dataverse.webhook_param": "x-onrecord-key"},
    )
    client = app_for(cfg).test_client()
    body = fixture("opportunity_update__pre_post_images")
    assert post(client, body, query="", **{"X-OnRecord-Key": KEY}).json["stored"] == 1
    in_query = post(client, body, query=f"code={KEY}")
    assert in_query.status_code == 401 and in_query.json["reason"] == "missing_key"
    wrong = post(client, body, query="", **{"X-OnRecord-Key": NEXT_KEY})
    assert wrong.status_code == 401 and wrong.json["reason"] == "bad_key"


def test_http_query_string_authentication_reads_the_named_parameter(db_url: str, tmp_path: Path) -> None:
    cfg = dataverse_config(
        db_url,
        tmp_path,
        **{"dataverse.webhook_auth": "http_query_string", "dataverse.webhook_param": "onrecord_key"},
    )
    client = app_for(cfg).test_client()
    body = fixture("opportunity_update__pre_post_images")
    assert post(client, body, query=f"onrecord_key={KEY}").json["stored"] == 1
    as_code = post(client, body, query=f"code={KEY}")
    assert as_code.status_code == 401 and as_code.json["reason"] == "missing_key"


# -- refused -----------------------------------------------------------------------------------------


def update(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(fixture("opportunity_update__pre_post_images"))
    body.update(members)
    return body


def without(key: str) -> dict[str, Any]:
    body = update()
    del body[key]
    return body


def post_image_of(record: str) -> dict[str, Any]:
    body = update()
    body["PostEntityImages"][0]["value"]["Id"] = record
    return body


def twice_in_target() -> dict[str, Any]:
    body = update()
    attributes = body["InputParameters"][0]["value"]["Attributes"]
    attributes.append({"key": "statuscode", "value": None})
    return body


@pytest.mark.parametrize(
    ("body", "reason", "named"),
    [
        (b"this is not json", "not_json", "body is not JSON"),
        (
            b'{"MessageName": "Update", "MessageName": "Create"}',
            "duplicate_key",
            "'MessageName' appears twice",
        ),
        ([update()], "bad_shape", "$ must be a JSON object"),
        (without("PrimaryEntityId"), "missing_field", "$.PrimaryEntityId is required"),
        (update(PrimaryEntityId="opportunity-1"), "bad_field", "$.PrimaryEntityId is not a GUID"),
        (
            update(PrimaryEntityId="00000000-0000-0000-0000-000000000000"),
            "bad_field",
            "$.PrimaryEntityId is the empty",
        ),
        (update(OperationCreatedOn="/Date(yesterday)/"), "bad_date", "$.OperationCreatedOn is not a /Date"),
        (
            update(OperationCreatedOn="/Date(-62135596800000)/"),
            "bad_date",
            "$.OperationCreatedOn is out of range",
        ),
        (
            update(OperationCreatedOn="/Date(253402300799999)/"),
            "bad_date",
            "$.OperationCreatedOn is out of range",
        ),
        (
            update(PrimaryEntityName="account"),
            "bad_shape",
            'Target"] is a row of opportunity, not of $.PrimaryEntityName',
        ),
        (post_image_of(NEW_OPPORTUNITY), "bad_shape", '$.PostEntityImages["PostImage"] is another row'),
        (
            twice_in_target(),
            "duplicate_key",
            "'statuscode' appears twice in $.InputParameters[0].value.Attributes",
        ),
    ],
)
def test_a_body_that_is_no_remote_execution_context_is_400_naming_the_problem(
    client: FlaskClient, config: Config, body: Any, reason: str, named: str
) -> None:
    resp = post(client, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert resp.status_code == 400 and resp.json["reason"] == reason, resp.json
    assert named in resp.json["error"], resp.json["error"]
    assert stored(config) == []
