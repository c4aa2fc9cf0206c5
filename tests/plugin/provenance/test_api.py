"""The provenance API: keys, chains, the verdict and the sentence, citations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from plugin.inbox import insert_events
from plugin.provenance.keys import keys_from_jwks
from plugin.provenance.verify import verify_chain
from plugin.rules import load_rules
from plugin.storage import begin_write, dryrun_records, get_engine, inbox
from plugin.worker import Worker

from .support import RECORD, api_client, changed

TOKEN = "api-token-for-provenance-tests-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> FlaskClient:
    return api_client(db_url, tmp_path, TOKEN)


def verify(client: FlaskClient, value: Any, field: str = "Amount") -> dict[str, Any]:
    body = {"object": "Opportunity", "id": RECORD, "field": field, "value": value}
    resp = client.post("/api/verify", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.json
    result: dict[str, Any] = resp.json  # type: ignore[assignment]
    return result


def test_the_chain_verifies_offline_with_the_published_keys(client: FlaskClient) -> None:
    resp = client.get(f"/api/provenance/Opportunity/{RECORD}", headers=AUTH)
    assert resp.status_code == 200
    body = resp.json
    assert [e["verified"] for e in body["chain"]] == [True, True]
    assert all(e["inclusion_proof"]["tree_size"] == 2 for e in body["chain"])
    keys = keys_from_jwks(client.get("/.well-known/onrecord-keys.json").json)  # public, no token
    assert verify_chain(body["chain"], keys, body["checkpoint"], "onrecord.local/provenance").verified


def test_the_true_figure_is_verified_with_the_sentence_to_say(client: FlaskClient) -> None:
    for quoted in (120000, "120,000", 120000.0, "120000"):
        result = verify(client, quoted)
        assert result["verified"] is True and result["reason"] == ""
    assert result["statement"] == (
        "CRM shows that Opportunity 'Acme renewal' Amount is 120,000 — entered through form "
        "'Budget Request' (response 123) on 26 Nov 2026, recorded by OnRecord."
    )


def test_a_false_figure_is_refused_with_the_reason(client: FlaskClient) -> None:
    result = verify(client, 150000)
    assert (result["verified"], result["reason"]) == (False, "value_differs")
    assert "120,000, not 150,000" in result["statement"]
    assert verify(client, "x", field="Probability")["reason"] == "change_not_recorded"


def test_a_value_changed_in_the_crm_without_a_record_is_named(client: FlaskClient, db_url: str) -> None:
    # Someone edits the CRM's Amount and the change never reaches OnRecord.
    with begin_write(get_engine(db_url)) as conn:
        conn.execute(
            dryrun_records.insert().values(
                object="Opportunity",
                record_key=RECORD,
                fields={"Amount": 999.0},
                updated_at=datetime.now(UTC),
            )
        )
    result = verify(client, 120000)
    assert (result["verified"], result["reason"]) == (False, "change_not_recorded")
    assert "now shows Opportunity 'Acme renewal' Amount as 999" in result["statement"]


def test_a_citation_is_signed_logged_and_counted_as_a_leader_signal(client: FlaskClient, db_url: str) -> None:
    body = {
        "leader": "CFO@contoso.com",
        "object": "Opportunity",
        "id": RECORD,
        "field": "Amount",
        "value": "120,000",
        "occasion": "Weekly pipeline review",
    }
    resp = client.post("/api/citations", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.json
    cited = resp.json
    keys = keys_from_jwks(client.get("/.well-known/onrecord-keys.json").json)
    check = verify_chain([{"envelope": cited["envelope"]}], keys)
    predicate = check.entries[0].statement["predicate"]  # type: ignore[index]
    assert predicate["leader"] == "cfo@contoso.com" and predicate["verified"] is True
    with get_engine(db_url).connect() as conn:
        signal = conn.execute(sa.select(inbox).where(inbox.c.kind == "citation.made")).one()
    assert (signal.actor, signal.delivery_id, signal.status) == ("cfo@contoso.com", cited["id"], "pending")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", f"/api/provenance/Opportunity/{RECORD}", None),
        ("post", "/api/verify", {"object": "Opportunity", "id": RECORD, "field": "Amount", "value": 1}),
        ("post", "/api/citations", {}),
    ],
)
def test_the_api_needs_a_token(client: FlaskClient, method: str, path: str, body: Any) -> None:
    assert getattr(client, method)(path, json=body).status_code == 401


def test_bad_requests_and_unknown_records(client: FlaskClient) -> None:
    assert client.post("/api/verify", json={"object": "Opportunity"}, headers=AUTH).status_code == 400
    assert client.get("/api/provenance/Opportunity/0065g00000NoneAAA", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", ["/api/verify", "/api/citations"])
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"object": "Opportunity", "id": "'
            + RECORD.encode()
            + b'", "field": "Amount", "value": NaN, "leader": "a@b.co"}',
            id="NaN",
        ),
        pytest.param(
            b'{"object": "Opportunity", "id": "'
            + RECORD.encode()
            + b'", "field": "Amount", "value": 1e400, "leader": "a@b.co"}',
            id="1e400",
        ),
        pytest.param(
            b'{"object": "Opportunity", "object": "Account", "id": "x", "field": "Amount", "value": 1}',
            id="duplicate key",
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100,000-deep"),
        pytest.param(b'{"value": ' + b"9" * 5000 + b"}", id="5,000-digit integer"),
    ],
)
def test_a_hostile_figure_request_is_400_naming_the_problem(
    client: FlaskClient, path: str, raw: bytes
) -> None:
    resp = client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.json
    assert resp.json["reason"] == "bad_request" and resp.json["error"]


def test_a_15_character_id_verifies_the_18_character_record(client: FlaskClient) -> None:
    from connectors.salesforce.ids import to_18

    rt = client.application.extensions["onrecord"]
    record = to_18("0065g00000Zeta1")
    with begin_write(rt.engine) as conn:
        insert_events(conn, [changed(5, record_id=record, Amount="75000.00")], datetime.now(UTC))
    Worker(rt.engine, load_rules(rt.config)).run_once()
    body = {"object": "Opportunity", "id": record[:15], "field": "Amount", "value": "75,000"}
    resp = client.post("/api/verify", json=body, headers=AUTH)
    assert resp.status_code == 200 and resp.json["verified"] is True, resp.json
    chain = client.get(f"/api/provenance/Opportunity/{record[:15]}", headers=AUTH)
    assert chain.status_code == 200 and chain.json["record_id"] == record
