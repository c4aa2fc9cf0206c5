"""Configuration from Salesforce: OnRecord's custom metadata records, read over HTTPS from the
emulator by SOQL through the writer, changed in Setup between two reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.salesforce.crm_config import read_config, read_records, type_query
from connectors.salesforce.provision import (
    APPROVAL_STAGE_MDT,
    GOVERNED_MDT,
    LEADER_MDT,
    SETTING_MDT,
    config_status_fields,
    metadata_types,
)
from connectors.salesforce.wiring import build_salesforce_writer
from plugin import registry
from plugin.config import Config
from plugin.crm_config import FIELDS, STAGE, compose, version
from plugin.crm_config_job import STATUS_FIELDS, STATUS_OBJECT
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import connect, overrides
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair

ADMIN = "ada.admin@acme.example"


def define_onrecord_types(emu: SalesforceEmulator) -> None:
    """The four custom metadata types as `provision --deploy` defines them."""
    for name, _, _, _, fields in metadata_types():
        emu.define_metadata_type(
            name,
            [f.name for f in fields],
            relationships={f.name: f.props["referenceTo"] for f in fields if f.props.get("referenceTo")},
        )


def budget_policy(emu: SalesforceEmulator, *, finance: str = "Finance Approvers", by: str = ADMIN) -> None:
    """An admin's policy in Setup: Budget_Request__c, two stages, a leader, the settings."""
    emu.put_metadata_record(
        GOVERNED_MDT,
        "Budget",
        {
            "Object__c": "Budget_Request__c",
            "Tracked_Fields__c": "Amount__c\nStatus__c",
            "Approval_Field__c": "Status__c",
            "Approved_Values__c": "Approved",
            "Form_Id__c": "budget-request-form",
            "Revert_To__c": "Submitted",
            "Set_Status__c": True,
            "Grace_Seconds__c": 600,
            "Active__c": True,
        },
        by=by,
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
        by=by,
    )
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT,
        "Budget_Finance",
        {"Governed__c": "Budget", "Order__c": 2, "Stage_Name__c": "finance", "Approvers__c": finance},
        by=by,
    )
    emu.put_metadata_record(LEADER_MDT, "Ceo", {"Email_Or_Username__c": "ceo@acme.example"}, by=by)
    emu.put_metadata_record(SETTING_MDT, "Default", {"Login_Weight__c": 2, "Period__c": "day"}, by=by)


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(query_batch_size=2) as emulator:  # every query pages
        connect(emulator, keypair)
        define_onrecord_types(emulator)
        yield emulator
    assert emulator.errors == []


def sf_config(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path, **more: Any) -> Config:
    return make_config(
        f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **overrides(emu, keypair, tmp_path), **more
    )


def test_the_field_names_read_are_the_provisioned_types_fields() -> None:
    provisioned = {name: {f.name for f in fields} for name, _, _, _, fields in metadata_types()}
    assert {t: set(f) for t, f in FIELDS.items()} == provisioned
    # and the status records OnRecord writes are the provisioned status object's fields
    assert STATUS_OBJECT == "OnRecord_Config_Status__c"
    assert set(STATUS_FIELDS.values()) <= {f.name for f in config_status_fields()}


