"""Form-only approvals end to end: the scenario table, all in flight at once, through real HTTP
(gunicorn), the real worker and dispatcher, and the Salesforce emulator over HTTPS — on SQLite
and on PostgreSQL.

Each scenario creates its own record in the emulated org, plays what the people, the flows and
Salesforce would send (form responses, the Approvals connector's outputs, outbound messages for
every edit), then reads the outcome where an admin would: the record's fields in the CRM, the
violation records, and GET /api/approvals.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from plugin.provenance.keys import KeyStore
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY
from tests.connectors.salesforce.emulated_org import connect, key_file, server_environment
from tests.connectors.salesforce.outbound_messages import ORG_ID
from tests.e2e.approvals_org import API_TOKEN, OUTBOUND_TOKEN, Person, Senders, policies
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.support.processes import Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow

OBJECTS = ("Budget_Request__c", "Purchase_Request__c", "Travel_Request__c")
VIOLATION = "OnRecord_Violation__c"


@dataclass
class Org:
    emu: SalesforceEmulator
    url: str
    alex: Person
    vera: Person
    sam: Person
    casey: Person
    jane: Person
    flow_user: str
    integration_user: str

    def new_record(self, obj: str) -> str:
        """A request as its requester saves it, and the outbound message Salesforce sends for it."""
        record_id = self.emu.insert_record(
            obj, {"Name": f"{obj} request", "Amount__c": 125000.0, "Status__c": "Submitted"}
        )
        resp = Senders(self.url).change(
            obj,
            record_id,
            {"Amount__c": "125000.0", "Status__c": "Submitted"},
            self.jane.salesforce_id,
            _now() - timedelta(hours=2),
        )
        assert resp.status_code == 200, resp.text
        return record_id

    def edit(self, obj: str, record_id: str, status: str, user_id: str, at: datetime | None = None) -> None:
        """A person (or the flow's connection) sets the status in Salesforce; Salesforce tells OnRecord."""
        state = self.emu._state
        state.update(state.object_def(obj, create=False), record_id, {"Status__c": status}, user_id)
        resp = Senders(self.url).change(
            obj, record_id, {"Amount__c": "125000.0", "Status__c": status}, user_id, at or _now()
        )
        assert resp.status_code == 200 and b"<Ack>true</Ack>" in resp.content, resp.text

    def echo_own_write(self, obj: str, record_id: str, fields: dict[str, Any]) -> None:
        """OnRecord's own write, echoed back by Salesforce's outbound message (its integration user)."""
        _ok_soap(Senders(self.url).change(obj, record_id, fields, self.integration_user, _now()))

    def fields(self, obj: str, record_id: str) -> dict[str, Any]:
        return self.emu.record(obj, record_id) or {}

    def wait(self, obj: str, record_id: str, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            record = self.fields(obj, record_id)
            return record if all(record.get(k) == v for k, v in expected.items()) else None

        try:
            found: dict[str, Any] = wait_for(matches, timeout=60, interval=0.2)
        except AssertionError:
            record = self.fields(obj, record_id)
            shown = {k: record.get(k) for k in (*expected, "OnRecord_Approval_Note__c")}
            raise AssertionError(f"{obj}/{record_id} never showed {expected}: {shown}") from None
        return found

    def violations(self, record_id: str) -> list[dict[str, Any]]:
        return [v for v in self.emu.records(VIOLATION) if v.get("OnRecord_Record_Id__c") == record_id]


def _now() -> datetime:
    return datetime.now(UTC)


def _ok(resp: requests.Response) -> None:
    assert resp.status_code == 200, resp.text


@pytest.fixture
def org(db_url: str, tmp_path: Path) -> Iterator[Org]:
    keypair: KeyPair = make_consumer_keypair()
    with SalesforceEmulator() as emu:
        connect(emu, keypair)
        for obj in OBJECTS:
            emu.define_object(obj, ["Name", "Amount__c", "Status__c"])
        emu.define_object(VIOLATION, [], external_ids=["OnRecord_Key__c"])
        alex = Person("Alex Requester", "alex@contoso.com", salesforce_id=emu.add_user("alex@contoso.com"))
        jane = Person("Jane Doe", "jane@contoso.com", salesforce_id=emu.add_user("jane@contoso.com"))
        vera = Person("Vera Strategy", "vera@contoso.com", groups=("Strategy Board",))
        sam = Person("Sam Strategy", "sam@contoso.com", groups=("Strategy Board",))
        casey = Person("Casey Finance", "casey@contoso.com", groups=("Finance Approvers",))
        flow_user = emu.add_user("approvals.flow@contoso.com")
        var = tmp_path / "var"
        KeyStore(var / "keys").create(datetime.now(UTC))
        env = onrecord_env(
            db_url,
            var,
            TEST_SECRET,
            ONRECORD_WORKER__RULES=json.dumps(["plugin.rules:builtin_rules"]),
            ONRECORD_GOVERNED=json.dumps(policies(flow_user)),
            ONRECORD_DIRECTORY__PEOPLE=json.dumps(
                [p.directory_entry() for p in (alex, jane, vera, sam, casey)]
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
            yield Org(emu, server.url, alex, vera, sam, casey, jane, flow_user, emu.user_id())
        finally:
            server.stop()
            assert "Traceback" not in server.output(), server.output()[-3000:]


# -- the scenarios: each plays its story and checks the outcome ------------------------------------

Scenario = Callable[[Org], None]
B, P, T = OBJECTS
AGO = timedelta(hours=1)


def happy_path_onrecord_sets_approved(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), _now() - AGO
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=20))]))
    record = org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")
    assert record["LastModifiedById"] == org.integration_user
    note = record["OnRecord_Approval_Note__c"]
    assert note.startswith("Form 'Budget Request' by Alex Requester on ")
    assert (
        "business strategy: approved by Vera Strategy" in note
        and "finance: approved by Casey Finance" in note
    )
    status = s.approval_status(B, rid)
    assert status and status["verdict"] == "Verified" and status["chain"]["status"] == "proven"
    # OnRecord's own write, echoed back by the CRM, is never judged
    org.echo_own_write(B, rid, {"Status__c": "Approved"})
    assert org.violations(rid) == []


