"""What OnRecord answers is what its response models say (plugin/api_responses.py, and the Power
Automate connector's in its models.py): each real endpoint's answer validates against its model,
strictly (no coercion) and closed (no undescribed member), and dumps back to itself; the documents'
response definitions are generated from those models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import BaseModel, Field, ValidationError
from werkzeug.test import TestResponse

from connectors.power_automate.models import Connection, Notification, NotificationData, Subscription
from connectors.power_automate.subscriptions import notification_body
from plugin import openapi
from plugin.api_responses import (
    RESPONSE_MODELS,
    Approval,
    Citation,
    Error,
    InlinePart,
    Leaders,
    LogCheckpoint,
    Provenance,
    ReceiveResult,
    ResponseModel,
    SignalCounts,
    VerifyResult,
)
from plugin.app import create_app
from plugin.config import SIGNAL_KINDS
from plugin.openapi import model_schemas, openapi3, swagger2
from tests.conftest import make_config
from tests.connectors.power_automate.support import API_KEY, API_TOKEN, CALLBACK_KEY, CallbackReceiver
from tests.plugin.leaders.world import month_of_activity, prepare, store, world_config
from tests.plugin.provenance.support import RECORD as FIGURE_RECORD
from tests.plugin.provenance.support import api_client
from tests.plugin.rules.support import OBJ, RECORD, proven_chain, status_change
from tests.plugin.rules.support import form as form_response
from tests.plugin.test_approvals_view import AUTH as APPROVALS_AUTH
from tests.plugin.test_approvals_view import OTHER, T0, configure, run

TOKEN = "api-token-for-response-tests-0123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PA_FIXTURES = Path(__file__).resolve().parents[2] / "connectors" / "power_automate" / "fixtures"
WRONG: Any = [["not", "of", "this", "type"]]  # of no member's type (strings, numbers, objects, lists)
YOUNG = "a0B5g000003XyZdEAK"  # an approval-governed record with a form response only


def answer(model: type[BaseModel], resp: TestResponse, status: int) -> dict[str, Any]:
    """The answer's JSON, once its model accepts it and dumps it back unchanged."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = resp.json  # type: ignore[assignment]
    parsed = model.model_validate(body)
    # as JSON text, so that a number the model makes a float where the endpoint answers an integer
    # (1.0 for 1) shows too
    assert dumped(parsed.model_dump(mode="json", exclude_unset=True)) == dumped(body)
    return body


