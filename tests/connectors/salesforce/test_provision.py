"""`provision`: the metadata package OnRecord needs, valid per Salesforce's own Metadata API schema,
written to a directory and deployed through simple-salesforce to the emulator."""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import simple_salesforce
from lxml import etree

from connectors.salesforce.ids import to_18
from connectors.salesforce.provision import (
    APPROVAL_RULE,
    METADATA_TYPES,
    NS,
    PackageError,
    approval_formula,
    approval_message,
    build_package,
    deploy_package,
    is_sandbox,
    package_zip,
)
from connectors.salesforce.wiring import build_salesforce_writer
from plugin.cli import main
from plugin.config import Config, GovernedObject
from plugin.crm import RecordWrite, WriteBatch
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import cli_environment, connect, overrides
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair

XSD = "http://www.w3.org/2001/XMLSchema"
WSDL = "http://schemas.xmlsoap.org/wsdl/"
MD = f"{{{NS}}}"
INTEGRATION_USER = "0055g00000IntEg"
GOVERNED: list[dict[str, Any]] = [
    {"object": "Opportunity", "fields": ["Amount", "StageName"]},
    {
        "object": "Budget_Request__c",
        "fields": ["Amount__c", "Status__c"],
        "approval_field": "Status__c",
        "approved_values": ["Approved", "Approved by Finance"],
        "form_id": "budget-request",
        "stages": [
            {"name": "business strategy", "approvers": ["strategy@acme.example"]},
            {"name": "finance", "approvers": ["cfo@acme.example"]},
        ],
        "revert_to": "Submitted",
    },
]


@pytest.fixture(scope="module")
def metadata_schema() -> etree.XMLSchema:
    """Salesforce's Metadata API schema (metadata.wsdl, API 63.0, shipped with simple-salesforce),
    with the file-level root elements a package's files use."""
    wsdl = Path(simple_salesforce.__file__).parent / "metadata.wsdl"
    source = etree.parse(str(wsdl)).getroot().find(f"{{{WSDL}}}types/{{{XSD}}}schema")
    assert source is not None
    schema = etree.Element(f"{{{XSD}}}schema", nsmap={"xsd": XSD, "tns": NS}, attrib=dict(source.attrib))
    schema.extend(copy.deepcopy(child) for child in source)
    roots = ("CustomObject", "Package", "PermissionSet", "ReportType", "Report", "Dashboard")
    for root in (*roots, "ReportFolder", "DashboardFolder"):
        etree.SubElement(schema, f"{{{XSD}}}element", name=root, type=f"tns:{root}")
    return etree.XMLSchema(schema)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(
        f"sqlite:///{tmp_path}/onrecord.db",
        tmp_path,
        **{"governed": GOVERNED, "salesforce.integration_user_id": INTEGRATION_USER},
    )


def parse(content: bytes) -> etree._Element:
    return etree.fromstring(content)


def fields_of(obj: etree._Element) -> dict[str, etree._Element]:
    return {f.findtext(MD + "fullName") or "": f for f in obj.findall(MD + "fields")}


def picklist(field: etree._Element) -> list[str]:
    return [v.findtext(MD + "fullName") or "" for v in field.iter(MD + "value")]


# --- the package ---


def test_every_file_is_valid_against_salesforces_metadata_schema(
    config: Config, metadata_schema: etree.XMLSchema
) -> None:
    files = build_package(config)

    assert sorted(files) == [
        "dashboards/OnRecord-meta.xml",
        "dashboards/OnRecord/OnRecord_Leader_Buy_In.dashboard",
        "objects/Budget_Request__c.object",
        "objects/OnRecord_Approval_Stage__mdt.object",
        "objects/OnRecord_Config_Status__c.object",
        "objects/OnRecord_Governed__mdt.object",
        "objects/OnRecord_Leader_Signal__c.object",
        "objects/OnRecord_Leader__mdt.object",
        "objects/OnRecord_Setting__mdt.object",
        "objects/OnRecord_Violation__c.object",
        "objects/Opportunity.object",
        "package.xml",
        "permissionsets/OnRecord_Integration.permissionset",
        "permissionsets/OnRecord_Viewer.permissionset",
        "reportTypes/OnRecord_Leader_Signals.reportType",
        "reports/OnRecord-meta.xml",
        "reports/OnRecord/OnRecord_Leader_Buy_In.report",
    ]
    for name, content in files.items():
        assert content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n'), name
        root = parse(content)
        assert etree.QName(root).namespace == NS, name
        assert metadata_schema.validate(root), f"{name}: {metadata_schema.error_log}"