def test_the_records_are_read_over_https_with_who_changed_them_and_stages_linked_by_name(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    budget_policy(emu)
    config = sf_config(emu, keypair, tmp_path)
    records = registry.crm_side("salesforce").read_config(config)  # type: ignore[misc]
    by_name = {(r.type, r.developer_name): r for r in records}
    assert sorted(by_name) == sorted(
        [
            (GOVERNED_MDT, "Budget"),
            (APPROVAL_STAGE_MDT, "Budget_Finance"),
            (APPROVAL_STAGE_MDT, "Budget_Strategy"),
            (LEADER_MDT, "Ceo"),
            (SETTING_MDT, "Default"),
        ]
    )
    budget = by_name[(GOVERNED_MDT, "Budget")]
    assert budget.fields["Object__c"] == "Budget_Request__c"
    assert budget.modified_by_id == emu.user_id(ADMIN) and budget.modified_by_name == "ada.admin"
    assert budget.modstamp.endswith("+0000")
    stored = emu.records(APPROVAL_STAGE_MDT)[0]["Governed__c"]
    assert stored.startswith(emu.records(GOVERNED_MDT)[0]["Id"][:3])  # Salesforce keeps the id
    assert by_name[(STAGE, "Budget_Finance")].fields["Governed__c"] == "Budget"  # read as its name
    composed = compose(records)
    assert composed.problems == []
    assert [s["name"] for s in composed.governed[0]["stages"]] == ["business strategy", "finance"]
    queries = [c.path for c in emu.calls if "/query" in c.path]
    assert queries  # through the REST query resource (and its queryMore pages)


def test_a_change_in_setup_between_two_reads_is_a_new_version(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    budget_policy(emu)
    config = sf_config(emu, keypair, tmp_path)
    first = read_config(config)
    assert version(read_config(config)) == version(first)  # nothing changed: the same version
    emu.put_metadata_record(
        APPROVAL_STAGE_MDT, "Budget_Finance", {"Approvers__c": "cfo@acme.example"}, by=ADMIN
    )
    second = read_config(config)
    assert version(second) != version(first)
    [finance] = [r for r in second if r.developer_name == "Budget_Finance"]
    assert finance.fields["Approvers__c"] == "cfo@acme.example"
    emu.delete_metadata_record(LEADER_MDT, "Ceo")
    assert all(r.developer_name != "Ceo" for r in read_config(config))


def test_a_field_an_admin_added_to_a_type_is_read_and_its_value_is_a_problem(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    budget_policy(emu)
    emu.define_metadata_type(APPROVAL_STAGE_MDT, ["Require_Everyone__c"])  # a field added in Setup
    emu.put_metadata_record(APPROVAL_STAGE_MDT, "Budget_Finance", {"Require_Everyone__c": True}, by=ADMIN)
    writer = build_salesforce_writer(sf_config(emu, keypair, tmp_path))
    from connectors.salesforce.crm_config import writer_describe

    records = read_records(writer.query, writer_describe(writer))
    [problem] = compose(records).problems
    assert (problem.developer_name, problem.field) == ("Budget_Finance", "Require_Everyone__c")
    # without describe the field is not selected: nothing would tell the admin it does nothing
    assert compose(read_records(writer.query)).problems == []


def test_the_type_query_is_soql_the_org_accepts(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    writer = build_salesforce_writer(sf_config(emu, keypair, tmp_path))
    for type_name in FIELDS:
        assert list(writer.query(type_query(type_name))) == []  # strict types: every field exists


def test_after_provision_deploys_the_package_the_org_serves_the_records_an_admin_creates(
    keypair: KeyPair, tmp_path: Path
) -> None:
    from connectors.salesforce.provision import build_package, deploy_package

    with SalesforceEmulator() as fresh:  # no types defined by hand: the deploy defines them
        connect(fresh, keypair)
        fresh.deploy_polls = 0
        config = sf_config(fresh, keypair, tmp_path)
        outcome = deploy_package(
            build_salesforce_writer(config), build_package(config), sandbox=False, poll_seconds=0
        )
        assert outcome.ok, outcome.errors
        budget_policy(fresh)
        records = read_config(config)
        [budget] = fresh.records(GOVERNED_MDT)
        assert all(r["Governed__c"] == budget["Id"] for r in fresh.records(APPROVAL_STAGE_MDT))
        assert fresh.errors == []
    [finance] = [r for r in records if r.developer_name == "Budget_Finance"]
    assert finance.fields["Governed__c"] == "Budget"  # the deployed relationship: stored as the id
    assert compose(records).problems == []
