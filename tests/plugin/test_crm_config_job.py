"""Configuration from the CRM, end to end: an admin's custom metadata records in the (emulated,
HTTPS) Salesforce org, read by the crm_config job, stored on SQLite and PostgreSQL, followed by
the worker, judging approvals; status records written back through the outbox and dispatcher."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.salesforce.provision import (
    APPROVAL_STAGE_MDT,
    GOVERNED_MDT,
    SETTING_MDT,
    config_status_fields,
)
from plugin.commands.work import build, config_follower, read_crm_config_now
from plugin.config import Config
from plugin.crm_config_job import JOB_NAME, STATUS_OBJECT, CrmConfigFollower, stored
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.jobs import JobRunner, builtin_jobs
from plugin.provenance.rule import key_store
from plugin.rules.approvals import state_key
from plugin.storage import begin_write, get_engine, rule_state
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import connect, overrides
from tests.connectors.salesforce.test_crm_config import ADMIN, budget_policy, define_onrecord_types
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair

OBJ = "Budget_Request__c"
FORM = "budget-request-form"
PEOPLE = [
    {"name": "Alex Requester", "emails": ["alex@contoso.com"]},
    {"name": "Vera Strategy", "emails": ["vera@contoso.com"], "groups": ["Strategy Board"]},
    {"name": "Casey Finance", "emails": ["casey@contoso.com"], "groups": ["Finance Approvers"]},
    {"name": "Jane Doe", "emails": ["jane@contoso.com"]},
]


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator() as emulator:
        connect(emulator, keypair)
        define_onrecord_types(emulator)
        emulator.define_object(
            STATUS_OBJECT, [f.name for f in config_status_fields()], external_ids=["OnRecord_Key__c"]
        )
        emulator.define_object(
            OBJ, ["Amount__c", "Status__c", "OnRecord_Approval__c", "OnRecord_Approval_Note__c"]
        )
        yield emulator
    assert emulator.errors == []


def crm_configured(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair, **more: Any
) -> Config:
    """The file: Salesforce connected, configuration from the CRM on, nothing governed itself."""
    values: dict[str, Any] = {
        **overrides(emu, keypair, tmp_path),
        "governed": [],
        "worker.rules": ["plugin.rules:builtin_rules"],
        "directory.people": PEOPLE,
        "directory.refresh_seconds": 0,
        "salesforce.poll_logins_interval_seconds": 0,
        "crm_config.enabled": True,
    }
    values.update(more)
    config = make_config(db_url, tmp_path, **values)
    key_store(config).create(datetime.now(UTC))  # the provenance rule signs what it tracks
    return config


class Org:
    """The worker process's parts over one database, driven step by step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker, self.dispatcher, self.jobs = build(config)
        self.engine = self.worker.engine
        self.follower = config_follower(config, self.worker, self.jobs, _NoKeys())

    def refresh(self) -> None:
        """One refresh of the crm_config job (as its schedule runs it), then the worker's check."""
        self.jobs.run_now(JOB_NAME, datetime.now(UTC))
        self.follower.check(force=True)

    def process(self, events: list[Event]) -> None:
        with begin_write(self.engine) as conn:
            insert_events(conn, events, datetime.now(UTC))
        while self.worker.run_once().done:
            pass

    def dispatch(self) -> None:
        while self.dispatcher.run_once().calls:
            pass

    def approval(self, record_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(rule_state.c.value).where(rule_state.c.key == state_key(OBJ, record_id))
            ).scalar()
        return dict(value or {})


class _NoKeys:
    config: Config | None = None

    def check(self, force: bool = False) -> bool:
        return False


def chain(record_id: str, finance_by: str, start: datetime, n: int) -> list[Event]:
    """A form response, strategy then finance deciding, then Jane setting Approved."""

    def event(kind: str, at: datetime, actor: str, delivery: str, data: dict[str, Any]) -> Event:
        return Event(
            source="test", delivery_id=delivery, kind=kind, occurred_at=at,
            object=OBJ, record_id=record_id, actor=actor, data=data,
        )  # fmt: skip

    def decided(stage: str, who: str, at: datetime) -> Event:
        data = {"stage_name": stage, "approver_response": "Approve", "approval_name": f"appr-{n}"}
        return event("approval.decided", at, who, f"d{n}:{stage}", {**data, "responder": {"email": who}})

    return [
        event(
            "form.submitted",
            start,
            "alex@contoso.com",
            f"f{n}",
            {
                "form_id": FORM,
                "form_name": "Budget Request",
                "response_id": str(n),
                "responder": "alex@contoso.com",
            },
        ),
        decided("business strategy", "vera@contoso.com", start + timedelta(minutes=5)),
        decided("finance", finance_by, start + timedelta(minutes=20)),
    ]