def test_a_misordered_element_would_fail_the_schema(metadata_schema: etree.XMLSchema) -> None:
    wrong = (
        b'<CustomObject xmlns="%s"><fields><label>A</label><fullName>A__c</fullName></fields></CustomObject>'
    )
    assert not metadata_schema.validate(parse(wrong % NS.encode()))


def test_each_governed_object_gets_the_onrecord_fields(config: Config) -> None:
    files = build_package(config)

    for obj in ("Opportunity", "Budget_Request__c"):
        fields = fields_of(parse(files[f"objects/{obj}.object"]))
        types = {name: f.findtext(MD + "type") for name, f in fields.items()}
        assert types == {
            "OnRecord_Channel__c": "Picklist",
            "OnRecord_Source__c": "Text",
            "OnRecord_Recorded_At__c": "DateTime",
            "OnRecord_Digest__c": "Text",
            "OnRecord_Signature__c": "LongTextArea",
            "OnRecord_Approval__c": "Picklist",
            "OnRecord_Approval_Note__c": "LongTextArea",
        }
        assert picklist(fields["OnRecord_Channel__c"]) == ["Form", "Flow", "UI", "API", "Import", "Unknown"]
        assert picklist(fields["OnRecord_Approval__c"]) == ["Verified", "Pending", "Blocked"]
        assert fields["OnRecord_Approval__c"].findtext(f"{MD}valueSet/{MD}restricted") == "true"


def test_provenance_fields_follow_their_configured_api_names(tmp_path: Path) -> None:
    config = make_config(
        f"sqlite:///{tmp_path}/onrecord.db",
        tmp_path,
        **{
            "governed": GOVERNED,
            "salesforce.integration_user_id": INTEGRATION_USER,
            "provenance.channel_field": "Acme_Channel__c",
            "provenance.signature_field": "Acme_Signature__c",
        },
    )
    fields = fields_of(parse(build_package(config)["objects/Opportunity.object"]))
    assert {"Acme_Channel__c", "Acme_Signature__c", "OnRecord_Source__c"} <= set(fields)
    assert "OnRecord_Channel__c" not in fields and "OnRecord_Signature__c" not in fields


def test_leader_signal_object_is_keyed_by_leader_and_period(config: Config) -> None:
    obj = parse(build_package(config)["objects/OnRecord_Leader_Signal__c.object"])
    fields = fields_of(obj)

    key = fields["OnRecord_Key__c"]
    assert [key.findtext(MD + t) for t in ("externalId", "unique", "caseSensitive")] == [
        "true",
        "true",
        "false",
    ]
    leader = fields["OnRecord_Leader__c"]
    assert (leader.findtext(MD + "type"), leader.findtext(MD + "referenceTo")) == ("Lookup", "User")
    assert fields["OnRecord_Period__c"].findtext(MD + "type") == "Text"
    counts = {
        n
        for n, f in fields.items()
        if f.findtext(MD + "type") == "Number" and n not in ("OnRecord_Score__c", "OnRecord_Trend__c")
    }
    assert counts == {
        "OnRecord_Logins__c",
        "OnRecord_Form_Approvals__c",
        "OnRecord_Records_Touched__c",
        "OnRecord_Trainings__c",
        "OnRecord_Citations__c",
        "OnRecord_Off_System_Approvals__c",
        "OnRecord_Report_Views__c",
        "OnRecord_Dashboard_Views__c",
    }
    assert fields["OnRecord_Score__c"].findtext(MD + "scale") == "1"
    trend = fields["OnRecord_Trend__c"]
    assert (trend.findtext(MD + "type"), trend.findtext(MD + "scale")) == ("Number", "1")
    version = fields["OnRecord_Weights_Version__c"]
    assert (version.findtext(MD + "type"), version.findtext(MD + "length")) == ("Text", "40")
    champion = fields["OnRecord_Champion_Candidate__c"]
    assert (champion.findtext(MD + "type"), champion.findtext(MD + "defaultValue")) == ("Checkbox", "false")
    assert obj.findtext(MD + "deploymentStatus") == "Deployed"
    assert obj.findtext(f"{MD}nameField/{MD}type") == "AutoNumber"


