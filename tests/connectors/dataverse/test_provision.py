"""Dataverse provisioning: the plan of Web API metadata requests (pure), its files, and its deploy
against the emulator, which refuses bad definitions the way Dataverse does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.dataverse.provision import (
    SOLUTION_HEADER,
    DeployError,
    MetadataRequest,
    PlanError,
    deploy,
    governed_tables,
    plan,
    write_plan,
)
from connectors.dataverse.webapi import DataverseError, WebApiClient, WebApiSettings
from plugin.config import Config
from plugin.crm_model import CHANNELS, LONG_TEXT, objects
from tests.conftest import make_config
from tests.dvemu import DataverseEmulator
from tests.dvemu.metadata import INVALID_ARGUMENT, NOT_UNIQUE, add_solution, relationships

GOVERNED = [{"object": "opportunity", "crm": "dataverse", "fields": ["estimatedvalue"]}]


def plan_config(tmp_path: Path, **more: Any) -> Config:
    values: dict[str, Any] = {"governed": GOVERNED}
    values.update(more)
    return make_config(f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **values)


def by_name(requests: list[MetadataRequest]) -> dict[tuple[str, str], MetadataRequest]:
    return {(r.table, r.name): r for r in requests}


# --- the plan (pure) -------------------------------------------------------------------------------


def test_the_plan_creates_each_table_before_its_columns_lookups_and_key(tmp_path: Path) -> None:
    requests = plan(plan_config(tmp_path))
    kinds = [(r.kind, r.table) for r in requests]

    governed = [r for r in requests if r.table == "opportunity"]
    assert [r.kind for r in governed] == ["column"] * 7
    assert [r.name for r in governed] == [
        "onr_channel",
        "onr_source",
        "onr_recorded_at",
        "onr_digest",
        "onr_signature",
        "onr_approval",
        "onr_approval_note",
    ]
    for table in ("onr_violation", "onr_leader_signal"):
        mine = [k for k, t in kinds if t == table]
        assert mine[0] == "table" and mine[-1] == "key"
        assert set(mine[1:-1]) <= {"column", "relationship"}
    assert [r.path for r in requests if r.kind == "table"] == ["EntityDefinitions"] * 2
    assert all(r.method == "POST" and not r.headers for r in requests)


def test_only_governed_tables_that_live_in_dataverse_get_columns(tmp_path: Path) -> None:
    config = plan_config(
        tmp_path,
        governed=[*GOVERNED, {"object": "Opportunity", "crm": "salesforce", "fields": ["Amount"]}],
    )

    assert governed_tables(config) == ["opportunity"]
    assert {r.table for r in plan(config) if r.kind == "column"} == {
        "opportunity",
        "onr_violation",
        "onr_leader_signal",
    }


def test_columns_are_rendered_by_kind(tmp_path: Path) -> None:
    requests = by_name(plan(plan_config(tmp_path)))

    channel = requests["opportunity", "onr_channel"].body
    assert channel["@odata.type"] == "Microsoft.Dynamics.CRM.StringAttributeMetadata"
    assert channel["SchemaName"] == "onr_Channel"
    assert channel["MaxLength"] == max(len(c) for c in CHANNELS)  # a choice, written as its text
    assert channel["DisplayName"]["LocalizedLabels"] == [
        {
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": "OnRecord Channel",
            "LanguageCode": 1033,
        }
    ]
    assert channel["RequiredLevel"]["Value"] == "None"
    approval = requests["opportunity", "onr_approval"].body
    assert approval["MaxLength"] == len("Verified")
    note = requests["opportunity", "onr_approval_note"].body
    assert (note["@odata.type"], note["MaxLength"], note["Format"]) == (
        "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
        LONG_TEXT,
        "TextArea",
    )
    recorded = requests["opportunity", "onr_recorded_at"].body
    assert recorded["Format"] == "DateAndTime"
    assert recorded["DateTimeBehavior"] == {"Value": "UserLocal"}
    start = requests["onr_leader_signal", "onr_period_start"].body
    assert (start["Format"], start["DateTimeBehavior"]) == ("DateOnly", {"Value": "DateOnly"})
    logins = requests["onr_leader_signal", "onr_logins"].body
    assert logins["@odata.type"] == "Microsoft.Dynamics.CRM.IntegerAttributeMetadata"
    assert (logins["MinValue"], logins["MaxValue"]) == (-999_999_999, 999_999_999)
    score = requests["onr_leader_signal", "onr_score"].body
    assert score["@odata.type"] == "Microsoft.Dynamics.CRM.DecimalAttributeMetadata"
    assert (score["Precision"], score["MinValue"], score["MaxValue"]) == (1, -9999.9, 9999.9)
    champion = requests["onr_leader_signal", "onr_champion_candidate"].body
    assert champion["@odata.type"] == "Microsoft.Dynamics.CRM.BooleanAttributeMetadata"
    assert champion["DefaultValue"] is False
    options = champion["OptionSet"]
    assert (options["TrueOption"]["Value"], options["FalseOption"]["Value"]) == (1, 0)
    assert options["TrueOption"]["Label"]["LocalizedLabels"][0]["Label"] == "Yes"


def test_tables_lookups_and_keys(tmp_path: Path) -> None:
    requests = by_name(plan(plan_config(tmp_path)))

    table = requests["onr_violation", "onr_violation"].body
    assert table["SchemaName"] == "onr_Violation"
    assert table["OwnershipType"] == "OrganizationOwned"
    assert table["DisplayCollectionName"]["LocalizedLabels"][0]["Label"] == "OnRecord Violations"
    (primary,) = table["Attributes"]
    assert primary["IsPrimaryName"] is True and primary["SchemaName"] == "onr_Name"
    assert primary["AutoNumberFormat"] == "V-{SEQNUM:6}"

    (lookup,) = [r for r in requests.values() if r.kind == "relationship" and r.table == "onr_leader_signal"]
    assert lookup.path == "RelationshipDefinitions"
    assert lookup.attribute_name == "onr_leader"
    body = lookup.body
    assert body["@odata.type"] == "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata"
    assert (body["ReferencedEntity"], body["ReferencedAttribute"], body["ReferencingEntity"]) == (
        "systemuser",
        "systemuserid",
        "onr_leader_signal",
    )
    assert body["SchemaName"].startswith("onr_")
    assert body["Lookup"]["SchemaName"] == "onr_Leader"
    assert body["CascadeConfiguration"]["Delete"] == "RemoveLink"

    key = requests["onr_violation", "onr_violation_key"]
    assert key.path == "EntityDefinitions(LogicalName='onr_violation')/Keys"
    assert key.body["@odata.type"] == "Microsoft.Dynamics.CRM.EntityKeyMetadata"
    assert key.body["KeyAttributes"] == ["onr_key"]


def test_the_publisher_prefix_and_the_solution_name_the_components(tmp_path: Path) -> None:
    config = plan_config(tmp_path, **{"dataverse.publisher_prefix": "ctso"})

    requests = plan(config, solution="ContosoOnRecord")

    assert {r.headers[SOLUTION_HEADER] for r in requests} == {"ContosoOnRecord"}
    assert by_name(requests)["opportunity", "ctso_approval"].body["SchemaName"] == "ctso_Approval"
    assert {r.table for r in requests} == {"opportunity", "ctso_violation", "ctso_leader_signal"}


def test_a_provenance_field_that_is_not_an_onrecord_name_cannot_be_planned(tmp_path: Path) -> None:
    config = plan_config(tmp_path, **{"provenance.channel_field": "Channel__c"})

    with pytest.raises(PlanError, match="Channel__c"):
        plan(config)


def test_write_plan_writes_one_numbered_json_request_a_file_and_a_readme(tmp_path: Path) -> None:
    requests = plan(plan_config(tmp_path), solution="OnRecord")
    out = tmp_path / "plan"

    written = write_plan(requests, out)

    files = sorted(out.glob("*.json"))
    assert len(files) == len(requests) and len(written) == len(requests) + 1
    assert files[0].name == "001-column-opportunity-onr_channel.json"
    first = json.loads(files[0].read_text())
    assert first["method"] == "POST"
    assert first["path"] == "EntityDefinitions(LogicalName='opportunity')/Attributes"
    assert first["headers"][SOLUTION_HEADER] == "OnRecord"
    assert first["body"] == requests[0].body
    readme = (out / "README.txt").read_text()
    assert f"{len(requests)} Web API requests" in readme
    assert "--deploy" in readme and "EntityKeyIndexStatus" in readme
    assert all(f.name in readme for f in files)


# --- deploy, against the emulator --------------------------------------------------------------------


@pytest.fixture
def dv() -> Iterator[DataverseEmulator]:
    """An environment without OnRecord's tables (conftest's `dataverse` has them already)."""
    with DataverseEmulator() as emulator:
        yield emulator
    assert emulator.errors == []


def client_for(dv: DataverseEmulator) -> WebApiClient:
    return WebApiClient(
        WebApiSettings(
            url=dv.url,
            tenant_id=dv.tenant_id,
            client_id=dv.client_id,
            client_secret=dv.client_secret,
            authority_host=dv.url,
            ca_bundle=dv.ca_path,
        )
    )


def posts(dv: DataverseEmulator) -> list[str]:
    return [c.path for c in dv.api_calls() if c.method == "POST"]


def test_deploy_creates_what_is_missing_and_a_second_deploy_creates_nothing(
    dv: DataverseEmulator, tmp_path: Path
) -> None:
    config = plan_config(tmp_path)
    client = client_for(dv)
    count = len(plan(config))

    report = deploy(config, client)

    assert len(report) == count and all(line.startswith("created ") for line in report)
    assert len(posts(dv)) == count
    violation = dv.state.entity("onr_violation")
    signal = dv.state.entity("onr_leader_signal")
    assert violation is not None and signal is not None
    assert violation["EntitySetName"] == "onr_violations"
    assert signal["Attributes"]["onr_leader"]["Targets"] == ["systemuser"]
    assert signal["Attributes"]["onr_leader"]["NavigationProperty"] == "onr_Leader"
    assert signal["Keys"][0]["KeyAttributes"] == ["onr_key"]
    assert signal["Keys"][0]["EntityKeyIndexStatus"] == "Active"
    opportunity = dv.state.entity("opportunity")
    assert opportunity is not None
    assert opportunity["Attributes"]["onr_recorded_at"]["DateTimeBehavior"] == "UserLocal"
    assert len(relationships(dv.state)) == 2

    again = deploy(config, client)

    assert len(again) == count and all(line.startswith("exists ") for line in again)
    assert len(posts(dv)) == count  # nothing sent the second time


def test_what_deploy_creates_takes_onrecords_writes(dv: DataverseEmulator, tmp_path: Path) -> None:
    config = plan_config(tmp_path)
    client = client_for(dv)
    deploy(config, client)
    leader = dv.add_user("Carla CEO", email="ceo@contoso.com")

    # an upsert by the alternate key, a lookup bound by its navigation property, a count, a score
    client.patch(
        "onr_leader_signals(onr_key='carla-2025-W11')",
        {
            "onr_Leader@odata.bind": f"/systemusers({leader})",
            "onr_period": "2025-W11",
            "onr_period_start": "2025-03-10",
            "onr_logins": 3,
            "onr_score": 42.5,
            "onr_champion_candidate": True,
        },
    )
    client.patch(
        f"opportunities({dv.add_record('opportunity', {'name': 'Big deal'})})",
        {"onr_approval": "Verified", "onr_recorded_at": "2025-03-10T12:00:00Z", "onr_channel": "Form"},
    )

    (row,) = dv.records("onr_leader_signals")
    assert row["onr_leader"] == leader and row["onr_logins"] == 3
    with pytest.raises(DataverseError) as refused:  # longer than any approval state
        client.patch(
            f"opportunities({dv.add_record('opportunity', {'name': 'Other'})})",
            {"onr_approval": "Not a state"},
        )
    assert refused.value.status == 400


def test_deploy_puts_components_in_the_named_solution(dv: DataverseEmulator, tmp_path: Path) -> None:
    add_solution(dv.state, "ContosoOnRecord", "ctso")
    config = plan_config(tmp_path, **{"dataverse.publisher_prefix": "ctso"})

    deploy(config, client_for(dv), solution="ContosoOnRecord")

    sent = [c for c in dv.api_calls() if c.method == "POST"]
    named = [{k.lower(): v for k, v in c.headers.items()}.get(SOLUTION_HEADER.lower()) for c in sent]
    assert sent and set(named) == {"ContosoOnRecord"}
    assert dv.state.entity("ctso_violation") is not None


def test_deploy_stops_at_a_prefix_that_is_not_the_publishers_saying_what_dataverse_said(
    dv: DataverseEmulator, tmp_path: Path
) -> None:
    config = plan_config(tmp_path, **{"dataverse.publisher_prefix": "zzz"})

    with pytest.raises(DeployError) as failed:
        deploy(config, client_for(dv), solution="OnRecord")  # OnRecord's publisher is "onr"

    assert "customization prefix" in str(failed.value)
    assert failed.value.report == []
    assert dv.state.entity("zzz_violation") is None


def test_deploy_reports_a_missing_governed_table_and_a_column_of_another_type(
    dv: DataverseEmulator, tmp_path: Path
) -> None:
    dv.state.add_attributes("opportunity", {"onr_approval": {"AttributeType": "Integer"}})
    config = plan_config(
        tmp_path, governed=[*GOVERNED, {"object": "onr_nosuchtable", "crm": "dataverse", "fields": ["x"]}]
    )

    report = deploy(config, client_for(dv))

    assert any(line.startswith("conflict column onr_approval on opportunity") for line in report)
    assert dv.state.entity("opportunity")["Attributes"]["onr_approval"]["AttributeType"] == "Integer"  # type: ignore[index]
    missing = [line for line in report if line.startswith("missing table onr_nosuchtable")]
    assert len(missing) == 1
    assert dv.state.entity("onr_violation") is not None  # the rest went on


def test_an_environment_provisioned_as_the_writer_expects_needs_nothing_more(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    # `dataverse` (conftest) has OnRecord's tables and columns as the writer's tests model them
    # (tests/dvemu/model.py): what deploy would create must be exactly what the writer expects.
    report = deploy(plan_config(tmp_path), client_for(dataverse))

    assert [line for line in report if not line.startswith("exists ")] == []
    assert posts(dataverse) == []


# --- the emulator refuses what Dataverse refuses ------------------------------------------------------


def test_the_emulator_refuses_a_definition_without_schema_name_a_duplicate_and_an_unknown_solution(
    dv: DataverseEmulator, tmp_path: Path
) -> None:
    session = dv.http_session()
    root = dv.service_root
    column = plan(plan_config(tmp_path))[0]
    nameless = {k: v for k, v in column.body.items() if k != "SchemaName"}

    missing = session.post(root + column.path, json=nameless)
    first = session.post(root + column.path, json=column.body)
    duplicate = session.post(root + column.path, json=column.body)
    unknown = session.post(root + column.path, json=column.body, headers={SOLUTION_HEADER: "NoSuchSolution"})

    assert (missing.status_code, missing.json()["error"]["code"]) == (400, INVALID_ARGUMENT)
    assert "SchemaName" in missing.json()["error"]["message"]
    assert first.status_code == 204 and "Attributes(" in first.headers["OData-EntityId"]
    assert (duplicate.status_code, duplicate.json()["error"]["code"]) == (400, NOT_UNIQUE)
    assert unknown.status_code == 404


def test_the_emulator_refuses_a_table_without_a_primary_name_and_a_key_on_a_missing_column(
    dv: DataverseEmulator, tmp_path: Path
) -> None:
    session = dv.http_session()
    root = dv.service_root
    requests = by_name(plan(plan_config(tmp_path)))
    table = requests["onr_violation", "onr_violation"]
    key = requests["onr_violation", "onr_violation_key"]

    no_primary = session.post(root + table.path, json={**table.body, "Attributes": []})
    created = session.post(root + table.path, json=table.body)
    early_key = session.post(root + key.path, json=key.body)  # before its column exists

    assert (no_primary.status_code, no_primary.json()["error"]["code"]) == (400, INVALID_ARGUMENT)
    assert created.status_code == 204
    assert early_key.status_code == 400 and "onr_key" in early_key.json()["error"]["message"]
    listed = session.get(root + "EntityDefinitions", params={"$select": "LogicalName"}).json()["value"]
    assert "onr_violation" in {t["LogicalName"] for t in listed}


def test_every_model_object_is_planned(tmp_path: Path) -> None:
    tables = {r.name for r in plan(plan_config(tmp_path)) if r.kind == "table"}

    assert tables == {
        f"onr_{o.name.removeprefix('OnRecord_').removesuffix('__c').lower()}" for o in objects()
    }