def hallway(record_id: str, at: datetime, n: int) -> Event:
    """Jane sets Approved in the CRM herself."""
    return Event(
        source="test", delivery_id=f"c{n}", kind="record.changed", occurred_at=at, object=OBJ,
        record_id=record_id, actor="jane@contoso.com",
        data={"fields": {"Id": record_id, "Status__c": "Approved"}},
    )  # fmt: skip


def status_records(emu: SalesforceEmulator) -> dict[str, dict[str, Any]]:
    return {r["OnRecord_Key__c"]: r for r in emu.records(STATUS_OBJECT)}


def test_a_policy_created_in_the_crm_judges_the_next_approval_and_a_changed_approver_list_only_the_later_one(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    org = Org(crm_configured(db_url, tmp_path, emu, keypair))
    assert "approvals" not in [r.name for r in org.worker.rules]  # the file governs nothing
    budget_policy(emu)  # the admin creates the policy in Setup
    org.refresh()
    first = stored(org.engine)
    assert first.version and first.problems == ()
    assert "approvals" in [r.name for r in org.worker.rules]  # applied within one refresh

    start = datetime.now(UTC) - timedelta(hours=3)
    a = emu.insert_record(OBJ, {"Status__c": "Submitted"})
    org.process([*chain(a, "casey@contoso.com", start, 1), hallway(a, start + timedelta(minutes=30), 1)])
    before = org.approval(a)
    assert before["last"]["verdict"] == "Verified"  # Casey is a finance approver under this policy
    assert before["last"]["config_version"] == first.version
    assert before["last"]["note"].endswith(f"Policy version {first.version[:12]}.")

    # the admin changes the finance approvers; the next approval is judged by the new list
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": "cfo@acme.example"}, by=ADMIN
    )
    org.refresh()
    second = stored(org.engine)
    assert second.version != first.version
    b = emu.insert_record(OBJ, {"Status__c": "Submitted"})
    org.process([*chain(b, "casey@contoso.com", start, 2), hallway(b, start + timedelta(minutes=30), 2)])
    after = org.approval(b)
    assert after["last"]["verdict"] == "Blocked"
    assert "Casey Finance is not an approver of this stage" in after["changes"][-1]["reason"]
    assert after["last"]["config_version"] == second.version
    assert org.approval(a) == before  # the earlier verdict is untouched

    org.dispatch()  # the verdicts and the status records reach the org
    assert emu.record(OBJ, b)["OnRecord_Approval__c"] == "Blocked"
    assert emu.record(OBJ, a)["OnRecord_Approval__c"] == "Verified"
    statuses = status_records(emu)
    finance = statuses[f"{APPROVAL_STAGE_MDT}.Budget_Finance"]
    assert (
        finance["OnRecord_Status__c"] == "OK" and finance["OnRecord_Config_Version__c"] == second.version[:80]
    )
    assert len(statuses) == 5