def flow_user_sets_it_after_a_proven_chain(org: Org) -> None:
    rid, s, t = org.new_record(P), Senders(org.url), _now() - AGO
    _ok(s.form(P, rid, org.alex, t))
    both = [(org.vera, "Approve", t + timedelta(minutes=3)), (org.sam, "Approve", t + timedelta(minutes=4))]
    _ok(s.decision(P, rid, "business strategy", both))  # outcome "Approve, Approve"
    _ok(s.decision(P, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=9))]))
    wait_api(s, P, rid, lambda st: st["chain"]["status"] == "proven")
    org.edit(P, rid, "Approved", org.flow_user)
    org.wait(P, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


def hallway_approval_is_blocked_and_reverted(org: Org) -> None:
    rid = org.new_record(B)
    org.edit(B, rid, "Approved", org.jane.salesforce_id)
    record = org.wait(B, rid, Status__c="Submitted", OnRecord_Approval__c="Blocked")
    assert record["OnRecord_Approval_Note__c"].startswith("set to Approved by Jane Doe in the CRM on ")
    [violation] = wait_for(lambda: org.violations(rid), timeout=30)
    assert violation["OnRecord_Actor__c"] == org.jane.salesforce_id
    assert violation["OnRecord_Action__c"] == "Reverted to Submitted"


def blocked_after(play: Callable[[Org, str, Senders, datetime], None], obj: str = B) -> Scenario:
    def scenario(org: Org) -> None:
        rid, s, t = org.new_record(obj), Senders(org.url), _now() - AGO
        play(org, rid, s, t)
        org.edit(obj, rid, "Approved", org.flow_user)
        org.wait(obj, rid, Status__c="Submitted", OnRecord_Approval__c="Blocked")
        assert len(wait_for(lambda: org.violations(rid), timeout=30)) == 1

    scenario.__name__ = play.__name__
    return scenario


def missing_stage(org: Org, rid: str, s: Senders, t: datetime) -> None:
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))


