"""Configuration from the CRM end to end, the way an admin runs it: real `python -m plugin serve`
(with its worker, as shipped), the Salesforce emulator over HTTPS, `[crm_config] enabled = true`
and nothing governed in the file. The admin creates, changes and breaks OnRecord's custom
metadata records in the (emulated) org; the approvals played through the Power Automate hooks and
Salesforce outbound messages are judged by the policy in force, and the version each verdict names
is in the signed provenance log. On SQLite and on PostgreSQL.

`refresh_seconds` is 10, the smallest the configuration accepts. The web process of `serve` takes
in and answers by the configuration in force too (Runtime.config_in_force), not the file's alone.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from connectors.salesforce.provision import APPROVAL_STAGE_MDT, GOVERNED_MDT, config_status_fields
from plugin.crm_config import ConfigRecord, version
from plugin.crm_config_job import (
    CONFIG_KIND,
    CONFIG_OBJECT,
    CONFIG_PREDICATE,
    STATUS_OBJECT,
    CrmConfigFollower,
)
from plugin.provenance import merkle
from plugin.provenance.checkpoint import open_checkpoint
from plugin.provenance.dsse import open_envelope
from plugin.provenance.keys import KeyStore, keys_from_jwks
from plugin.provenance.log import leaf_of, proofs
from plugin.storage import get_engine, provenance_statements
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY
from tests.connectors.salesforce.emulated_org import connect, key_file, server_environment
from tests.connectors.salesforce.outbound_messages import ORG_ID
from tests.connectors.salesforce.test_crm_config import ADMIN, define_onrecord_types
from tests.e2e.approvals_org import API_TOKEN, FORM_ID, OUTBOUND_TOKEN, Person, Senders
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.support.processes import Server, onrecord_env, run_plugin, wait_for

pytestmark = pytest.mark.slow

OBJ = "Budget_Request__c"
VIOLATION = "OnRecord_Violation__c"
REFRESH_SECONDS = 10  # the smallest refresh_seconds the configuration allows (ge=10)
# one refresh, the follower's check (every 2 s) and a worker pass, with room to spare
WITHIN_A_REFRESH = REFRESH_SECONDS + 20
GRACE_SECONDS = 5


@dataclass
class Org:
    emu: SalesforceEmulator
    server: Server
    env: dict[str, str]
    db_url: str
    alex: Person
    jane: Person
    vera: Person
    casey: Person
    chris: Person
    flow_user: str

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, path: str) -> requests.Response:
        return requests.get(self.url + path, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)

    def new_record(self) -> str:
        """A request as its requester saves it, and the outbound message Salesforce sends for it."""
        rid = self.emu.insert_record(
            OBJ, {"Name": "Budget request", "Amount__c": 125000.0, "Status__c": "Submitted"}
        )
        fields = {"Amount__c": "125000.0", "Status__c": "Submitted"}
        _ok_soap(
            Senders(self.url).change(OBJ, rid, fields, self.jane.salesforce_id, _now() - timedelta(hours=2))
        )
        return rid

    def edit(self, rid: str, status: str, user_id: str) -> None:
        """Someone sets the status in Salesforce; Salesforce's outbound message tells OnRecord."""
        state = self.emu._state
        state.update(state.object_def(OBJ, create=False), rid, {"Status__c": status}, user_id)
        fields = {"Amount__c": "125000.0", "Status__c": status}
        _ok_soap(Senders(self.url).change(OBJ, rid, fields, user_id, _now()))

    def approval_chain(self, finance: Person, *, flow_sets_it: bool = True) -> str:
        """Form, both stages through the Power Automate hooks, then (unless OnRecord sets the
        status) the flow sets Approved and Salesforce's outbound message says so."""
        rid, s, t = self.new_record(), Senders(self.url), _now() - timedelta(hours=1)
        _ok(s.form(OBJ, rid, self.alex, t))
        _ok(s.decision(OBJ, rid, "business strategy", [(self.vera, "Approve", t + timedelta(minutes=5))]))
        _ok(s.decision(OBJ, rid, "finance", [(finance, "Approve", t + timedelta(minutes=20))]))
        if flow_sets_it:
            self.edit(rid, "Approved", self.flow_user)
        return rid

    def in_force(self, *, timeout: float = WITHIN_A_REFRESH) -> dict[str, dict[str, Any]]:
        """Wait until the crm_config job read the policy: every status record OK, one version."""
        found: dict[str, dict[str, Any]] = wait_for(
            lambda: (
                (s := self.statuses())
                and len(s) == 3
                and all(r["OnRecord_Status__c"] == "OK" and not r["OnRecord_Problem__c"] for r in s.values())
                and len({r["OnRecord_Config_Version__c"] for r in s.values()}) == 1
                and s
            ),
            timeout=timeout,
        )
        time.sleep(CrmConfigFollower.CHECK_EVERY_SECONDS + 1)  # the worker's follower picks it up
        return found

    def taken_in(self, rid: str, kind: str) -> bool:
        return any(row[3] == kind for row in self.inbox(rid))

    def wait(self, rid: str, timeout: float = 60, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            record = self.emu.record(OBJ, rid) or {}
            return record if all(record.get(k) == v for k, v in expected.items()) else None

        try:
            found: dict[str, Any] = wait_for(matches, timeout=timeout, interval=0.2)
        except AssertionError:
            record = self.emu.record(OBJ, rid) or {}
            shown = {k: record.get(k) for k in (*expected, "OnRecord_Approval_Note__c")}
            raise AssertionError(
                f"{OBJ}/{rid} never showed {expected}: {shown}\n{self.inbox(rid)}\n"
                + self.server.output()[-4000:]
            ) from None
        return found

    def inbox(self, rid: str) -> list[tuple[Any, ...]]:
        """What OnRecord took in about the record (for a failure's message)."""
        from plugin.storage import inbox

        engine = get_engine(self.db_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(inbox).where(inbox.c.record_id == rid)).all()
        return [tuple(r) for r in rows]

    def violations(self, rid: str) -> list[dict[str, Any]]:
        return [v for v in self.emu.records(VIOLATION) if v.get("OnRecord_Record_Id__c") == rid]

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {r["OnRecord_Key__c"]: r for r in self.emu.records(STATUS_OBJECT)}


def _now() -> datetime:
    return datetime.now(UTC)


def _ok(resp: requests.Response) -> None:
    assert resp.status_code == 200, resp.text


def _ok_soap(resp: requests.Response) -> None:
    assert resp.status_code == 200 and b"<Ack>true</Ack>" in resp.content, resp.text


def create_policy(emu: SalesforceEmulator, flow_user: str, *, set_status: bool = False) -> None:
    """What the admin saves in Setup: the governed object and its two approval stages."""
    emu.put_metadata_record(
        GOVERNED_MDT,
        "Budget",
        {
            "Object__c": OBJ,
            "Tracked_Fields__c": "Amount__c\nStatus__c",
            "Approval_Field__c": "Status__c",
            "Approved_Values__c": "Approved",
            "Form_Id__c": FORM_ID,
            "Revert_To__c": "Submitted",
            "Set_Status__c": set_status,  # False: the flow sets the status and OnRecord judges it
            "Status_Writers__c": flow_user,
            "Grace_Seconds__c": GRACE_SECONDS,
            "Active__c": True,
        },
        by=ADMIN,
    )
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT,
        "Budget_Strategy",
        {
            "Governed__c": "Budget",
            "Order__c": 1,
            "Stage_Name__c": "business strategy",
            "Approvers__c": "Strategy Board",
        },
        by=ADMIN,
    )
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT,
        "Budget_Finance",
        {
            "Governed__c": "Budget",
            "Order__c": 2,
            "Stage_Name__c": "finance",
            "Approvers__c": "Finance Approvers",
        },
        by=ADMIN,
    )


