"""Form-only approvals end to end in Dataverse: the scenario table of tests/e2e/test_approvals.py,
all in flight at once, through real HTTP (gunicorn), the real worker and dispatcher, and the
Dataverse emulator over HTTPS — on SQLite and on PostgreSQL.

The scenarios are the Salesforce test's own functions, unchanged: they talk to an `Org` and to
`Senders`, and name the objects and fields as Salesforce spells them (`Budget_Request__c`,
`Status__c`, `OnRecord_Approval__c`). Here they meet a Dataverse environment instead:

- `DataverseOrg` offers the `Org`'s methods. Its tables are `new_budgetrequest`,
  `new_purchaserequest` and `new_travelrequest` (text status column `new_status`, amount
  `new_amount`), governed with `crm = "dataverse"` by the Salesforce test's policies translated
  (`dataverse_policies`); its people are systemusers (GUIDs where the scenarios read
  `.salesforce_id`), known to OnRecord through its Dataverse directory job (systemusers: name,
  e-mail, Entra object id) joined by e-mail to the configured approver groups. A person's change is
  made in the emulator's row, then delivered as Dataverse delivers it: a webhook body (the
  RemoteExecutionContext of connectors/dataverse/fixtures/opportunity_create__target_only.json,
  with the step's post image of the governed columns) on `/hooks/dataverse?code=<key>`. Records
  come back under the names the scenarios assert on (`translated`).
- `DataverseSenders` are the Salesforce test's `Senders`, with the scenarios' object names
  translated to logical names in the Power Automate bodies (which are CRM-neutral: the record's
  table and id, here a GUID) and the API path; a "CRM change" is a Dataverse webhook. For the
  length of the test it stands in for `Senders` in the scenarios' module (`monkeypatch`), so the
  scenario code needs no seam of its own.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from plugin.crm_model import governed_fields, physical_name, violation_object
from plugin.provenance.keys import KeyStore
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY
from tests.dvemu import DataverseEmulator
from tests.dvemu.model import provision
from tests.e2e import test_approvals
from tests.e2e.approvals_org import API_TOKEN, Person, Senders, policies
from tests.e2e.test_approvals import (
    SCENARIOS,
    _now,
    _ok,
    record_id_15_characters_in_the_form_18_in_the_crm,
)
from tests.support.processes import ROOT, Server, onrecord_env, run_plugin, wait_for

pytestmark = pytest.mark.slow

WEBHOOK_KEY = "e2e-approvals-dataverse-webhook-key-0123456789"
FIXTURE = ROOT / "connectors" / "dataverse" / "fixtures" / "opportunity_create__target_only.json"
PREFIX = "onr"
CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"

# The scenarios' names -> Dataverse's logical names.
TABLES = {
    "Budget_Request__c": "new_budgetrequest",
    "Purchase_Request__c": "new_purchaserequest",
    "Travel_Request__c": "new_travelrequest",
}
COLUMNS = {"Name": "new_name", "Amount__c": "new_amount", "Status__c": "new_status"}
VIOLATIONS = physical_name(violation_object().name, PREFIX) + "s"  # onr_violations
# Dataverse's names -> the names the scenarios assert on.
AS_SCENARIOS_READ = {
    **{column: name for name, column in COLUMNS.items()},
    **{physical_name(f.name, PREFIX): f.name for f in (*governed_fields(), *violation_object().fields)},
}


def table(obj: str) -> str:
    """The logical name of a table the scenarios name as Salesforce does (or already logical)."""
    return TABLES.get(obj, obj)


def entity_set(obj: str) -> str:
    return table(obj) + "s"


def dataverse_policies(flow_user: str) -> list[dict[str, Any]]:
    """The Salesforce test's policies, for the same tables in Dataverse: logical names, a text
    status column."""
    return [
        {
            **policy,
            "object": table(policy["object"]),
            "crm": "dataverse",
            "fields": [COLUMNS[f] for f in policy["fields"]],
            "approval_field": COLUMNS[policy["approval_field"]],
            "approval_field_type": "text",
        }
        for policy in policies(flow_user)
    ]


def translated(row: Mapping[str, Any], primary_id: str) -> dict[str, Any]:
    """A row under the names the scenarios read (`onr_approval` -> `OnRecord_Approval__c`, ...);
    a lookup is the emulator's GUID under the column's name (`onr_actor` -> `OnRecord_Actor__c`)."""
    out = {AS_SCENARIOS_READ.get(k, k): v for k, v in row.items()}
    out["Id"] = row.get(primary_id)
    return out


# -- Dataverse's webhook -------------------------------------------------------------------------


def _wcf_date(at: datetime) -> str:
    return f"/Date({int(at.timestamp() * 1000)})/"


def _typed(column: str, value: Any) -> Any:
    """A column's value as the execution context serializes it."""
    if column == "new_amount" and value is not None:
        return {"__type": f"Money:{CONTRACTS}", "Value": float(value)}
    return value


