"""Provenance end to end through real HTTP: a form response and an outbound message into real
gunicorn, the real worker signs and writes the provenance fields to the Salesforce emulator, and
/api/verify says yes to the true figure and no, with the reason, to a false one or to a CRM value
changed behind OnRecord's back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from plugin.provenance.dsse import open_envelope
from plugin.provenance.keys import KeyStore, keys_from_jwks
from plugin.provenance.verify import verify_chain
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY
from tests.connectors.salesforce.emulated_org import connect, key_file, server_environment
from tests.connectors.salesforce.outbound_messages import ORG_ID, envelope, notification
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.support.processes import ROOT, Process, Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow

TOKEN = "e2e-outbound-token-0123456789abcdef"
API_TOKEN = "e2e-provenance-api-token-0123456789"
EDITOR = "0055g00000EditorAA"  # the user the flow's connection writes as


@pytest.fixture
def emu() -> Iterator[SalesforceEmulator]:
    keypair = make_consumer_keypair()
    with SalesforceEmulator() as emulator:
        connect(emulator, keypair)
        emulator.keypair = keypair  # type: ignore[attr-defined]
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def running(emu: SalesforceEmulator, sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    keypair: KeyPair = emu.keypair  # type: ignore[attr-defined]
    var = tmp_path / "var"
    KeyStore(var / "keys").create(datetime.now(UTC))  # what `init` does
    env = onrecord_env(
        sqlite_url,
        var,
        TEST_SECRET,
        ONRECORD_WORKER__RULES=json.dumps(["plugin.rules:builtin_rules"]),
        ONRECORD_GOVERNED=json.dumps([{"object": "Opportunity", "fields": ["Amount", "StageName"]}]),
        ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
        ONRECORD_POWER_AUTOMATE__API_KEY=API_KEY,
        **server_environment(emu, ORG_ID, TOKEN),
    )
    Path(env["ONRECORD_CONFIG"]).write_text(
        f'[salesforce]\nprivate_key_file = "{key_file(keypair, tmp_path)}"\n'
    )
    server = Server(env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    try:
        yield server
    finally:
        server.stop()
        worker.stop()


def api(server: Server, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    return requests.request(method, server.url + path, headers=headers, timeout=30, **kw)


def test_outbound_message_to_signed_fields_in_salesforce_to_a_verdict(
    emu: SalesforceEmulator, running: Server
) -> None:
    record_id = emu.insert_record("Opportunity", {"Name": "Acme renewal", "Amount": 120000.0})
    submitted = datetime(2026, 11, 26, 9, 14, tzinfo=UTC)
    form = {
        "form_id": "budget-request",
        "form_name": "Budget Request",
        "response_id": 123,
        "responder": "ana.ruiz@contoso.com",
        "submitted_at": submitted.isoformat().replace("+00:00", "Z"),
        "record": {"object": "Opportunity", "id": record_id},
        "answers": {"Amount": "120000"},
        "flow_run_id": "08584732894726129482736102947CU31",
    }
    resp = requests.post(
        running.url + "/hooks/power-automate/forms",
        json=form,
        headers={"X-OnRecord-Key": API_KEY},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    saved = (submitted + timedelta(minutes=1)).isoformat().replace("+00:00", ".000Z")
    fields = {
        "Amount": "120000.00",
        "LastModifiedById": EDITOR,
        "LastModifiedDate": saved,
        "Name": "Acme renewal",
    }
    message = envelope([notification(0, fields, record_id=record_id)])
    resp = requests.post(
        f"{running.url}/hooks/salesforce/outbound?token={TOKEN}",
        data=message,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        timeout=30,
    )
    assert resp.status_code == 200 and b"<Ack>true</Ack>" in resp.content

    def provenance_written() -> dict[str, Any] | None:
        record = emu.record("Opportunity", record_id)
        return record if record and record.get("OnRecord_Channel__c") else None

    record = wait_for(provenance_written, timeout=30)
    assert record["OnRecord_Channel__c"] == "Form"
    assert (
        record["OnRecord_Source__c"]
        == "Form 'Budget Request' response 123 · flow run 08584732894726129482736102947CU31"
    )
    assert record["OnRecord_Digest__c"].startswith("sha256:") and record["OnRecord_Recorded_At__c"]
    # The record carries its own proof: its envelope verifies with the published keys alone.
    keys = keys_from_jwks(requests.get(running.url + "/.well-known/onrecord-keys.json", timeout=30).json())
    statement = json.loads(open_envelope(json.loads(record["OnRecord_Signature__c"]), keys)[0])
    assert statement["subject"][0]["name"] == f"Opportunity/{record_id}"

    chain = api(running, "GET", f"/api/provenance/Opportunity/{record_id}").json()
    assert verify_chain(chain["chain"], keys, chain["checkpoint"]).verified
    # An auditor's machine: nothing but the URL, a token and the published keys.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    env |= {
        "ONRECORD_CONFIG": str(Path(running.log_path).parent / "var" / "none.toml"),
        "PYTHONPATH": str(ROOT),
    }
    args = ["verify", "--record", f"Opportunity/{record_id}", "--url", running.url, "--token", API_TOKEN]
    audit = subprocess.run(
        [sys.executable, "-m", "plugin", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "checkpoint: ok" in audit.stdout and audit.stdout.strip().endswith("verified")

    def verify(value: Any) -> dict[str, Any]:
        body = {"object": "Opportunity", "id": record_id, "field": "Amount", "value": value}
        resp = api(running, "POST", "/api/verify", json=body)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    yes = verify("120,000")
    assert yes["verified"] is True
    assert yes["statement"] == (
        "CRM shows that Opportunity 'Acme renewal' Amount is 120,000 — entered through form "
        "'Budget Request' (response 123) on 26 Nov 2026, recorded by OnRecord."
    )
    no = verify(150000)
    assert (no["verified"], no["reason"]) == (False, "value_differs")

    # Someone changes the Amount in Salesforce and the change never reaches OnRecord.
    state = emu._state  # the emulator's org, edited as a user would through the UI
    state.update(state.object_def("Opportunity", create=False), record_id, {"Amount": 999000.0}, EDITOR)
    tampered = verify(120000)
    assert (tampered["verified"], tampered["reason"]) == (False, "change_not_recorded")