@pytest.fixture
def org(db_url: str, tmp_path: Path) -> Iterator[Org]:
    keypair: KeyPair = make_consumer_keypair()
    with SalesforceEmulator() as emu:
        connect(emu, keypair)
        define_onrecord_types(emu)  # what `provision --deploy` defines
        emu.define_object(
            STATUS_OBJECT, [f.name for f in config_status_fields()], external_ids=["OnRecord_Key__c"]
        )
        emu.define_object(
            OBJ, ["Name", "Amount__c", "Status__c", "OnRecord_Approval__c", "OnRecord_Approval_Note__c"]
        )
        emu.define_object(VIOLATION, [], external_ids=["OnRecord_Key__c"])
        alex = Person("Alex Requester", "alex@contoso.com", salesforce_id=emu.add_user("alex@contoso.com"))
        jane = Person("Jane Doe", "jane@contoso.com", salesforce_id=emu.add_user("jane@contoso.com"))
        vera = Person("Vera Strategy", "vera@contoso.com", groups=("Strategy Board",))
        casey = Person("Casey Finance", "casey@contoso.com", groups=("Finance Approvers",))
        chris = Person("Chris Cfo", "cfo@contoso.com")
        flow_user = emu.add_user("approvals.flow@contoso.com")
        var = tmp_path / "var"
        KeyStore(var / "keys").create(datetime.now(UTC))  # what `init` does
        env = onrecord_env(
            db_url,
            var,
            TEST_SECRET,
            ONRECORD_WORKER__RULES=json.dumps(["plugin.rules:builtin_rules"]),
            ONRECORD_GOVERNED=json.dumps([]),  # nothing governed in the file
            ONRECORD_CRM_CONFIG__ENABLED="true",
            ONRECORD_CRM_CONFIG__REFRESH_SECONDS=str(REFRESH_SECONDS),
            ONRECORD_DIRECTORY__PEOPLE=json.dumps(
                [p.directory_entry() for p in (alex, jane, vera, casey, chris)]
            ),
            ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
            ONRECORD_POWER_AUTOMATE__API_KEY=API_KEY,
            **server_environment(emu, ORG_ID, OUTBOUND_TOKEN),
        )
        Path(env["ONRECORD_CONFIG"]).write_text(
            f'[salesforce]\nprivate_key_file = "{key_file(keypair, tmp_path)}"\n'
        )
        server = Server(env, tmp_path / "serve.log", worker=True)  # as shipped: serve runs the worker
        try:
            yield Org(emu, server, env, db_url, alex, jane, vera, casey, chris, flow_user)
        finally:
            server.stop()
            assert "Traceback" not in server.output(), server.output()[-3000:]