def _user_ref(user_id: str) -> dict[str, Any]:
    return {
        "__type": f"EntityReference:{CONTRACTS}",
        "Id": user_id,
        "KeyAttributes": [],
        "LogicalName": "systemuser",
        "Name": None,
        "RowVersion": None,
    }


def _entity(logical: str, record_id: str, values: Mapping[str, Any], *, hinted: bool) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "Attributes": [{"key": k, "value": _typed(k, v)} for k, v in values.items()],
        "EntityState": None,
        "FormattedValues": [],
        "Id": record_id,
        "KeyAttributes": [],
        "LogicalName": logical,
        "RelatedEntities": [],
        "RowVersion": None,
    }
    return {"__type": f"Entity:{CONTRACTS}", **entity} if hinted else entity


def webhook_body(
    message: str,
    obj: str,
    record_id: str,
    target: Mapping[str, Any],
    post_image: Mapping[str, Any],
    *,
    user_id: str,
    user_aad_id: str | None,
    at: datetime,
    name: str = "",
) -> bytes:
    """The RemoteExecutionContext an asynchronous PostOperation step (Calling User's context, a
    post image "PostImage" of the governed columns) posts for a Create or Update of one row: the
    fixture's body, re-aimed at this table, row, user and time."""
    logical = table(obj)
    pk = f"{logical}id"
    context = copy.deepcopy(json.loads(FIXTURE.read_text()))
    context.pop("ParentContext", None)
    now = _wcf_date(at)
    columns = {**target, pk: record_id, "modifiedon": now, "modifiedby": _user_ref(user_id)}
    if message == "Create":
        columns.update(createdon=now, createdby=_user_ref(user_id), ownerid=_user_ref(user_id))
    context.update(
        MessageName=message,
        PrimaryEntityName=logical,
        PrimaryEntityId=record_id,
        OperationId=str(uuid.uuid4()),  # the system job's id: one per change
        CorrelationId=str(uuid.uuid4()),
        RequestId=str(uuid.uuid4()),
        OperationCreatedOn=now,
        UserId=user_id,
        InitiatingUserId=user_id,
        UserAzureActiveDirectoryObjectId=user_aad_id or EMPTY_GUID,
        InitiatingUserAzureActiveDirectoryObjectId=user_aad_id or EMPTY_GUID,
        InputParameters=[{"key": "Target", "value": _entity(logical, record_id, columns, hinted=True)}],
        OutputParameters=[{"key": "id", "value": record_id}] if message == "Create" else [],
        PostEntityImages=[
            {
                "key": "AsynchronousStepPrimaryName",  # Dataverse's own, on every asynchronous step
                "value": _entity(logical, record_id, {"new_name": name, pk: record_id}, hinted=False),
            },
            {"key": "PostImage", "value": _entity(logical, record_id, post_image, hinted=False)},
        ],
    )
    return json.dumps(context).encode()