def test_violation_object_records_record_actor_rule_action_verdict_and_time(config: Config) -> None:
    fields = fields_of(parse(build_package(config)["objects/OnRecord_Violation__c.object"]))

    assert {n: f.findtext(MD + "type") for n, f in fields.items()} == {
        "OnRecord_Object__c": "Text",
        "OnRecord_Record_Id__c": "Text",
        "OnRecord_Actor__c": "Lookup",
        "OnRecord_Actor_Name__c": "Text",
        "OnRecord_Rule__c": "Text",
        "OnRecord_Action__c": "Text",
        "OnRecord_Occurred_At__c": "DateTime",
        "OnRecord_Detail__c": "LongTextArea",
        "OnRecord_Verdict__c": "Text",
        "OnRecord_Key__c": "Text",
    }
    assert fields["OnRecord_Actor__c"].findtext(MD + "referenceTo") == "User"
    assert fields["OnRecord_Actor_Name__c"].findtext(MD + "length") == "255"
    assert fields["OnRecord_Verdict__c"].findtext(MD + "length") == "20"
    key = fields["OnRecord_Key__c"]
    assert (key.findtext(MD + "externalId"), key.findtext(MD + "unique")) == ("true", "true")


def test_only_approval_governed_objects_get_the_integration_user_rule(config: Config) -> None:
    files = build_package(config)

    assert parse(files["objects/Opportunity.object"]).find(MD + "validationRules") is None
    rule = parse(files["objects/Budget_Request__c.object"]).find(MD + "validationRules")
    assert rule is not None
    assert rule.findtext(MD + "fullName") == APPROVAL_RULE and rule.findtext(MD + "active") == "true"
    assert rule.findtext(MD + "errorDisplayField") == "Status__c"
    formula = rule.findtext(MD + "errorConditionFormula") or ""
    assert f'CASESAFEID($User.Id) <> "{to_18(INTEGRATION_USER)}"' in formula
    assert 'OR(ISPICKVAL(Status__c, "Approved"), ISPICKVAL(Status__c, "Approved by Finance"))' in formula
    assert "OR(ISNEW(), ISCHANGED(Status__c))" in formula
    assert 'ISPICKVAL(OnRecord_Approval__c, "Verified")' in formula


@pytest.mark.parametrize(
    ("kind", "values", "expected"),
    [
        ("picklist", ["Approved"], 'ISPICKVAL(Stage__c, "Approved")),'),
        ("text", ["OK", "Done"], 'OR(Stage__c = "OK", Stage__c = "Done")),'),
        ("checkbox", [], "ISCHANGED(Stage__c)), Stage__c),"),
    ],
)
def test_approved_status_test_follows_the_fields_type(kind: str, values: list[str], expected: str) -> None:
    governed = GovernedObject.model_validate(
        {
            "object": "X__c",
            "fields": ["Stage__c"],
            "approval_field": "Stage__c",
            "approval_field_type": kind,
            "approved_values": values,
            "form_id": "form-1",
            "stages": [{"name": "finance", "approvers": ["cfo@acme.example"]}],
            "revert_to": "" if kind == "checkbox" else "Draft",
        }
    )

    assert expected in approval_formula(governed, INTEGRATION_USER)


def policy(**more: object) -> GovernedObject:
    """Budget_Request__c with a two-stage policy (and `more` keys)."""
    return GovernedObject.model_validate({**GOVERNED[1], **more})


def test_status_writers_are_let_through_by_id_or_username() -> None:
    flow_user = "0055g00000FlowU"
    governed = policy(status_writers=[flow_user, "Flow.Connection@Acme.example", to_18(flow_user)])

    formula = approval_formula(governed, INTEGRATION_USER)

    assert formula.startswith(
        "AND(\n"
        f'  CASESAFEID($User.Id) <> "{to_18(INTEGRATION_USER)}",\n'
        f'  CASESAFEID($User.Id) <> "{to_18(flow_user)}",\n'
        '  $User.Username <> "flow.connection@acme.example",\n'
        "  OR(\n"
    )
    assert formula.count("CASESAFEID") == 2  # the 15- and 18-character forms are one user