def stages_in_the_wrong_order(org: Org, rid: str, s: Senders, t: datetime) -> None:
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=9))]))


def approver_outside_the_stage_group(org: Org, rid: str, s: Senders, t: datetime) -> None:
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.jane, "Approve", t + timedelta(minutes=9))]))


def self_approval(org: Org, rid: str, s: Senders, t: datetime) -> None:
    _ok(s.form(B, rid, org.vera, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=9))]))


def everyone_stage_where_one_of_two_rejects(org: Org, rid: str, s: Senders, t: datetime) -> None:
    _ok(s.form(P, rid, org.alex, t))
    split = [(org.vera, "Approve", t + timedelta(minutes=3)), (org.sam, "Reject", t + timedelta(minutes=4))]
    _ok(s.decision(P, rid, "business strategy", split))
    _ok(s.decision(P, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=9))]))


def custom_response_stage(org: Org) -> None:
    rid, s, t = org.new_record(P), Senders(org.url), _now() - AGO
    _ok(s.form(P, rid, org.alex, t))
    both = [(org.vera, "Approve", t + timedelta(minutes=3)), (org.sam, "Approve", t + timedelta(minutes=4))]
    _ok(s.decision(P, rid, "business strategy", both))
    _ok(s.decision(P, rid, "finance", [(org.casey, "Approve with conditions", t + timedelta(minutes=9))]))
    wait_api(s, P, rid, lambda st: st["chain"]["status"] == "proven")
    org.edit(P, rid, "Approved", org.flow_user)
    org.wait(P, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


def form_with_the_forms_connector_submit_date(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), (_now() - AGO).replace(microsecond=0)
    _ok(s.form(B, rid, org.alex, t, connector_date=True))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", t + timedelta(minutes=20))]))
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


def rejection_then_resubmission(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), _now() - 2 * AGO
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Reject", t + timedelta(minutes=9))]))
    wait_api(s, B, rid, lambda st: st["chain"]["status"] == "failed")
    assert org.fields(B, rid)["Status__c"] == "Submitted"
    again = t + AGO
    _ok(s.form(B, rid, org.alex, again))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", again + timedelta(minutes=5))]))
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", again + timedelta(minutes=9))]))
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


def chain_events_late_inside_the_grace_window(org: Org) -> None:
    rid, s, t = org.new_record(T), Senders(org.url), _now() - AGO
    _ok(s.form(T, rid, org.alex, t))
    _ok(s.decision(T, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    changed = _now()
    org.edit(T, rid, "Approved", org.flow_user, changed)  # the flow set it; finance's event is late
    org.wait(T, rid, OnRecord_Approval__c="Pending")
    _ok(s.decision(T, rid, "finance", [(org.casey, "Approve", changed - timedelta(seconds=30))]))
    org.wait(T, rid, Status__c="Approved", OnRecord_Approval__c="Verified")
    assert org.violations(rid) == []


def chain_events_after_the_grace_window(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), _now() - AGO
    _ok(s.form(B, rid, org.alex, t))
    _ok(s.decision(B, rid, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    changed = _now()
    org.edit(B, rid, "Approved", org.flow_user, changed)
    org.wait(B, rid, Status__c="Submitted", OnRecord_Approval__c="Blocked")  # the deadline passed
    _ok(s.decision(B, rid, "finance", [(org.casey, "Approve", changed - timedelta(seconds=30))]))
    # too late to have counted at the deadline, but the chain is proven: the violation is withdrawn
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")
    wait_for(
        lambda: [v for v in org.violations(rid) if v.get("OnRecord_Verdict__c") == "Withdrawn"], timeout=30
    )


def record_id_15_characters_in_the_form_18_in_the_crm(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), _now() - AGO
    short = rid[:15]
    _ok(s.form(B, short, org.alex, t))
    _ok(s.decision(B, short, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, short, "finance", [(org.casey, "Approve", t + timedelta(minutes=20))]))
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


def duplicated_and_reordered_deliveries(org: Org) -> None:
    rid, s, t = org.new_record(B), Senders(org.url), _now() - AGO
    strategy = ("business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))], str(uuid.uuid4()))
    finance = ("finance", [(org.casey, "Approve", t + timedelta(minutes=20))], str(uuid.uuid4()))
    for stage, responses, approval in (finance, finance, strategy):  # before the form, twice
        _ok(s.decision(B, rid, stage, responses, approval=approval))
    for _ in range(2):
        _ok(s.form(B, rid, org.alex, t, response_id=4242))
    _ok(s.decision(B, rid, strategy[0], strategy[1], approval=strategy[2]))
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")
    status = wait_api(s, B, rid, lambda st: st["verdict"] == "Verified")
    assert status["chain"]["response_id"] == "4242"
    assert [st["status"] for st in status["chain"]["stages"]] == ["approved", "approved"]


def later_legitimate_change_is_not_overwritten(org: Org) -> None:
    rid = org.new_record(B)
    org.edit(B, rid, "Approved", org.jane.salesforce_id)
    org.wait(B, rid, OnRecord_Approval__c="Pending")
    org.edit(B, rid, "Withdrawn", org.alex.salesforce_id)  # the requester withdraws, legitimately
    org.wait(B, rid, OnRecord_Approval__c="Blocked")
    assert org.fields(B, rid)["Status__c"] == "Withdrawn"
    [violation] = wait_for(lambda: org.violations(rid), timeout=30)
    assert violation["OnRecord_Action__c"].startswith("Flagged")


def wait_api(s: Senders, obj: str, rid: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (st := s.approval_status(obj, rid)) and ok(st) and st, timeout=60, interval=0.2
    )
    return found


def _ok_soap(resp: requests.Response) -> None:
    assert resp.status_code == 200 and b"<Ack>true</Ack>" in resp.content, resp.text


SCENARIOS: list[Scenario] = [
    happy_path_onrecord_sets_approved,
    flow_user_sets_it_after_a_proven_chain,
    hallway_approval_is_blocked_and_reverted,
    blocked_after(missing_stage),
    blocked_after(stages_in_the_wrong_order),
    blocked_after(approver_outside_the_stage_group),
    blocked_after(self_approval),
    blocked_after(everyone_stage_where_one_of_two_rejects, P),
    custom_response_stage,
    form_with_the_forms_connector_submit_date,
    rejection_then_resubmission,
    chain_events_late_inside_the_grace_window,
    chain_events_after_the_grace_window,
    record_id_15_characters_in_the_form_18_in_the_crm,
    duplicated_and_reordered_deliveries,
    later_legitimate_change_is_not_overwritten,
]


def test_every_scenario_at_once_through_the_real_pipeline(org: Org) -> None:
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        running = {scenario.__name__: pool.submit(scenario, org) for scenario in SCENARIOS}
    for name, future in running.items():
        error = future.exception()
        if error is not None:
            failures[name] = f"{type(error).__name__}: {error}"
    assert failures == {}, "\n".join(f"{k}: {v}" for k, v in failures.items())
    metrics = requests.get(org.url + "/metrics", timeout=30).text
    for verdict in ("Verified", "Pending", "Blocked"):
        assert f'onrecord_approval_verdicts_total{{how="judged",verdict="{verdict}"}}' in metrics
    assert 'onrecord_approval_verdicts_total{how="set",verdict="Verified"}' in metrics
    assert 'onrecord_approval_verdict_seconds_count{verdict="Blocked"}' in metrics