@pytest.mark.parametrize(
    ("change", "record", "field", "says"),
    [
        pytest.param(
            (APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": " "}),
            f"{APPROVAL_STAGE_MDT}.Budget_Finance",
            "Approvers__c",
            "List should have at least 1 item",
            id="empty approver list",
        ),
        pytest.param(
            (SETTING_MDT, "Default", {"Citation_Weight__c": "lots"}),
            f"{SETTING_MDT}.Default",
            "Citation_Weight__c",
            "Input should be a valid number",
            id="non-numeric weight",
        ),
        pytest.param(
            (GOVERNED_MDT, "Budget", {"Escalate_To__c": "cfo@acme.example"}),
            f"{GOVERNED_MDT}.Budget",
            "Escalate_To__c",
            "unknown field: OnRecord does not read it",
            id="unknown field",
        ),
    ],
)
def test_a_bad_record_leaves_the_last_good_configuration_in_force_and_says_so_on_its_status_record(
    db_url: str,
    tmp_path: Path,
    emu: SalesforceEmulator,
    keypair: KeyPair,
    change: tuple[str, str, dict[str, Any]],
    record: str,
    field: str,
    says: str,
) -> None:
    org = Org(crm_configured(db_url, tmp_path, emu, keypair))
    budget_policy(emu)
    org.refresh()
    good = stored(org.engine)
    rules = org.worker.rules
    type_name, name, values = change
    if field == "Escalate_To__c":  # the admin added a field to the type in Setup
        emu.define_metadata_type(GOVERNED_MDT, [field])
    emu.put_metadata_record(type_name, name, values, by=ADMIN)
    org.refresh()
    now = stored(org.engine)
    assert now.version == good.version  # the last good one stays in force
    assert now.seen_version != good.version
    assert org.worker.rules is rules  # the worker kept its rules
    [problem] = now.problems
    assert (problem.key, problem.field) == (record, field) and says in problem.message
    assert now.degraded.startswith(f"configuration from the CRM refused, version {good.version[:12]} stays")

    org.dispatch()
    statuses = status_records(emu)
    bad = statuses[record]
    assert bad["OnRecord_Status__c"] == "Problem"
    assert bad["OnRecord_Problem__c"].startswith(f"{field}: ") and says in bad["OnRecord_Problem__c"]
    assert bad["OnRecord_Config_Version__c"] == good.version[:80]
    others = [s for key, s in statuses.items() if key != record]
    assert others and all(s["OnRecord_Status__c"] == "OK" for s in others)
    assert all("not applied" in s["OnRecord_Problem__c"] for s in others)

    # a restarted worker starts from the last good version too
    again = Org(org.config)
    assert "approvals" in [r.name for r in again.worker.rules]

    # the admin fixes it: the next refresh applies it and every status is OK again
    emu.put_metadata_record(
        type_name, name, {k: None for k in values} if field != "Approvers__c" else {field: "CFO"}
    )
    org.refresh()
    fixed = stored(org.engine)
    assert fixed.problems == () and fixed.version == fixed.seen_version  # in force again
    org.dispatch()
    assert all(
        s["OnRecord_Status__c"] == "OK" and not s["OnRecord_Problem__c"] for s in status_records(emu).values()
    )


def test_status_records_are_written_only_when_they_change(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    org = Org(crm_configured(db_url, tmp_path, emu, keypair))
    budget_policy(emu)
    org.refresh()
    org.dispatch()
    writes = len([c for c in emu.calls if c.method in ("PATCH", "POST") and "sobjects" in c.path])
    org.refresh()  # nothing changed in Setup
    org.dispatch()
    assert len([c for c in emu.calls if c.method in ("PATCH", "POST") and "sobjects" in c.path]) == writes


def test_the_worker_reads_the_crm_at_start(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    budget_policy(emu)
    org = Org(crm_configured(db_url, tmp_path, emu, keypair))
    read_crm_config_now(org.jobs)  # what `worker` does before its loops
    assert org.follower.check(force=True) is True
    assert "approvals" in [r.name for r in org.worker.rules]
    assert stored(org.engine).version


def test_disabled_the_crm_is_never_asked_and_the_file_alone_configures(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    budget_policy(emu)
    config = crm_configured(
        db_url,
        tmp_path,
        emu,
        keypair,
        **{"crm_config.enabled": False, "governed": [{"object": "Opportunity", "fields": ["Amount"]}]},
    )
    assert JOB_NAME not in [j.name for j in builtin_jobs(config)]
    org = Org(config)
    org.jobs.run_due(datetime.now(UTC))
    read_crm_config_now(org.jobs)
    assert org.follower.check(force=True) is False
    assert "approvals" not in [r.name for r in org.worker.rules]
    assert not any("query" in c.path or "describe" in c.path for c in emu.calls)  # not one call
    assert stored(org.engine).version == ""
    from plugin.commands import check

    assert check._crm_config(config, org.engine) == (
        None,
        "configuration from the CRM: off ([crm_config] enabled = false)",
    )
    with pytest.raises(KeyError):
        org.jobs.run_now(JOB_NAME, datetime.now(UTC))


def test_the_follower_checks_the_stored_version_only_every_few_seconds(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    config = crm_configured(db_url, tmp_path, emu, keypair)
    engine = get_engine(config.storage.url)
    build(config)  # the schema
    rebuilt: list[Config] = []
    clock = [100.0]
    follower = CrmConfigFollower(config, engine, rebuilt.append, clock=lambda: clock[0])
    budget_policy(emu)
    JobRunner(engine, builtin_jobs(config), owner="t").run_now(JOB_NAME, datetime.now(UTC))
    assert follower.check() is True and rebuilt[-1].crm_version == stored(engine).version
    emu.put_metadata_record(APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": "cfo@acme.example"})
    JobRunner(engine, builtin_jobs(config), owner="t").run_now(JOB_NAME, datetime.now(UTC))
    clock[0] += 1.0
    assert follower.check() is False  # not yet: one small query every CHECK_EVERY_SECONDS
    clock[0] += CrmConfigFollower.CHECK_EVERY_SECONDS
    assert follower.check() is True and len(rebuilt) == 2


def test_check_readyz_and_the_metric_say_the_configuration_is_degraded_and_why(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugin import metrics
    from plugin.app import create_app
    from plugin.commands import check

    config = crm_configured(db_url, tmp_path, emu, keypair)
    org = Org(config)
    assert check._crm_config(config, org.engine) == (
        None,
        "configuration from the CRM: not read yet (the worker reads it at start)",
    )
    budget_policy(emu)
    org.refresh()
    ok, line = check._crm_config(config, org.engine)
    assert ok is True and line.startswith(
        f"configuration from the CRM: version {stored(org.engine).version[:12]}"
    )
    assert b"onrecord_crm_config_problems 0.0" in metrics.render(org.engine)

    emu.put_metadata_record(APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": ""}, by=ADMIN)
    org.refresh()
    assert check.run(argparse.Namespace(), config) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL configuration from the CRM refused, version "
        f"{stored(org.engine).version[:12]} stays in force: {APPROVAL_STAGE_MDT}.Budget_Finance "
        "Approvers__c: List should have at least 1 item after validation, not 0 (got [])"
    ) in out
    resp = create_app(config).test_client().get("/readyz")
    body = resp.get_json()
    assert resp.status_code == 200 and body["ready"] is True  # it works on, with the last good one
    assert body["status"] == "degraded"
    assert body["checks"]["crm_config"]["degraded"] is True
    assert "Budget_Finance Approvers__c" in body["checks"]["crm_config"]["detail"]
    assert b"onrecord_crm_config_problems 1.0" in metrics.render(org.engine)


def test_the_configuration_version_a_verdict_names_verifies_against_the_signed_log(
    db_url: str, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    import json

    from plugin.crm_config import ConfigRecord, version
    from plugin.crm_config_job import CONFIG_KIND, CONFIG_PREDICATE
    from plugin.provenance import merkle
    from plugin.provenance.checkpoint import open_checkpoint
    from plugin.provenance.dsse import open_envelope
    from plugin.provenance.log import latest_checkpoint, leaf_of, proofs
    from plugin.storage import provenance_checkpoints, provenance_statements

    config = crm_configured(db_url, tmp_path, emu, keypair)
    org = Org(config)
    budget_policy(emu)
    org.refresh()
    org.refresh()  # the same version read again: logged once
    start = datetime.now(UTC) - timedelta(hours=3)
    a = emu.insert_record(OBJ, {"Status__c": "Submitted"})
    submitted = dataclasses.replace(
        hallway(a, start, 0), data={"fields": {"Id": a, "Status__c": "Submitted"}}
    )
    org.process([submitted, hallway(a, start + timedelta(minutes=10), 1)])
    named = org.approval(a)["last"]["config_version"]
    assert org.approval(a)["last"]["verdict"] == "Blocked"

    with org.engine.connect() as conn:
        [row] = conn.execute(
            sa.select(provenance_statements).where(
                provenance_statements.c.kind == CONFIG_KIND, provenance_statements.c.record_id == named
            )
        ).all()
        size, _ = latest_checkpoint(conn) or (0, "")
        note = conn.execute(
            sa.select(provenance_checkpoints.c.note).where(provenance_checkpoints.c.tree_size == size)
        ).scalar_one()
        proof = proofs(conn, [row.log_index], size)[row.log_index]
    keys = key_store(config).public_keys()
    envelope = json.loads(row.envelope)
    payload, _ = open_envelope(envelope, keys)  # signed by OnRecord's key
    statement = json.loads(payload)
    assert statement["predicateType"] == CONFIG_PREDICATE
    assert statement["subject"][0]["digest"]["sha256"] == named == statement["predicate"]["version"]
    records = [
        ConfigRecord(r["type"], r["developer_name"], r["fields"]) for r in statement["predicate"]["records"]
    ]
    assert version(records) == named  # the version is the digest of the records it lists
    budget = next(r for r in statement["predicate"]["records"] if r["developer_name"] == "Budget")
    assert budget["lastModifiedBy"] == {"id": emu.user_id(ADMIN), "name": "ada.admin"}
    assert budget["systemModstamp"]
    checkpoint = open_checkpoint(note, keys.values())  # the log's signed checkpoint
    hashes = [bytes.fromhex(h) for h in proof["hashes"]]
    assert merkle.verify_inclusion(row.log_index, size, leaf_of(envelope), hashes, checkpoint.root_hash)