class DataverseSenders(Senders):
    """The Salesforce test's senders with the scenarios' object names in Dataverse's spelling
    (Power Automate's bodies and OnRecord's API are CRM-neutral), and Dataverse's webhook for a
    change made in the CRM."""

    def form(self, obj: str, record_id: str, requester: Person, at: datetime, **kw: Any) -> requests.Response:
        return super().form(table(obj), record_id, requester, at, **kw)

    def decision(
        self,
        obj: str,
        record_id: str,
        stage: str,
        responses: list[tuple[Person, str, datetime]],
        **kw: Any,
    ) -> requests.Response:
        return super().decision(table(obj), record_id, stage, responses, **kw)

    def approval_status(self, obj: str, record_id: str) -> dict[str, Any] | None:
        return super().approval_status(table(obj), record_id)

    def change(
        self,
        obj: str,
        record_id: str,
        fields: Mapping[str, Any],
        actor: str,
        at: datetime,
        *,
        message: str = "Update",
        post_image: Mapping[str, Any] | None = None,
        actor_aad_id: str | None = None,
        name: str = "",
    ) -> requests.Response:
        """A Dataverse webhook: the columns the change set (`fields`, by the scenarios' names or
        logical ones), and the post image of the governed columns (by default the same)."""
        target = {COLUMNS.get(k, k): v for k, v in fields.items()}
        image = {COLUMNS.get(k, k): v for k, v in (post_image or target).items()}
        body = webhook_body(
            message, obj, record_id, target, image, user_id=actor, user_aad_id=actor_aad_id, at=at, name=name
        )
        return self.http.post(
            f"{self.url}/hooks/dataverse?code={WEBHOOK_KEY}",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )


def _stored(resp: requests.Response) -> None:
    assert resp.status_code == 200 and resp.json() == {"stored": 1, "duplicates": 0, "ignored": 0}, resp.text


# -- the organisation ----------------------------------------------------------------------------


