"""GET /openapi-v2.json (Power Automate custom connector) and /openapi.json (Salesforce External
Services): valid per a real validator, from one source, and true to what OnRecord accepts and posts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator

from connectors.power_automate.subscriptions import TOPICS, notification_body
from plugin.app import create_app
from tests.conftest import make_config

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "power_automate" / "fixtures"
OPERATIONS = {
    ("post", "/hooks/power-automate/forms"),
    ("post", "/hooks/power-automate/approvals"),
    ("post", "/hooks/power-automate/signals"),
    ("post", "/api/subscriptions"),
    ("delete", "/api/subscriptions/{id}"),
    ("get", "/api/provenance/{object}/{record_id}"),
    ("get", "/api/approvals/{object}/{record_id}"),
    ("get", "/api/provenance/checkpoint"),
    ("post", "/api/verify"),
    ("post", "/api/citations"),
    ("get", "/api/leaders"),
}


@pytest.fixture
def client(sqlite_url: str, tmp_path: Path) -> FlaskClient:
    config = make_config(sqlite_url, tmp_path, **{"api.public_url": "https://onrecord.contoso.com"})
    return create_app(config).test_client()


def fetch(client: FlaskClient, path: str) -> tuple[dict[str, Any], int]:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    document: dict[str, Any] = resp.json
    return document, len(resp.data)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "delete"}
    }


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


def test_swagger2_imports_as_a_custom_connector(client: FlaskClient) -> None:
    document, size = fetch(client, "/openapi-v2.json")
    validate(document, cls=OpenAPIV2SpecValidator)
    assert size < 1_000_000
    assert not {"oneOf", "anyOf"} & keys_anywhere(document)
    assert (document["host"], document["schemes"]) == ("onrecord.contoso.com", ["https"])
    ops = operations(document)
    assert set(ops) == OPERATIONS
    trigger = ops[("post", "/api/subscriptions")]
    assert trigger["x-ms-trigger"] == "single"
    assert trigger["responses"]["201"]["headers"]["Location"]["type"] == "string"
    (body,) = [p for p in trigger["parameters"] if p["in"] == "body"]
    request = document["definitions"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    callback = request["properties"]["callback_url"]
    assert callback["x-ms-notification-url"] is True and callback["x-ms-visibility"] == "internal"
    assert request["properties"]["events"]["items"]["enum"] == list(TOPICS)
    content = document["paths"]["/api/subscriptions"]["x-ms-notification-content"]
    assert content["schema"] == {"$ref": "#/definitions/Notification"}
    assert ops[("delete", "/api/subscriptions/{id}")]["x-ms-visibility"] == "internal"


def test_openapi3_is_valid_and_describes_the_same_operations(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi.json")
    validate(document, cls=OpenAPIV30SpecValidator)
    assert document["openapi"].startswith("3.0") and document["servers"] == [
        {"url": "https://onrecord.contoso.com"}
    ]
    v2, _ = fetch(client, "/openapi-v2.json")
    assert {k: op["operationId"] for k, op in operations(document).items()} == {
        k: op["operationId"] for k, op in operations(v2).items()
    }
    assert set(document["components"]["schemas"]) == set(v2["definitions"])
    assert not [k for k in keys_anywhere(document) if k.startswith("x-ms-")]


def test_validator_rejects_a_broken_document(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi-v2.json")
    document["paths"]["/api/verify"]["post"]["responses"]["200"]["schema"] = {"$ref": "#/definitions/Nope"}
    with pytest.raises(Exception):  # noqa: B017 - any validation error will do
        validate(document, cls=OpenAPIV2SpecValidator)


def schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(
        {"definitions": document["definitions"], "$ref": f"#/definitions/{name}"}
    )


@pytest.mark.parametrize(
    ("fixture", "schema"),
    [
        ("forms__submitted.json", "FormSubmission"),
        ("approvals__stage1_approved.json", "ApprovalDecision"),
        ("approvals__stage2_rejected.json", "ApprovalDecision"),
        ("approvals__two_responders.json", "ApprovalDecision"),
        ("signals__training_attended.json", "Signal"),
    ],
)
def test_documented_request_bodies_describe_the_fixtures(
    client: FlaskClient, fixture: str, schema: str
) -> None:
    document, _ = fetch(client, "/openapi-v2.json")
    schema_validator(document, schema).validate(json.loads((FIXTURES / fixture).read_text()))


def test_documented_notification_is_what_onrecord_posts(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi-v2.json")
    row = SimpleNamespace(
        id=7,
        object="leader.champion",
        occurred_at=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        record_key="actor/jane.doe@contoso.com",
        payload={"leader": "jane.doe@contoso.com", "period": "2026-11", "score": 0.92},
    )
    schema_validator(document, "Notification").validate(json.loads(json.dumps(notification_body(row))))