def _policy_version(note: str) -> str:
    found = re.search(r"Policy version ([0-9a-f]{12})\.$", note or "")
    assert found, f"the approval note names no policy version: {note!r}"
    return found.group(1)


FINANCE = f"{APPROVAL_STAGE_MDT}.Budget_Finance"


def test_a_policy_created_then_changed_in_setup_judges_the_next_status_change(org: Org) -> None:
    """(1) and (2): the flow sets the status (Set Status off); OnRecord judges each change."""
    emu = org.emu
    # (1) the admin creates the policy in Setup; within a refresh the next approval is judged by it
    create_policy(emu, org.flow_user)
    v1 = org.in_force()[f"{GOVERNED_MDT}.Budget"]["OnRecord_Config_Version__c"]
    first = org.approval_chain(org.casey)
    # what Salesforce sent about the record must be taken in (the evidence when it is not)
    try:
        wait_for(lambda: org.taken_in(first, "record.changed"), timeout=15)
    except AssertionError:
        metrics = requests.get(org.url + "/metrics", timeout=30).text
        ignored = [line for line in metrics.splitlines() if line.startswith("onrecord_events_ignored_total")]
        raise AssertionError(f"the outbound messages were not taken in: {ignored}") from None
    verified = org.wait(first, Status__c="Approved", OnRecord_Approval__c="Verified")
    assert _policy_version(verified["OnRecord_Approval_Note__c"]) == v1[:12]
    assert org.violations(first) == []
    hallway = org.new_record()
    org.edit(hallway, "Approved", org.jane.salesforce_id)  # Jane sets it herself
    org.wait(hallway, Status__c="Submitted", OnRecord_Approval__c="Blocked")
    [violation] = wait_for(lambda: org.violations(hallway), timeout=30)
    assert violation["OnRecord_Action__c"] == "Reverted to Submitted"

    # (2) the admin changes the finance approvers: the next identical chain is Blocked
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": "cfo@contoso.com"}, by=ADMIN
    )
    v2 = wait_for(
        lambda: (
            (v := org.in_force(timeout=WITHIN_A_REFRESH)[FINANCE]["OnRecord_Config_Version__c"]) != v1 and v
        ),
        timeout=WITHIN_A_REFRESH,
    )
    second = org.approval_chain(org.casey)
    blocked = org.wait(second, Status__c="Submitted", OnRecord_Approval__c="Blocked")
    assert _policy_version(blocked["OnRecord_Approval_Note__c"]) == v2[:12]
    assert len(wait_for(lambda: org.violations(second), timeout=30)) == 1
    earlier = emu.record(OBJ, first) or {}
    assert earlier["OnRecord_Approval__c"] == "Verified" and earlier["Status__c"] == "Approved"
    assert _policy_version(earlier["OnRecord_Approval_Note__c"]) == v1[:12]


