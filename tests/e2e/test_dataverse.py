"""Dataverse end to end, as an admin runs it: `provision --crm dataverse --deploy` creates
OnRecord's tables and columns in the (emulated) environment, then real gunicorn takes Dataverse's
webhook bodies, the real worker applies the same rules as for Salesforce, and the dispatcher
writes back through the Web API: signed provenance on the record, and an approval given outside
the form reverted and flagged, with its violation record."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from plugin.provenance.keys import KeyStore, keys_from_jwks
from plugin.provenance.verify import verify_chain
from tests.conftest import TEST_SECRET
from tests.dvemu import DataverseEmulator
from tests.support.processes import ROOT, Process, Server, onrecord_env, run_plugin, wait_for

pytestmark = pytest.mark.slow

KEY = "e2e-dataverse-webhook-key-0123456789"
API_TOKEN = "e2e-dataverse-api-token-0123456789"
FIXTURES = ROOT / "connectors" / "dataverse" / "fixtures"
RECORD = "b2f3c0de-8e1f-ef11-9f89-000d3a4a1c2b"  # the fixture's PrimaryEntityId
EDITOR = "3b7c1e52-6c1c-ef11-9f89-000d3a4a1c2b"  # the fixture's UserId
GOVERNED = [
    {
        "object": "opportunity",
        "crm": "dataverse",
        "fields": ["name", "estimatedvalue"],
        "approval_field": "new_approvalstatus",
        "approval_field_type": "text",
        "approved_values": ["Approved"],
        "revert_to": "Submitted",
        "form_id": "budget-form",
        "stages": [{"name": "Finance", "approvers": ["finance@contoso.com"]}],
        "grace_seconds": 0,
    }
]


@pytest.fixture
def dv() -> Iterator[DataverseEmulator]:
    with DataverseEmulator() as emulator:
        with emulator.state.lock:
            emulator.state.add_attributes("opportunity", {"new_approvalstatus": {"AttributeType": "String"}})
        emulator.add_user("Ana Ruiz", user_id=EDITOR, email="ana.ruiz@contoso.com")
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def env(dv: DataverseEmulator, sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    var = tmp_path / "var"
    KeyStore(var / "keys").create(datetime.now(UTC))  # what `init` does
    return onrecord_env(
        sqlite_url,
        var,
        TEST_SECRET,
        ONRECORD_WORKER__RULES=json.dumps(["plugin.rules:builtin_rules"]),
        ONRECORD_GOVERNED=json.dumps(GOVERNED),
        ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
        ONRECORD_DATAVERSE__URL=dv.url,
        ONRECORD_DATAVERSE__TENANT_ID=dv.tenant_id,
        ONRECORD_DATAVERSE__CLIENT_ID=dv.client_id,
        ONRECORD_DATAVERSE__CLIENT_SECRET=dv.client_secret,
        ONRECORD_DATAVERSE__AUTHORITY_HOST=dv.url,
        ONRECORD_DATAVERSE__CA_BUNDLE=dv.ca_path,
        ONRECORD_DATAVERSE__APPLICATION_USER_ID=dv.application_user_id,
        ONRECORD_DATAVERSE__WEBHOOK_KEY=KEY,
    )


def body(message: str, attributes: list[dict[str, Any]]) -> bytes:
    """A webhook body in Dataverse's format (the published Create sample's shape) for this record."""
    context = json.loads((FIXTURES / "opportunity_create__target_only.json").read_text())
    context = copy.deepcopy(context)
    context["MessageName"] = message
    context["OperationId"] = str(uuid.uuid4())
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    context["OperationCreatedOn"] = f"/Date({now_ms})/"
    context.pop("ParentContext", None)
    target = next(p for p in context["InputParameters"] if p["key"] == "Target")
    target["value"]["Attributes"] = attributes
    target["value"]["FormattedValues"] = []
    return json.dumps(context).encode()


def post(server: Server, payload: bytes) -> requests.Response:
    return requests.post(
        f"{server.url}/hooks/dataverse?code={KEY}",
        data=payload,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def test_provision_then_provenance_and_an_off_system_approval_in_dataverse(
    dv: DataverseEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    first = run_plugin(
        "provision", "--crm", "dataverse", "--deploy", "--out", str(tmp_path / "plan"), env=env
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created table onr_violation" in first.stdout, first.stdout
    again = run_plugin(
        "provision", "--crm", "dataverse", "--deploy", "--out", str(tmp_path / "plan"), env=env
    )
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout

    check = run_plugin("check", env=env)
    assert "CRM writer (dataverse) dataverse: " in check.stdout, check.stdout
    people = run_plugin("directory", "--refresh", "--crm", "dataverse", env=env)
    assert people.returncode == 0 and "refreshed from Dataverse: 2 users" in people.stdout, people.stdout
    assert "Ana Ruiz" in people.stdout
    logins = run_plugin("poll", "logins", "--crm", "dataverse", env=env)
    assert logins.returncode == 0 and "found 0 interactive logins; auditing read up to" in logins.stdout

    with dv.state.lock:
        dv.state.tables["opportunities"][RECORD] = {"opportunityid": RECORD, "name": "Fabrikam fleet renewal"}
    server = Server(env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    try:
        amount = {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 92500.5}
        change = [
            {"key": "name", "value": "Fabrikam fleet renewal"},
            {"key": "estimatedvalue", "value": amount},
            {"key": "new_approvalstatus", "value": "Submitted"},  # not approved yet: OnRecord saw it
        ]
        resp = post(server, body("Update", change))
        assert resp.status_code == 200 and resp.json()["stored"] == 1, resp.text

        signed = wait_for(lambda: (r := dv.record("opportunities", RECORD)) and r.get("onr_signature") and r)
        assert signed["onr_digest"] and signed["onr_channel"] in ("UI", "API")
        chain = requests.get(
            f"{server.url}/api/provenance/opportunity/{RECORD}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=30,
        ).json()
        jwks = requests.get(f"{server.url}/.well-known/onrecord-keys.json", timeout=30).json()
        assert verify_chain(chain["chain"], keys_from_jwks(jwks), chain["checkpoint"]).verified

        # Ana sets the approval herself: no form, no Finance stage. Blocked, reverted, flagged.
        resp = post(server, body("Update", [{"key": "new_approvalstatus", "value": "Approved"}]))
        assert resp.status_code == 200 and resp.json()["stored"] == 1, resp.text
        blocked = wait_for(
            lambda: (r := dv.record("opportunities", RECORD)) and r.get("onr_approval") == "Blocked" and r,
            timeout=60,
        )
        assert blocked["new_approvalstatus"] == "Submitted"
        assert "form" in blocked["onr_approval_note"].lower()
        violations = wait_for(lambda: list(dv.state.tables.get("onr_violations", {}).values()))
        assert violations[0]["onr_verdict"] == "Blocked"
        assert violations[0]["onr_record_id"] == RECORD
        assert violations[0].get("_onr_actor_value", violations[0].get("onr_actor")) == EDITOR

        # OnRecord's own write-back comes back through the webhook as the application user: ignored.
        own = json.loads(body("Update", [{"key": "new_approvalstatus", "value": "Submitted"}]))
        own["UserId"] = own["InitiatingUserId"] = dv.application_user_id
        resp = post(server, json.dumps(own).encode())
        assert resp.json() == {"stored": 0, "duplicates": 0, "ignored": 1}, resp.text

        shown = run_plugin("outbox", "--json", env=env)
        targets = {
            row["target"] for status in ("pending", "sent") for row in json.loads(shown.stdout)[status]
        }
        assert "dataverse" in targets, shown.stdout
    finally:
        server.stop()
        worker.stop()


def test_one_onrecord_serves_a_salesforce_object_and_a_dataverse_table_at_once(
    dv: DataverseEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    from tests.connectors.salesforce.emulated_org import connect, key_file, server_environment
    from tests.connectors.salesforce.outbound_messages import ORG_ID, envelope, notification
    from tests.dvemu.model import provision
    from tests.sfemu import SalesforceEmulator, make_consumer_keypair

    keypair = make_consumer_keypair()
    with SalesforceEmulator() as sf:
        connect(sf, keypair)
        with dv.state.lock:
            provision(dv.state)
            dv.state.tables["opportunities"][RECORD] = {
                "opportunityid": RECORD,
                "name": "Fabrikam fleet renewal",
            }
        both = [
            {"object": "Opportunity", "fields": ["Amount", "Name"]},
            {**GOVERNED[0], "approval_field": ""},
        ]
        for key in ("approved_values", "revert_to", "form_id", "stages", "grace_seconds"):
            both[1].pop(key)
        both[1].pop("approval_field_type")
        token = "e2e-outbound-token-0123456789abcdef"
        env = {**env, "ONRECORD_GOVERNED": json.dumps(both), **server_environment(sf, ORG_ID, token)}
        Path(env["ONRECORD_CONFIG"]).write_text(
            f'[salesforce]\nprivate_key_file = "{key_file(keypair, tmp_path)}"\n'
        )
        check = run_plugin("check", env=env)
        assert (
            "CRM writer salesforce: " in check.stdout and "CRM writer (dataverse) dataverse: " in check.stdout
        )

        server = Server(env, tmp_path / "serve.log", worker=True)  # as shipped: serve runs the worker
        try:
            sf_record = sf.insert_record("Opportunity", {"Name": "Acme renewal", "Amount": 120000.0})
            saved = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            fields = {
                "Amount": "120000.00",
                "LastModifiedById": "0055g00000EditorAA",
                "LastModifiedDate": saved,
            }
            message = envelope([notification(0, {**fields, "Name": "Acme renewal"}, record_id=sf_record)])
            resp = requests.post(
                f"{server.url}/hooks/salesforce/outbound?token={token}",
                data=message,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
                timeout=30,
            )
            assert resp.status_code == 200 and b"<Ack>true</Ack>" in resp.content, resp.text
            amount = {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 92500.5}
            resp = post(server, body("Update", [{"key": "estimatedvalue", "value": amount}]))
            assert resp.status_code == 200 and resp.json()["stored"] == 1, resp.text

            in_salesforce = wait_for(
                lambda: (r := sf.record("Opportunity", sf_record)) and r.get("OnRecord_Digest__c") and r
            )
            in_dataverse = wait_for(
                lambda: (r := dv.record("opportunities", RECORD)) and r.get("onr_digest") and r
            )
            assert in_salesforce["OnRecord_Signature__c"] and in_dataverse["onr_signature"]
            # each CRM got only its own record's writes
            assert not [c for c in dv.state.calls if "Opportunity" in c.path]
            shown = json.loads(run_plugin("outbox", "--json", env=env).stdout)
            assert {row["target"] for row in shown["sent"]} >= {"salesforce", "dataverse"}
        finally:
            server.stop()
        assert sf.errors == []