@pytest.mark.parametrize("writer", ["flowconnection1", "0015g00000Acct1", "005 5g00000Flow"])
def test_a_status_writer_that_is_neither_a_user_id_nor_a_username_is_refused(writer: str) -> None:
    with pytest.raises(PackageError, match=rf"status_writers: {writer!r}"):
        approval_formula(policy(status_writers=[writer]), INTEGRATION_USER)


def test_too_many_status_writers_for_salesforces_formula_limit_are_refused(tmp_path: Path) -> None:
    writers = [f"flow-connection-{i:03d}@acme.example" for i in range(120)]
    config = make_config(
        f"sqlite:///{tmp_path}/x.db",
        tmp_path,
        **{
            "governed": [{**GOVERNED[1], "status_writers": writers}],
            "salesforce.integration_user_id": INTEGRATION_USER,
        },
    )

    with pytest.raises(PackageError, match=r"Budget_Request__c: .* over Salesforce's 3900"):
        build_package(config)


def test_the_rules_message_says_what_to_do_naming_the_form_and_its_stages(config: Config) -> None:
    rule = parse(build_package(config)["objects/Budget_Request__c.object"]).find(MD + "validationRules")
    assert rule is not None

    assert rule.findtext(MD + "errorMessage") == (
        "Approvals count only through the official form (budget-request) and its approval stages "
        "(business strategy, then finance). Submit the form; OnRecord sets the status once every "
        "stage has approved."
    )


def test_without_set_status_the_message_leaves_the_status_to_the_approval_flow() -> None:
    message = approval_message(policy(set_status=False, stages=[{"name": "finance", "approvers": ["a@b.c"]}]))

    assert "and its approval stages (finance). Submit the form; the approval flow sets the status" in message


@pytest.mark.parametrize(
    ("form_id", "stage_count", "kept"),
    [
        ("f" * 60, 2, "its approval stages (stage 1, then stage 2)"),
        ("f" * 60, 9, "its 9 approval stages."),
        ("f" * 200, 9, "its 9 approval stages."),
    ],
)
def test_the_message_stays_within_salesforces_255_characters(
    form_id: str, stage_count: int, kept: str
) -> None:
    long_names = "x" * 60 if stage_count > 2 else ""
    stages = [{"name": f"stage {i + 1}{long_names}", "approvers": ["a@b.c"]} for i in range(stage_count)]

    message = approval_message(policy(form_id=form_id, stages=stages))

    assert len(message) <= 255
    assert kept in message
    assert message.endswith("Submit the form; OnRecord sets the status once every stage has approved.")
    if len(form_id) > 100:
        assert len(message) == 255 and "(ffff" in message and "\u2026)" in message
    else:
        assert f"({form_id})" in message


def test_package_xml_names_every_component_at_the_configured_api_version(config: Config) -> None:
    package = parse(build_package(config)["package.xml"])
    members = {
        t.findtext(MD + "name"): [m.text for m in t.findall(MD + "members")]
        for t in package.findall(MD + "types")
    }

    assert members["CustomObject"] == [
        "OnRecord_Approval_Stage__mdt",
        "OnRecord_Config_Status__c",
        "OnRecord_Governed__mdt",
        "OnRecord_Leader_Signal__c",
        "OnRecord_Leader__mdt",
        "OnRecord_Setting__mdt",
        "OnRecord_Violation__c",
    ]
    assert "Opportunity.OnRecord_Channel__c" in members["CustomField"]
    assert "OnRecord_Leader_Signal__c.OnRecord_Key__c" in members["CustomField"]
    assert len(members["CustomField"]) == 2 * 7 + 16 + 10 + 7 + (11 + 4 + 3 + 11)
    assert members["ValidationRule"] == [f"Budget_Request__c.{APPROVAL_RULE}"]
    assert members["PermissionSet"] == ["OnRecord_Integration", "OnRecord_Viewer"]
    assert package.findtext(MD + "version") == "62.0"