def dumped(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def refuses_what_it_does_not_describe(model: type[BaseModel], body: dict[str, Any]) -> None:
    """Without a required member, with a member of the wrong type, or with one more: refused."""
    for name, info in model.model_fields.items():
        if info.is_required():
            with pytest.raises(ValidationError):
                model.model_validate({k: v for k, v in body.items() if k != name})
        if name in body:
            with pytest.raises(ValidationError):
                model.model_validate({**body, name: WRONG})
    with pytest.raises(ValidationError):
        model.model_validate({**body, "undescribed": 1})


# -- provenance: the chain, the verdict, the citation, the checkpoint ---------------------------


@pytest.fixture
def provenance_client(sqlite_url: str, tmp_path: Path) -> FlaskClient:
    return api_client(sqlite_url, tmp_path, TOKEN)


def test_a_records_provenance_is_its_model(provenance_client: FlaskClient) -> None:
    resp = provenance_client.get(f"/api/provenance/Opportunity/{FIGURE_RECORD}", headers=AUTH)
    body = answer(Provenance, resp, 200)
    assert len(body["chain"]) == 2 and all(e["inclusion_proof"] for e in body["chain"])
    refuses_what_it_does_not_describe(Provenance, body)
    entry = body["chain"][0]
    with pytest.raises(ValidationError):  # a null reason is not how an entry says "verified"
        Provenance.model_validate({**body, "chain": [{**entry, "reason": None}]})
    with pytest.raises(ValidationError):  # a payload that is not base64
        Provenance.model_validate(
            {**body, "chain": [{**entry, "envelope": {**entry["envelope"], "payload": "%"}}]}
        )


@pytest.mark.parametrize("value", ["120000", 1])
def test_a_verdict_is_its_model(provenance_client: FlaskClient, value: Any) -> None:
    figure = {"object": "Opportunity", "id": FIGURE_RECORD, "field": "Amount", "value": value}
    body = answer(VerifyResult, provenance_client.post("/api/verify", json=figure, headers=AUTH), 200)
    assert body["verified"] is (value == "120000")
    refuses_what_it_does_not_describe(VerifyResult, body)


def test_a_citation_is_its_model(provenance_client: FlaskClient) -> None:
    figure = {"leader": "CFO@contoso.com", "object": "Opportunity", "id": FIGURE_RECORD, "field": "Amount"}
    resp = provenance_client.post("/api/citations", json={**figure, "value": "120000"}, headers=AUTH)
    body = answer(Citation, resp, 201)
    refuses_what_it_does_not_describe(Citation, body)
    signature = body["envelope"]["signatures"][0]
    with pytest.raises(ValidationError):  # the parts are closed too
        Citation.model_validate(
            {**body, "envelope": {**body["envelope"], "signatures": [{**signature, "x": 1}]}}
        )


def test_a_checkpoint_with_its_consistency_proof_is_its_model(provenance_client: FlaskClient) -> None:
    body = answer(
        LogCheckpoint, provenance_client.get("/api/provenance/checkpoint?from=1", headers=AUTH), 200
    )
    assert body["consistency_proof"]["from_size"] == 1
    refuses_what_it_does_not_describe(LogCheckpoint, body)
    with pytest.raises(ValidationError):
        LogCheckpoint.model_validate(
            {**body, "consistency_proof": {**body["consistency_proof"], "tree_size": "2"}}
        )


def test_every_refusal_is_an_error(provenance_client: FlaskClient) -> None:
    unknown = provenance_client.get("/api/provenance/Opportunity/0065g00000NoneAAA", headers=AUTH)
    assert answer(Error, unknown, 404)["reason"] == "not_recorded"
    assert answer(Error, provenance_client.get("/api/provenance/checkpoint?from=x", headers=AUTH), 400)
    refused = answer(Error, provenance_client.post("/api/verify", json={"object": "Opportunity"}), 401)
    refuses_what_it_does_not_describe(Error, refused)


# -- approvals ------------------------------------------------------------------------------------


@pytest.fixture
def approvals_client(sqlite_url: str, tmp_path: Path) -> FlaskClient:
    # the world of tests/plugin/test_approvals_view.py: one proven record, one approved in the hallway
    config = configure(sqlite_url, tmp_path)
    created = status_change(T0 - timedelta(hours=1), "Submitted", delivery="04l-created")
    run(config, [*proven_chain(T0), created, replace(created, record_id=OTHER, delivery_id="04l-o1")])
    run(config, [replace(status_change(T0 + timedelta(minutes=40), delivery="04l-hallway"), record_id=OTHER)])
    run(config, [form_response(T0, response_id=2, record=YOUNG)])  # a form response, nothing judged yet
    return create_app(config).test_client()


@pytest.mark.parametrize("record_id", [RECORD, OTHER])
def test_an_approval_is_its_model(approvals_client: FlaskClient, record_id: str) -> None:
    resp = approvals_client.get(f"/api/approvals/{OBJ}/{record_id}", headers=APPROVALS_AUTH)
    body = answer(Approval, resp, 200)
    # the proven record has its chain's stages; the one approved in the hallway, the change blocked
    assert body["chain"]["stages"] if record_id == RECORD else body["changes"]
    refuses_what_it_does_not_describe(Approval, body)
    for change in body["changes"]:
        with pytest.raises(ValidationError):
            Approval.model_validate({**body, "changes": [{**change, "reverted": "false"}]})
    for stage in body["chain"]["stages"]:
        with pytest.raises(ValidationError):
            Approval.model_validate(
                {**body, "chain": {**body["chain"], "stages": [{**stage, "approvers": None}]}}
            )


def test_an_approval_not_yet_judged_is_its_model_with_nulls(approvals_client: FlaskClient) -> None:
    # a form response only: no verdict, no note, no status yet; the members are there, null
    body = answer(
        Approval, approvals_client.get(f"/api/approvals/{OBJ}/{YOUNG}", headers=APPROVALS_AUTH), 200
    )
    assert (body["verdict"], body["note"], body["status_value"], body["changes"]) == (None, None, None, [])
    with pytest.raises(ValidationError):  # null, but not absent: it is required
        Approval.model_validate({k: v for k, v in body.items() if k != "verdict"})
    unseen = approvals_client.get(f"/api/approvals/{OBJ}/a0B5g000003XyZcEAK", headers=APPROVALS_AUTH)
    assert answer(Error, unseen, 404)["reason"] == "not_seen"


# -- leaders --------------------------------------------------------------------------------------


@pytest.fixture
def leaders_client(sqlite_url: str, tmp_path: Path) -> FlaskClient:
    config = world_config(sqlite_url, tmp_path, **{"api.tokens": [TOKEN]})
    store(prepare(config), month_of_activity())
    return create_app(config).test_client()


def test_the_leaders_are_their_model(leaders_client: FlaskClient) -> None:
    body = answer(Leaders, leaders_client.get("/api/leaders?period=2026-W47", headers=AUTH), 200)
    assert body["leaders"] and body["champions"]
    refuses_what_it_does_not_describe(Leaders, body)
    leader = body["leaders"][0]
    for bad in ({**leader["counts"], "coffee": 1}, {**leader["counts"], "login": 1.5}):
        with pytest.raises(ValidationError):
            Leaders.model_validate({**body, "leaders": [{**leader, "counts": bad}]})
    # from the CRM's configuration records, the answer names their version (and never as null)
    assert Leaders.model_validate({**body, "config_version": "3f2a"}).config_version == "3f2a"
    with pytest.raises(ValidationError):
        Leaders.model_validate({**body, "config_version": None})
    assert answer(Error, leaders_client.get("/api/leaders?period=2026-W99", headers=AUTH), 400)["reason"] == (
        "bad_period"
    )


def test_the_counts_are_one_integer_per_signal_kind_in_order() -> None:
    assert list(SignalCounts.model_fields) == list(SIGNAL_KINDS)
    assert {info.annotation for info in SignalCounts.model_fields.values()} == {int}
    assert all(info.is_required() for info in SignalCounts.model_fields.values())


# -- the Power Automate connector's answers -------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(tmp_path / "tls") as r:
        yield r


@pytest.fixture
def connector_client(sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver) -> FlaskClient:
    config = make_config(
        sqlite_url,
        tmp_path,
        **{
            "api.tokens": [API_TOKEN],
            "api.callback_key": [CALLBACK_KEY],
            "api.callback_hosts": [f"localhost:{receiver.port}"],
            "api.callback_allow_private_addresses": True,
            "api.callback_ca_bundle": str(receiver.ca_file),
            "power_automate.api_key": [API_KEY],
        },
    )
    return create_app(config).test_client()


def test_a_subscription_and_the_test_connection_are_their_models(
    connector_client: FlaskClient, receiver: CallbackReceiver
) -> None:
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    wanted = {"callback_url": receiver.url(), "events": ["approval.blocked", "leader.champion"]}
    body = answer(Subscription, connector_client.post("/api/subscriptions", json=wanted, headers=auth), 201)
    refuses_what_it_does_not_describe(Subscription, body)
    for bad in ({**body, "events": ["coffee"]}, {**body, "created_at": "2026-11-26T10:00:00"}):
        with pytest.raises(ValidationError):  # not a topic; a date-time without its offset
            Subscription.model_validate(bad)
    refuses_what_it_does_not_describe(
        Connection, answer(Connection, connector_client.get("/api/connection", headers=auth), 200)
    )
    assert answer(Error, connector_client.get("/api/connection"), 401)["reason"] == "missing_token"


def test_a_hooks_acknowledgement_is_its_model(connector_client: FlaskClient) -> None:
    def post(body: bytes) -> TestResponse:
        headers = {"Content-Type": "application/json", "X-OnRecord-Key": API_KEY}
        return connector_client.post("/hooks/power-automate/forms", data=body, headers=headers)

    submitted = (PA_FIXTURES / "forms__submitted.json").read_bytes()
    assert answer(ReceiveResult, post(submitted), 200) == {"stored": 1, "duplicates": 0, "ignored": 0}
    body = answer(ReceiveResult, post(submitted), 200)
    assert body["duplicates"] == 1
    refuses_what_it_does_not_describe(ReceiveResult, body)
    answer(Error, post(b"[]"), 400)


def test_a_notification_is_its_model() -> None:
    row = SimpleNamespace(
        id=7,
        object="approval.blocked",
        occurred_at=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        record_key=f"{OBJ}/{RECORD}",
        payload={"object": OBJ, "record_id": RECORD, "verdict": "Blocked", "actor": None, "changed_at": "x"},
    )
    body = json.loads(json.dumps(notification_body(row)))
    assert dumped(Notification.model_validate(body).model_dump(mode="json", exclude_unset=True)) == dumped(
        body
    )
    refuses_what_it_does_not_describe(Notification, body)
    with pytest.raises(ValidationError):  # the data is open to more members, not to wrong types
        NotificationData.model_validate({"score": "high"})


# -- the documents, generated from the models -----------------------------------------------------


def test_each_documented_answer_is_its_model_in_both_documents() -> None:
    v2 = swagger2("https://onrecord.contoso.com")["definitions"]
    v3 = openapi3("https://onrecord.contoso.com")["components"]["schemas"]
    for name in ("Signature", "ConsistencyProof", "SignalCounts"):  # parts, inline where used
        assert name not in v2 and name not in v3
    for model in (*RESPONSE_MODELS, Subscription, Connection, Notification):
        for definitions in (v2, v3):
            definition = definitions[model.__name__]
            assert definition["type"] == "object" and definition["description"] == model.__doc__
            assert list(definition["properties"]) == list(model.model_fields)
            assert definition["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
            assert "additionalProperties" not in definition  # closed in the tests, open to callers
    counts = v2["LeaderSignals"]["properties"]["counts"]
    assert counts["description"] == SignalCounts.__doc__ and counts["required"] == list(SIGNAL_KINDS)
    assert counts["x-ms-summary"] == "Counts" and counts["properties"]["login"]["x-ms-summary"] == "Login"
    assert v2["NotificationData"]["additionalProperties"] is True
    assert (
        v2["Approval"]["properties"]["verdict"]["x-nullable"],
        v3["Approval"]["properties"]["verdict"]["nullable"],
    ) == (True, True)
    assert "x-nullable" not in v2["Leaders"]["properties"]["config_version"]
    assert v2["Subscription"]["properties"]["created_at"]["format"] == "date-time"
    assert v2["Envelope"]["properties"]["payload"]["format"] == "byte"


class Part(InlinePart):
    """A part."""

    size: int = Field(description="How big.")


class Whole(ResponseModel):
    """A whole."""

    part: Part
    parts: list[Part] = Field(description="More of them.")


def test_a_part_is_inlined_where_it_is_used() -> None:
    assert model_schemas((Whole,)) == {
        "Whole": {
            "type": "object",
            "description": "A whole.",
            "properties": {
                "part": {
                    "type": "object",
                    "description": "A part.",
                    "properties": {"size": {"type": "integer", "description": "How big."}},
                    "required": ["size"],
                },
                "parts": {
                    "type": "array",
                    "description": "More of them.",
                    "items": {
                        "type": "object",
                        "description": "A part.",
                        "properties": {"size": {"type": "integer", "description": "How big."}},
                        "required": ["size"],
                    },
                },
            },
            "required": ["part", "parts"],
        }
    }


def test_two_schemas_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Error(ResponseModel):  # a connector's own, beside the core's
        """Another Error."""

        detail: str

    monkeypatch.setattr(openapi, "connector_models", lambda: (Error,))
    with pytest.raises(ValueError, match="schemas defined twice"):
        openapi.schemas()