def test_a_changed_then_refused_policy_judges_with_the_last_good_version_on_the_log(org: Org) -> None:
    """(1) to (4) without outbound messages: Set Status on,
    OnRecord sets Approved when the chain is proven by the policy in force, or leaves the record."""
    emu = org.emu
    # (1) the admin creates the policy in Setup; within a refresh the next approval is Verified
    create_policy(emu, org.flow_user, set_status=True)
    v1 = org.in_force()[f"{GOVERNED_MDT}.Budget"]["OnRecord_Config_Version__c"]
    first = org.approval_chain(org.casey, flow_sets_it=False)
    verified = org.wait(first, Status__c="Approved", OnRecord_Approval__c="Verified")
    assert _policy_version(verified["OnRecord_Approval_Note__c"]) == v1[:12]
    assert verified["LastModifiedById"] == emu.user_id()  # OnRecord set it

    # (2) the admin changes the finance approvers: the identical chain proves nothing any more
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": "cfo@contoso.com"}, by=ADMIN
    )
    v2 = wait_for(
        lambda: (v := org.in_force()[FINANCE]["OnRecord_Config_Version__c"]) != v1 and v,
        timeout=WITHIN_A_REFRESH,
    )

    def casey_then_the_cfo() -> tuple[dict[str, Any], dict[str, Any]]:
        by_casey = org.approval_chain(org.casey, flow_sets_it=False)
        by_cfo = org.approval_chain(org.chris, flow_sets_it=False)  # taken in after Casey's
        judged = org.wait(by_cfo, Status__c="Approved", OnRecord_Approval__c="Verified")
        left = emu.record(OBJ, by_casey) or {}
        assert left["Status__c"] == "Submitted" and left.get("OnRecord_Approval__c") != "Verified", left
        return left, judged

    _, judged = casey_then_the_cfo()
    assert _policy_version(judged["OnRecord_Approval_Note__c"]) == v2[:12]
    earlier = emu.record(OBJ, first) or {}
    assert earlier["OnRecord_Approval__c"] == "Verified" and earlier["Status__c"] == "Approved"
    assert _policy_version(earlier["OnRecord_Approval_Note__c"]) == v1[:12]  # as it was

    # (3) a record with an empty approver list: refused, said everywhere, the last good one judges
    emu.put_metadata_record(APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": " "}, by=ADMIN)
    problem = wait_for(  # the status record reaches the org through the dispatcher
        lambda: (s := org.statuses().get(FINANCE)) and s.get("OnRecord_Status__c") == "Problem" and s,
        timeout=WITHIN_A_REFRESH,
    )
    assert problem["OnRecord_Problem__c"].startswith(
        "Approvers__c: List should have at least 1 item after validation, not 0"
    ), problem
    assert f"The last good configuration ({v2[:12]}) stays in force." in problem["OnRecord_Problem__c"]
    assert problem["OnRecord_Config_Version__c"] == v2
    others = {k: s for k, s in org.statuses().items() if k != FINANCE}
    assert len(others) == 2 and all(s["OnRecord_Status__c"] == "OK" for s in others.values())
    assert all("not applied" in s["OnRecord_Problem__c"] for s in others.values())

    checked = run_plugin("check", env=org.env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert (
        f"FAIL configuration from the CRM refused, version {v2[:12]} stays in force: "
        f"{FINANCE} Approvers__c: List should have at least 1 item after validation, not 0 (got [])"
    ) in checked.stdout, checked.stdout
    ready = requests.get(org.url + "/readyz", timeout=30)
    body = ready.json()
    assert ready.status_code == 200 and body["ready"] is True and body["status"] == "degraded", body
    crm_config = body["checks"]["crm_config"]
    assert crm_config["degraded"] is True
    assert f"version {v2[:12]} stays in force" in crm_config["detail"]
    assert f"{FINANCE} Approvers__c: List should have at least 1 item" in crm_config["detail"]
    assert "onrecord_crm_config_problems 1.0" in requests.get(org.url + "/metrics", timeout=30).text

    _, judged = casey_then_the_cfo()  # still the last good policy's approvers
    assert _policy_version(judged["OnRecord_Approval_Note__c"]) == v2[:12]

    # (4) each version a verdict names is in the signed provenance log; the refused one is not
    keys = keys_from_jwks(requests.get(org.url + "/.well-known/onrecord-keys.json", timeout=30).json())
    note = org.api("/api/provenance/checkpoint")
    assert note.status_code == 200, note.text
    checkpoint = open_checkpoint(note.text, keys.values())
    engine = get_engine(org.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(provenance_statements).where(provenance_statements.c.kind == CONFIG_KIND)
            ).all()
            assert sorted(r.record_id for r in rows) == sorted([v1, v2])
            found = proofs(conn, [r.log_index for r in rows], checkpoint.size)
    finally:
        engine.dispose()
    approvers_of = {v1: "Finance Approvers", v2: "cfo@contoso.com"}
    for row in rows:
        named, approvers = row.record_id, approvers_of[row.record_id]
        assert row.object == CONFIG_OBJECT and row.log_index is not None and row.log_index < checkpoint.size
        envelope = json.loads(row.envelope)
        payload, _ = open_envelope(envelope, keys)  # signed with a published key
        statement = json.loads(payload)
        assert statement["predicateType"] == CONFIG_PREDICATE
        assert statement["predicate"]["version"] == named == statement["subject"][0]["digest"]["sha256"]
        listed = statement["predicate"]["records"]
        assert version([ConfigRecord(r["type"], r["developer_name"], r["fields"]) for r in listed]) == named
        assert sorted(r["developer_name"] for r in listed) == ["Budget", "Budget_Finance", "Budget_Strategy"]
        assert all(r["lastModifiedBy"]["id"] == emu.user_id(ADMIN) and r["systemModstamp"] for r in listed)
        finance = next(r for r in listed if r["developer_name"] == "Budget_Finance")
        assert finance["fields"]["Approvers__c"] == approvers
        hashes = [bytes.fromhex(h) for h in found[row.log_index]["hashes"]]
        assert merkle.verify_inclusion(
            row.log_index, checkpoint.size, leaf_of(envelope), hashes, checkpoint.root_hash
        )


def test_the_approvals_api_names_the_verdict_of_an_object_governed_from_setup(org: Org) -> None:
    create_policy(org.emu, org.flow_user, set_status=True)
    version_in_force = org.in_force()[f"{GOVERNED_MDT}.Budget"]["OnRecord_Config_Version__c"]
    rid = org.approval_chain(org.casey, flow_sets_it=False)
    org.wait(rid, Status__c="Approved", OnRecord_Approval__c="Verified")
    shown = org.api(f"/api/approvals/{OBJ}/{rid}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["verdict"] == "Verified"
    assert _policy_version(shown.json()["note"]) == version_in_force[:12]