@dataclass
class DataverseOrg:
    """test_approvals.Org's methods, against a Dataverse environment."""

    dv: DataverseEmulator
    url: str
    alex: Person
    vera: Person
    sam: Person
    casey: Person
    jane: Person
    flow_user: str
    integration_user: str
    env: dict[str, str]  # OnRecord's environment, for its commands
    # who last changed a row outside the Web API (a person, through us): row id -> (etag, user)
    _changed_by: dict[str, tuple[int, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_record(self, obj: str) -> str:
        """A request as its requester saves it, and the webhook Dataverse posts for its Create."""
        name = f"{table(obj)} request"
        values = {"new_name": name, "new_amount": 125000.0, "new_status": "Submitted"}
        record_id = self.dv.add_record(entity_set(obj), values)
        self._note_change(record_id, self.jane.salesforce_id)
        governed = {"new_amount": 125000.0, "new_status": "Submitted"}
        _stored(
            DataverseSenders(self.url).change(
                obj,
                record_id,
                values,
                self.jane.salesforce_id,
                _now() - timedelta(hours=2),
                message="Create",
                post_image=governed,
                actor_aad_id=self.jane.aad_id,
                name=name,
            )
        )
        return record_id

    def edit(self, obj: str, record_id: str, status: str, user_id: str, at: datetime | None = None) -> None:
        """A person (or the flow's connection) sets the status in Dataverse; its webhook tells
        OnRecord, with the row as the change left it in the post image."""
        state = self.dv.state
        with state.lock:
            row = state.tables[entity_set(obj)][record_id]
            row["new_status"] = status
            state.etags[record_id] = state.next_version()
            image = {"new_amount": row.get("new_amount"), "new_status": status}
            name = str(row.get("new_name") or "")
            self._note_change(record_id, user_id)
            aad_id = state.tables["systemusers"][user_id].get("azureactivedirectoryobjectid")
        _stored(
            DataverseSenders(self.url).change(
                obj,
                record_id,
                {"new_status": status},
                user_id,
                at or _now(),
                post_image=image,
                actor_aad_id=aad_id,
                name=name,
            )
        )

    def echo_own_write(self, obj: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """OnRecord's own write, as Dataverse's webhook reports it (its application user as the
        step's user): acknowledged and ignored at intake."""
        resp = DataverseSenders(self.url).change(obj, record_id, fields, self.integration_user, _now())
        assert resp.status_code == 200 and resp.json() == {"stored": 0, "duplicates": 0, "ignored": 1}, (
            resp.text
        )

    def fields(self, obj: str, record_id: str) -> dict[str, Any]:
        """The row under the scenarios' names, with `LastModifiedById`: Dataverse's `modifiedby`,
        which the emulator does not keep. A row written since a person's last change was written
        through the Web API, where only OnRecord's application user signs in."""
        state = self.dv.state
        with state.lock:
            row = state.tables.get(entity_set(obj), {}).get(record_id.lower())
            if row is None:
                return {}
            etag = state.etags.get(record_id.lower())
            row = dict(row)
        with self._lock:
            changed = self._changed_by.get(record_id.lower())
        found = translated(row, f"{table(obj)}id")
        found["LastModifiedById"] = changed[1] if changed and changed[0] == etag else self.integration_user
        return found

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
        pk = f"{physical_name(violation_object().name, PREFIX)}id"
        return [
            translated(v, pk)
            for v in self.dv.records(VIOLATIONS)
            if v.get(physical_name("OnRecord_Record_Id__c", PREFIX)) == record_id
        ]

    def _note_change(self, record_id: str, user_id: str) -> None:
        with self.dv.state.lock, self._lock:
            self._changed_by[record_id] = (self.dv.state.etags[record_id], user_id)


def _person(dv: DataverseEmulator, name: str, email: str, groups: tuple[str, ...] = ()) -> Person:
    """A systemuser (its Entra object id the one Power Automate reports for them); the Person
    with its systemuserid where the scenarios read `.salesforce_id`."""
    person = Person(name, email, salesforce_id=str(uuid.uuid4()), groups=groups)
    dv.add_user(name, user_id=person.salesforce_id, email=email, azure_ad_object_id=person.aad_id)
    return person


def _configured(person: Person) -> dict[str, Any]:
    """The `[directory] people` entry: name, e-mail and approver groups. The systemuserid comes
    from Dataverse's users (the directory job), joined by e-mail."""
    entry = person.directory_entry()
    entry.pop("salesforce_id", None)
    return entry


@pytest.fixture
def org(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataverseOrg]:
    with DataverseEmulator() as dv:
        with dv.state.lock:
            for name in TABLES.values():
                dv.state.add_entity(
                    name,
                    f"{name}s",
                    primary_name="new_name",
                    attributes={
                        "new_amount": "Money",
                        "new_status": {"AttributeType": "String", "MaxLength": 100},
                    },
                )
            provision(dv.state, prefix=PREFIX, governed=tuple(TABLES.values()))
        alex = _person(dv, "Alex Requester", "alex@contoso.com")
        jane = _person(dv, "Jane Doe", "jane@contoso.com")
        vera = _person(dv, "Vera Strategy", "vera@contoso.com", ("Strategy Board",))
        sam = _person(dv, "Sam Strategy", "sam@contoso.com", ("Strategy Board",))
        casey = _person(dv, "Casey Finance", "casey@contoso.com", ("Finance Approvers",))
        flow_user = dv.add_user("Approvals Flow", email="approvals.flow@contoso.com")
        var = tmp_path / "var"
        KeyStore(var / "keys").create(datetime.now(UTC))
        env = onrecord_env(
            db_url,
            var,
            TEST_SECRET,
            ONRECORD_WORKER__RULES=json.dumps(["plugin.rules:builtin_rules"]),
            ONRECORD_GOVERNED=json.dumps(dataverse_policies(flow_user)),
            ONRECORD_DIRECTORY__PEOPLE=json.dumps([_configured(p) for p in (alex, jane, vera, sam, casey)]),
            ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
            ONRECORD_POWER_AUTOMATE__API_KEY=API_KEY,
            ONRECORD_CRM__PRIMARY="dataverse",
            ONRECORD_DATAVERSE__URL=dv.url,
            ONRECORD_DATAVERSE__TENANT_ID=dv.tenant_id,
            ONRECORD_DATAVERSE__CLIENT_ID=dv.client_id,
            ONRECORD_DATAVERSE__CLIENT_SECRET=dv.client_secret,
            ONRECORD_DATAVERSE__AUTHORITY_HOST=dv.url,
            ONRECORD_DATAVERSE__CA_BUNDLE=dv.ca_path,
            ONRECORD_DATAVERSE__APPLICATION_USER_ID=dv.application_user_id,
            ONRECORD_DATAVERSE__WEBHOOK_KEY=WEBHOOK_KEY,
        )
        # What an admin does once set up: read the environment's users now, not at the job's hour.
        people = run_plugin("directory", "--refresh", "--crm", "dataverse", env=env)
        assert people.returncode == 0 and "refreshed from Dataverse: 7 users" in people.stdout, (
            people.stdout + people.stderr
        )
        monkeypatch.setattr(test_approvals, "Senders", DataverseSenders)
        server = Server(env, tmp_path / "serve.log", worker=True)  # as shipped: serve runs the worker
        try:
            yield DataverseOrg(
                dv, server.url, alex, vera, sam, casey, jane, flow_user, dv.application_user_id, env
            )
        finally:
            server.stop()
            assert "Traceback" not in server.output(), server.output()[-3000:]
    assert dv.errors == [], dv.errors


# -- the scenarios -------------------------------------------------------------------------------

B = "Budget_Request__c"


def record_guid_in_upper_case_in_the_flow_lower_case_in_the_crm(org: DataverseOrg) -> None:
    """Dataverse's analogue of the 15- and 18-character ids: the flow passes the GUID as it was
    given (here upper case), the webhook carries it in lower case; one record all the same."""
    rid, s, t = org.new_record(B), DataverseSenders(org.url), _now() - timedelta(hours=1)
    upper = rid.upper()
    _ok(s.form(B, upper, org.alex, t))
    _ok(s.decision(B, upper, "business strategy", [(org.vera, "Approve", t + timedelta(minutes=5))]))
    _ok(s.decision(B, upper, "finance", [(org.casey, "Approve", t + timedelta(minutes=20))]))
    org.wait(B, rid, Status__c="Approved", OnRecord_Approval__c="Verified")


# Salesforce's 15- vs 18-character ids have no meaning in Dataverse (GUIDs have one length);
# its analogue, a GUID's case, takes its place.
DATAVERSE_SCENARIOS: list[Callable[[Any], None]] = [
    record_guid_in_upper_case_in_the_flow_lower_case_in_the_crm
    if scenario is record_id_15_characters_in_the_form_18_in_the_crm
    else scenario
    for scenario in SCENARIOS
]


def test_every_scenario_at_once_in_dataverse(org: DataverseOrg) -> None:
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=len(DATAVERSE_SCENARIOS)) as pool:
        running = {scenario.__name__: pool.submit(scenario, org) for scenario in DATAVERSE_SCENARIOS}
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
    # and Dataverse took every write: nothing left waiting, nothing given up on
    counts = wait_for(
        lambda: (c := _outbox_counts(org)) and c["pending"] == 0 and c, timeout=60, interval=0.5
    )
    assert counts["dead"] == 0 and counts["sent"] > 0, counts
    dead = run_plugin("deadletters", "list", "--json", env=org.env)
    assert json.loads(dead.stdout) == {"writes": [], "events": []}, dead.stdout + dead.stderr


def _outbox_counts(org: DataverseOrg) -> dict[str, int]:
    shown = run_plugin("outbox", "--json", env=org.env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    counts: dict[str, int] = json.loads(shown.stdout)["counts"]
    return counts