def test_integration_permission_set_can_edit_every_onrecord_field(config: Config) -> None:
    files = build_package(config)
    edit = parse(files["permissionsets/OnRecord_Integration.permissionset"])
    view = parse(files["permissionsets/OnRecord_Viewer.permissionset"])

    editable = {p.findtext(MD + "field") for p in edit.findall(MD + "fieldPermissions")}
    assert "Budget_Request__c.OnRecord_Approval__c" in editable and len(editable) == 47
    assert not any("__mdt." in f for f in editable)  # custom metadata fields take no field permissions
    assert {p.findtext(MD + "editable") for p in edit.findall(MD + "fieldPermissions")} == {"true"}
    assert {p.findtext(MD + "editable") for p in view.findall(MD + "fieldPermissions")} == {"false"}
    objects = {
        p.findtext(MD + "object"): p.findtext(MD + "allowCreate")
        for p in edit.findall(MD + "objectPermissions")
    }
    assert objects == {
        "OnRecord_Leader_Signal__c": "true",
        "OnRecord_Violation__c": "true",
        "OnRecord_Config_Status__c": "true",
    }
    readable_types = {
        a.findtext(MD + "name"): a.findtext(MD + "enabled")
        for a in edit.findall(MD + "customMetadataTypeAccesses")
    }
    assert readable_types == dict.fromkeys(METADATA_TYPES, "true")
    assert view.find(MD + "customMetadataTypeAccesses") is None


def test_approval_rule_without_the_integration_user_id_is_refused(tmp_path: Path) -> None:
    config = make_config(f"sqlite:///{tmp_path}/x.db", tmp_path, governed=GOVERNED)

    with pytest.raises(PackageError, match=r"salesforce\.integration_user_id"):
        build_package(config)


def test_the_leader_buy_in_report_and_dashboard_sit_on_the_report_type_in_their_folders(
    config: Config,
) -> None:
    files = build_package(config)
    report_type = parse(files["reportTypes/OnRecord_Leader_Signals.reportType"])
    report = parse(files["reports/OnRecord/OnRecord_Leader_Buy_In.report"])
    dashboard = parse(files["dashboards/OnRecord/OnRecord_Leader_Buy_In.dashboard"])
    package = parse(files["package.xml"])
    members = {
        t.findtext(MD + "name"): [m.text for m in t.findall(MD + "members")]
        for t in package.findall(MD + "types")
    }

    assert report_type.findtext(MD + "baseObject") == "OnRecord_Leader_Signal__c"
    assert report_type.findtext(MD + "deployed") == "true"
    offered = {c.findtext(MD + "field") for c in report_type.iter(MD + "columns")}
    signal_fields = set(fields_of(parse(files["objects/OnRecord_Leader_Signal__c.object"])))
    assert offered == {"Name"} | signal_fields - {"OnRecord_Key__c"}
    assert report.findtext(MD + "reportType") == "OnRecord_Leader_Signals__c"  # a custom report type
    used = {c.findtext(MD + "field") for c in report.findall(MD + "columns")}
    used |= {g.findtext(MD + "field") for g in report.findall(MD + "groupingsDown")}
    assert {
        "OnRecord_Leader_Signal__c$OnRecord_Score__c",
        "OnRecord_Leader_Signal__c$OnRecord_Leader__c",
    } <= used
    assert {u.partition("$")[2] for u in used} <= offered
    assert [r.text for r in dashboard.iter(MD + "report")] == ["OnRecord/OnRecord_Leader_Buy_In"]
    assert dashboard.findtext(MD + "title") == "Leader Buy-In"
    assert members["ReportType"] == ["OnRecord_Leader_Signals"]
    assert members["Report"] == members["Dashboard"] == ["OnRecord", "OnRecord/OnRecord_Leader_Buy_In"]
    assert parse(files["reports/OnRecord-meta.xml"]).tag == MD + "ReportFolder"
    assert parse(files["dashboards/OnRecord-meta.xml"]).tag == MD + "DashboardFolder"


def test_zip_has_package_xml_at_its_root(config: Config) -> None:
    files = build_package(config)

    with zipfile.ZipFile(io.BytesIO(package_zip(files))) as archive:
        assert sorted(archive.namelist()) == sorted(files)
        assert archive.read("package.xml") == files["package.xml"]


