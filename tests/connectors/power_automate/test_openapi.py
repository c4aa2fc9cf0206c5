"""GET /openapi-v2.json (Power Automate custom connector) and /openapi.json (Salesforce External
Services): valid per a real validator, from one source, and true to what OnRecord accepts and posts."""

from __future__ import annotations

import json
import re
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
# Microsoft's published JSON Schema of a connector's apiDefinition.swagger.json, as its validator
# uses it: github.com/microsoft/PowerPlatformConnectors, schemas/apiDefinition.swagger.schema.json
# at commit 8bff86eac6d04e939faee0de15298e911b118c21 (kept byte for byte, "// TODO" lines included).
API_DEFINITION_SCHEMA = Path(__file__).with_name("apiDefinition.swagger.schema.json")
# The operations a Salesforce Flow uses (connectors/salesforce/README.md names them).
FLOW_OPERATIONS = {"GetApproval", "GetProvenance", "VerifyFigure", "CiteFigure", "ListLeaders"}
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
    ("get", "/api/connection"),
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


def nullable(value: Any) -> Any:
    """Swagger 2.0's x-nullable as JSON Schema: a type that also allows null."""
    if isinstance(value, dict):
        out = {k: nullable(v) for k, v in value.items()}
        if out.get("x-nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(value, list):
        return [nullable(v) for v in value]
    return value


def schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(
        {"definitions": nullable(document["definitions"]), "$ref": f"#/definitions/{name}"}
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


def api_definition_schema() -> dict[str, Any]:
    # The published file has three "// TODO" comment lines, which JSON does not allow.
    text = re.sub(r"(?m)^\s*//.*$", "", API_DEFINITION_SCHEMA.read_text(encoding="utf-8"))
    schema: dict[str, Any] = json.loads(text)
    return schema


def schemas_in(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, schema) for every schema of the document that is not a bare $ref."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(where: str, schema: Any) -> None:
        if not isinstance(schema, dict) or "$ref" in schema:
            return
        found.append((where, schema))
        for name, prop in schema.get("properties", {}).items():
            walk(f"{where}.{name}", prop)
        walk(f"{where}[]", schema.get("items"))
        if isinstance(schema.get("additionalProperties"), dict):
            walk(f"{where}{{}}", schema["additionalProperties"])

    for name, schema in document["definitions"].items():
        walk(name, schema)
    for (method, path), op in operations(document).items():
        for param in op["parameters"]:
            walk(f"{method} {path} {param['name']}", param.get("schema"))
    return found


def test_swagger2_is_valid_per_the_connectors_published_api_definition_schema(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi-v2.json")
    validator = jsonschema.Draft4Validator(api_definition_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    broken = json.loads(json.dumps(document))
    broken["x-ms-capabilities"]["testConnection"] = {"parameters": {}}  # no operationId
    assert not validator.is_valid(broken)


def test_the_publishers_e_mail_and_privacy_policy_are_the_deployments_own(
    sqlite_url: str, tmp_path: Path, client: FlaskClient
) -> None:
    # Unset (the default): nothing made up, and no empty e-mail for the schema's "format": "email".
    document, _ = fetch(client, "/openapi-v2.json")
    assert "email" not in document["info"]["contact"]
    assert "Privacy policy" not in {m["propertyName"] for m in document["x-ms-connector-metadata"]}
    config = make_config(
        sqlite_url,
        tmp_path,
        **{
            "api.public_url": "https://onrecord.contoso.com",
            "api.contact_email": "crm-admins@contoso.com",
            "api.privacy_url": "https://www.contoso.com/privacy",
        },
    )
    document, _ = fetch(create_app(config).test_client(), "/openapi-v2.json")
    assert document["info"]["contact"] == {
        "name": "OnRecord",
        "url": "https://onrecord.contoso.com",
        "email": "crm-admins@contoso.com",
    }
    assert document["x-ms-connector-metadata"] == [
        {"propertyName": "Website", "propertyValue": "https://onrecord.contoso.com"},
        {"propertyName": "Privacy policy", "propertyValue": "https://www.contoso.com/privacy"},
        {"propertyName": "Categories", "propertyValue": "Sales and CRM;Business Management"},
    ]
    # Still valid per Microsoft's published schema, its formats ("email", "uri") checked too.
    validator = jsonschema.Draft4Validator(
        api_definition_schema(), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
    assert [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)] == []
    validate(document, cls=OpenAPIV2SpecValidator)
    broken = json.loads(json.dumps(document))
    broken["info"]["contact"]["email"] = "crm-admins"  # what api.contact_email refuses
    assert not validator.is_valid(broken)


def test_swagger2_is_what_the_designer_needs(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi-v2.json")
    ops = operations(document)
    for (method, path), op in ops.items():
        for param in op["parameters"]:
            assert param.get("x-ms-summary"), (method, path, param["name"])
            if param["in"] == "path":
                assert param["x-ms-url-encoding"] == "single", (method, path, param["name"])
        for status, response in op["responses"].items():
            for name, header in response.get("headers", {}).items():
                assert header.get("x-ms-summary"), (method, path, status, name)
    for where, schema in schemas_in(document):
        assert schema.get("type"), where
        assert schema.get("x-ms-summary") or "[]" in where.rsplit(".", 1)[-1], where
    test = document["x-ms-capabilities"]["testConnection"]["operationId"]
    ((method, path),) = [k for k, op in ops.items() if op["operationId"] == test]
    assert (method, path) == ("get", "/api/connection") and "security" not in ops[(method, path)]
    assert ops[(method, path)]["x-ms-visibility"] == "internal"
    metadata = {m["propertyName"]: m["propertyValue"] for m in document["x-ms-connector-metadata"]}
    assert metadata["Website"] == "https://onrecord.contoso.com" and metadata["Categories"]
    assert document["info"]["contact"]["name"] and document["info"]["contact"]["url"]
    for product in ("Power Automate", "Salesforce", "Microsoft", "Dynamics", "Forms"):
        assert product not in document["info"]["description"]


def test_test_connection_needs_the_token_and_does_nothing(client: FlaskClient) -> None:
    assert client.get("/api/connection").status_code in {401, 503}


SALESFORCE_README = Path(__file__).resolve().parents[3] / "connectors" / "salesforce" / "README.md"


def flow_problems(document: dict[str, Any], operation_ids: set[str]) -> list[str]:
    """Where the OpenAPI 3.0 operations ``operation_ids`` use a schema a Flow cannot: a free-form
    map (``additionalProperties`` other than false, or an object with no fixed properties, which
    External Services turns into an Apex Map that Flow variables cannot hold), a list of lists
    (List<List<T>>, not allowed on an Apex-defined Flow variable) or a schema without a type.
    Walks every schema those operations reach: parameters, request and response bodies, $refs."""
    schemas = document["components"]["schemas"]
    problems: list[str] = []
    seen: set[str] = set()

    def walk(where: str, schema: Any) -> None:
        if not isinstance(schema, dict):
            return
        target = schema.get("$ref")
        if isinstance(target, str):
            name = target.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                walk(name, schemas[name])
            return
        kind = schema.get("type")
        if not kind:
            problems.append(f"{where}: no type")
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            problems.append(f"{where}: a map (additionalProperties {extra!r})")
        elif kind == "object" and not schema.get("properties"):
            problems.append(f"{where}: an object without fixed properties")
        items = schema.get("items")
        if kind == "array" and isinstance(items, dict):
            item = schemas[items["$ref"].rsplit("/", 1)[1]] if "$ref" in items else items
            if item.get("type") == "array":
                problems.append(f"{where}: a list of lists")
        for name, prop in schema.get("properties", {}).items():
            walk(f"{where}.{name}", prop)
        walk(f"{where}[]", items)
        if isinstance(extra, dict):
            walk(f"{where}{{}}", extra)

    for op in operations(document).values():
        if op["operationId"] not in operation_ids:
            continue
        where = op["operationId"]
        for param in op.get("parameters", []):
            walk(f"{where} {param['name']}", param.get("schema"))
        for media in op.get("requestBody", {}).get("content", {}).values():
            walk(f"{where} body", media.get("schema"))
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                walk(f"{where} {status}", media.get("schema"))
    return problems


def test_the_salesforce_readme_names_the_flow_operations_and_the_encoded_field_names() -> None:
    text = SALESFORCE_README.read_text(encoding="utf-8")
    section = text.split("## External Services (Flow actions)", 1)[1].split("\n## ", 1)[0]
    selected = set(re.findall(r"(?m)^\| `(\w+)` \|", section))
    assert selected == FLOW_OPERATIONS
    for encoded in ("`z0object`", "`recordx5fid`"):
        assert encoded in section


def test_operations_for_salesforce_flow_have_no_free_form_maps(client: FlaskClient) -> None:
    document, _ = fetch(client, "/openapi.json")
    assert {op["operationId"] for op in operations(document).values()} >= FLOW_OPERATIONS
    assert flow_problems(document, FLOW_OPERATIONS) == []
    # The webhooks Flow is told to leave out do carry maps (a form's answers): the walk finds them.
    assert any("FormSubmission.answers: a map" in p for p in flow_problems(document, {"SubmitForm"}))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            {"type": "object", "additionalProperties": {"type": "integer"}},
            "LeaderSignals.counts: a map",
            id="LeaderSignals.counts as the map it was",
        ),
        pytest.param({"type": "object"}, "LeaderSignals.counts: an object without", id="bare object"),
        pytest.param(
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "LeaderSignals.counts: a list of lists",
            id="list of lists",
        ),
        pytest.param({"description": "anything"}, "LeaderSignals.counts: no type", id="no type"),
    ],
)
def test_the_flow_walk_finds_what_flow_cannot_use(
    client: FlaskClient, change: dict[str, Any], problem: str
) -> None:
    document, _ = fetch(client, "/openapi.json")
    document["components"]["schemas"]["LeaderSignals"]["properties"]["counts"] = change
    assert any(p.startswith(problem) for p in flow_problems(document, {"ListLeaders"}))