def test_sandbox_is_told_by_the_login_url() -> None:
    assert is_sandbox("https://test.salesforce.com")
    assert is_sandbox("https://acme--uat.sandbox.my.salesforce.com")
    assert not is_sandbox("https://acme.my.salesforce.com")


def test_provision_writes_the_package_to_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "onrecord.toml").write_text('[[governed]]\nobject = "Opportunity"\nfields = ["Amount"]\n')
    monkeypatch.setenv("ONRECORD_CONFIG", str(tmp_path / "onrecord.toml"))
    out = tmp_path / "package"

    assert main(["provision", "--out", str(out)]) == 0

    assert (out / "package.xml").is_file() and (out / "objects" / "Opportunity.object").is_file()
    assert f"wrote {out / 'package.xml'}" in capsys.readouterr().out


# --- deploy, against the emulator ---


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator() as emulator:
        connect(emulator, keypair)
        yield emulator
    assert emulator.errors == []


def deploy_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    governed = (
        '[[governed]]\nobject = "Opportunity"\nfields = ["Amount"]\n'
        '[[governed]]\nobject = "Budget_Request__c"\nfields = ["Status__c"]\n'
        'approval_field = "Status__c"\napproved_values = ["Approved"]\n'
        'form_id = "budget-request"\nrevert_to = "Submitted"\n'
        '[[governed.stages]]\nname = "finance"\napprovers = ["cfo@acme.example"]\n'
    )
    cli_environment(monkeypatch, tmp_path, emu, keypair, toml=governed)
    emu.deploy_polls = 0  # done at the first checkDeployStatus: the command then never sleeps


def test_provision_deploy_sends_the_package_and_reports_success(
    emu: SalesforceEmulator,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deploy_env(monkeypatch, tmp_path, emu, keypair)
    out = tmp_path / "package"

    assert main(["provision", "--out", str(out), "--deploy"]) == 0

    (deployment,) = emu.deployments
    on_disk = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert deployment.files == on_disk
    assert deployment.options["rollbackOnError"].lower() == "true"  # production: all or nothing
    assert deployment.options["checkOnly"] == "false" and deployment.status == "Succeeded"
    assert "deployed: 91 of 91 components (deploy 0Af" in capsys.readouterr().out


def test_deployed_objects_can_be_written_by_their_external_id(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    config = make_config(
        f"sqlite:///{tmp_path}/x.db", tmp_path, governed=GOVERNED[:1], **overrides(emu, keypair, tmp_path)
    )
    writer = build_salesforce_writer(config)
    outcome = deploy_package(writer, build_package(config), sandbox=False, poll_seconds=0.01)
    leader = emu.add_user("ceo@acme.example")
    batch = WriteBatch(
        object="OnRecord_Leader_Signal__c",
        operation="upsert",
        external_id_field="OnRecord_Key__c",
        records=[RecordWrite(f"{leader}:2025-03", {"OnRecord_Leader__c": leader, "OnRecord_Logins__c": 4})],
    )

    assert outcome.ok and outcome.components_deployed == outcome.components_total == 83
    assert [r.ok for r in writer.write_batch(batch)] == [True]
    (record,) = emu.records("OnRecord_Leader_Signal__c")
    assert record["OnRecord_Key__c"] == f"{leader}:2025-03" and record["OnRecord_Logins__c"] == 4


def test_failed_deploy_reports_salesforces_problem_and_exits_1(
    emu: SalesforceEmulator,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deploy_env(monkeypatch, tmp_path, emu, keypair)
    problem = "Field Status__c does not exist. Check spelling."
    emu.fail_next_deploy("objects/Budget_Request__c.object", problem)

    assert main(["provision", "--out", str(tmp_path / "package"), "--deploy"]) == 1

    err = capsys.readouterr().err
    assert " Failed" in err
    assert f"objects/Budget_Request__c.object: Error: {problem}" in err
    assert emu.deployments[0].status == "Failed"


def test_check_only_deploy_validates_without_saving(
    emu: SalesforceEmulator,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deploy_env(monkeypatch, tmp_path, emu, keypair)

    assert main(["provision", "--deploy", "--check-only"]) == 0

    assert emu.deployments[0].check_only
    assert "validated (check only): 91 of 91 components" in capsys.readouterr().out


def test_a_report_outside_a_folder_the_package_carries_fails_the_deploy(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    sf_config = make_config(
        f"sqlite:///{tmp_path}/y.db", tmp_path, governed=GOVERNED[:1], **overrides(emu, keypair, tmp_path)
    )
    files = build_package(sf_config)
    files["package.xml"] = files["package.xml"].replace(
        b"<members>OnRecord</members>\n        <members>OnRecord/OnRecord_Leader_Buy_In</members>\n"
        b"        <name>Report</name>",
        b"<members>OnRecord/OnRecord_Leader_Buy_In</members>\n        <name>Report</name>",
    )

    outcome = deploy_package(build_salesforce_writer(sf_config), files, sandbox=False, poll_seconds=0.01)

    assert outcome.status == "Failed"
    assert (
        "reports/OnRecord/OnRecord_Leader_Buy_In.report: Error: Cannot find folder: OnRecord"
        in outcome.errors
    )


def test_deploy_polls_until_salesforce_says_it_is_done(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path, config: Config
) -> None:
    emu.deploy_polls = 3
    sf_config = make_config(
        f"sqlite:///{tmp_path}/y.db", tmp_path, governed=GOVERNED, **overrides(emu, keypair, tmp_path)
    )
    slept: list[float] = []

    outcome = deploy_package(
        build_salesforce_writer(sf_config), build_package(sf_config), sandbox=True, sleep=slept.append
    )

    assert outcome.ok and slept == [2.0, 2.0, 2.0]
    checks = [c for c in emu.calls if "/deployRequest/" in c.path]
    assert len(checks) == 4
    assert emu.deployments[0].options["rollbackOnError"].lower() == "false"  # a sandbox


# --- configuring OnRecord in Setup: the custom metadata types and the config status object ---

MDT_FIELDS = {
    "OnRecord_Governed__mdt": {
        "Object__c": "Text",
        "Tracked_Fields__c": "LongTextArea",
        "Approval_Field__c": "Text",
        "Approved_Values__c": "LongTextArea",
        "Form_Id__c": "Text",
        "Revert_To__c": "Text",
        "Set_Status__c": "Checkbox",
        "Status_Writers__c": "LongTextArea",
        "Grace_Seconds__c": "Number",
        "Max_Chain_Age_Days__c": "Number",
        "Active__c": "Checkbox",
    },
    "OnRecord_Approval_Stage__mdt": {
        "Governed__c": "MetadataRelationship",
        "Order__c": "Number",
        "Stage_Name__c": "Text",
        "Approvers__c": "LongTextArea",
    },
    "OnRecord_Leader__mdt": {
        "Email_Or_Username__c": "Text",
        "Display_Name__c": "Text",
        "Role_Name__c": "Text",
    },
    "OnRecord_Setting__mdt": {
        "Login_Weight__c": "Number",
        "Record_Touched_Weight__c": "Number",
        "Form_Approval_Weight__c": "Number",
        "Off_System_Approval_Weight__c": "Number",
        "Training_Weight__c": "Number",
        "Citation_Weight__c": "Number",
        "Report_View_Weight__c": "Number",
        "Dashboard_View_Weight__c": "Number",
        "Weights_Version__c": "Text",
        "Champion_Threshold__c": "Number",
        "Period__c": "Picklist",
    },
}


def test_each_custom_metadata_type_carries_its_fields_with_help_text(config: Config) -> None:
    files = build_package(config)

    assert sorted(MDT_FIELDS) == sorted(METADATA_TYPES)
    for name, expected in MDT_FIELDS.items():
        obj = parse(files[f"objects/{name}.object"])
        fields = fields_of(obj)
        assert {n: f.findtext(MD + "type") for n, f in fields.items()} == expected, name
        assert obj.findtext(MD + "visibility") == "Public"
        assert obj.findtext(MD + "label") and obj.findtext(MD + "pluralLabel")
        for tag in ("nameField", "sharingModel", "deploymentStatus"):
            assert obj.find(MD + tag) is None, (name, tag)
        for field_name, field in fields.items():
            help_text = field.findtext(MD + "inlineHelpText") or ""
            assert 20 <= len(help_text) <= 510, (name, field_name)
            assert field.findtext(MD + "fieldManageability") == "SubscriberControlled"
    stage = fields_of(parse(files["objects/OnRecord_Approval_Stage__mdt.object"]))["Governed__c"]
    assert stage.findtext(MD + "referenceTo") == "OnRecord_Governed__mdt"
    assert stage.findtext(MD + "relationshipName") == "Approval_Stages"
    setting = fields_of(parse(files["objects/OnRecord_Setting__mdt.object"]))
    assert picklist(setting["Period__c"]) == ["week", "day"]
    governed = fields_of(parse(files["objects/OnRecord_Governed__mdt.object"]))
    assert governed["Active__c"].findtext(MD + "defaultValue") == "true"


def test_config_status_object_holds_what_onrecord_made_of_each_record(config: Config) -> None:
    obj = parse(build_package(config)["objects/OnRecord_Config_Status__c.object"])
    fields = fields_of(obj)

    assert {n: f.findtext(MD + "type") for n, f in fields.items()} == {
        "OnRecord_Metadata_Type__c": "Text",
        "OnRecord_Developer_Name__c": "Text",
        "OnRecord_Status__c": "Picklist",
        "OnRecord_Problem__c": "LongTextArea",
        "OnRecord_Applied_At__c": "DateTime",
        "OnRecord_Config_Version__c": "Text",
        "OnRecord_Key__c": "Text",
    }
    assert picklist(fields["OnRecord_Status__c"]) == ["OK", "Problem"]
    assert all(f.findtext(MD + "inlineHelpText") for f in fields.values())
    assert fields["OnRecord_Key__c"].findtext(MD + "externalId") == "true"
    assert obj.findtext(MD + "sharingModel") == "Read"  # data: everyone reads, OnRecord writes


def test_custom_metadata_types_deploy_and_config_status_can_be_written(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    config = make_config(
        f"sqlite:///{tmp_path}/x.db", tmp_path, governed=GOVERNED[:1], **overrides(emu, keypair, tmp_path)
    )
    writer = build_salesforce_writer(config)

    outcome = deploy_package(writer, build_package(config), sandbox=False, poll_seconds=0.01)

    assert outcome.ok, outcome.errors
    deployed = {(c.type, c.full_name) for c in emu.deployments[0].components if c.success}
    assert {("CustomObject", name) for name in METADATA_TYPES} <= deployed
    assert ("CustomField", "OnRecord_Approval_Stage__mdt.Governed__c") in deployed
    batch = WriteBatch(
        object="OnRecord_Config_Status__c",
        operation="upsert",
        external_id_field="OnRecord_Key__c",
        records=[
            RecordWrite(
                "OnRecord_Governed__mdt:Budget_Request",
                {"OnRecord_Status__c": "Problem", "OnRecord_Problem__c": "Object__c: no such object"},
            )
        ],
    )
    assert [r.ok for r in writer.write_batch(batch)] == [True]
    (record,) = emu.records("OnRecord_Config_Status__c")
    assert record["OnRecord_Status__c"] == "Problem"


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            b"<type>Checkbox</type>",
            b"<type>Lookup</type>",
            "Field type Lookup is not supported on custom metadata types",
        ),
        (
            b"<referenceTo>OnRecord_Governed__mdt</referenceTo>",
            b"<referenceTo>Account</referenceTo>",
            "referenceTo: 'Account' is not a custom metadata type",
        ),
    ],
)
def test_the_emulator_refuses_what_custom_metadata_types_do_not_support(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path, old: bytes, new: bytes, problem: str
) -> None:
    config = make_config(
        f"sqlite:///{tmp_path}/y.db", tmp_path, governed=GOVERNED[:1], **overrides(emu, keypair, tmp_path)
    )
    files = build_package(config)
    name = "OnRecord_Governed__mdt" if old.startswith(b"<type>") else "OnRecord_Approval_Stage__mdt"
    assert old in files[f"objects/{name}.object"]
    files[f"objects/{name}.object"] = files[f"objects/{name}.object"].replace(old, new, 1)

    outcome = deploy_package(build_salesforce_writer(config), files, sandbox=False, poll_seconds=0.01)

    assert outcome.status == "Failed"
    assert any(e.startswith(f"objects/{name}.object: Error: {problem}") for e in outcome.errors)
