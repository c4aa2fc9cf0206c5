"""Validation rules in the emulator: the formula subset OnRecord's provisioner generates, and its
enforcement on REST writes once the provisioned package is deployed the way `provision --deploy`
deploys it. A person setting an approved status by hand in the CRM is refused with the rule's
message and nothing changes; OnRecord's integration user and the policy's status writers pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.salesforce.provision import (
    APPROVAL_RULE,
    approval_message,
    build_package,
    deploy_package,
)
from connectors.salesforce.wiring import build_salesforce_writer
from plugin.config import Config
from plugin.crm import RecordWrite, WriteBatch
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import connect, overrides
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair, to18
from tests.sfemu.formula import Context, FormulaError, ValidationRule, evaluate, parse

PERSON = "pat.manager@acme.example"
FLOW_BY_ID = "flow.connection@acme.example"  # a status writer named in config by its user id
FLOW_BY_NAME = "approvals.flow@acme.example"  # ... and one named by its username
OBJECT = "Budget_Request__c"


# --- the evaluator ---------------------------------------------------------------------------

USER_ID = to18("005Dn000001AbCd")


def run(formula: str, record: dict[str, Any], before: dict[str, Any] | None = None, **user: str) -> Any:
    ctx = Context(record, before, user.get("user_id", USER_ID), user.get("username", "pat@acme.example"))
    return evaluate(parse(formula), ctx)


@pytest.mark.parametrize(
    ("formula", "record", "before", "expected"),
    [
        ("ISNEW()", {}, None, True),
        ("ISNEW()", {}, {}, False),
        ("ISCHANGED(Status__c)", {"Status__c": "B"}, {"Status__c": "A"}, True),
        ("ISCHANGED(status__C)", {"Status__c": "A"}, {"Status__c": "A"}, False),
        ("ISCHANGED(Status__c)", {"Status__c": "A"}, None, False),  # never on create
        ("ISCHANGED(Status__c)", {"Status__c": ""}, {"Status__c": None}, False),  # blank is blank
        ('ISPICKVAL(Status__c, "Approved")', {"Status__c": "Approved"}, None, True),
        ('ISPICKVAL(Status__c, "Approved")', {"Status__c": "approved"}, None, False),
        ('ISPICKVAL(Status__c, "")', {}, None, True),
        ('Status__c = "OK"', {"Status__c": "OK"}, None, True),
        ('Status__c <> "OK"', {"Status__c": None}, None, True),
        ('Status__c = ""', {"Status__c": None}, None, True),
        ("Approved__c", {"Approved__c": True}, None, True),
        ("Approved__c", {"Approved__c": None}, None, None),  # blank: false as a condition
        ("NOT(Approved__c)", {}, None, True),
        ("Approved__c = FALSE", {"Approved__c": None}, None, True),
        ("NOT(Approved__c)", {"Approved__c": False}, None, True),
        ("Approved__c = TRUE", {"Approved__c": True}, None, True),
        ("and(true, Or(FALSE, not(false)))", {}, None, True),
        ("AND(TRUE, FALSE)", {}, None, False),
        ("(TRUE)", {}, None, True),
        (r'"say \"yes\"" = Note__c', {"Note__c": 'say "yes"'}, None, True),
        (r"'it\'s' = Note__c", {"Note__c": "it's"}, None, True),
        (r'"a\\b\nc\td" = Note__c', {"Note__c": "a\\b\nc\td"}, None, True),
        ('"A" = "a"', {}, None, False),  # text comparison is case-sensitive
    ],
)
def test_formula_subset(
    formula: str, record: dict[str, Any], before: dict[str, Any] | None, expected: Any
) -> None:
    assert run(formula, record, before) is expected


def test_user_id_username_and_casesafeid() -> None:
    id15 = USER_ID[:15]

    assert run(f'CASESAFEID($User.Id) = "{USER_ID}"', {}) is True
    assert run(f'CASESAFEID("{id15}") = "{USER_ID}"', {}) is True
    assert run(f'CASESAFEID($User.Id) <> "{USER_ID}"', {}, user_id=USER_ID) is False
    assert run('$User.Username = "pat@acme.example"', {}) is True
    assert run('$user.username <> "pat@acme.example"', {}, username="flow@acme.example") is True
    assert run("CASESAFEID(Owner__c)", {"Owner__c": id15}) == USER_ID


@pytest.mark.parametrize(
    ("formula", "problem"),
    [
        ("ISBLANK(Status__c)", "Unknown function ISBLANK"),
        ("ISNEW(Status__c)", "Incorrect number of parameters for function 'ISNEW()'"),
        ("NOT(TRUE, FALSE)", "Incorrect number of parameters for function 'NOT()'"),
        ("AND()", "Incorrect number of parameters for function 'AND()'"),
        ('ISPICKVAL("Approved", "Approved")', "Expected a field"),
        ("ISCHANGED($User.Id)", "Expected a field"),
        ('AND(TRUE, "x"', "Missing ')'"),
        ('"unterminated', "Syntax error"),
        (r'"\q" = Note__c', r"Invalid escape sequence \q"),
        ("TRUE FALSE", "Extra 'FALSE'"),
        ("Amount__c > 5", "Syntax error. Found '> 5'"),
        ('$Profile.Name = "Admin"', "Field $Profile.Name does not exist"),
        ("", "Missing 'an expression'"),
    ],
)
def test_anything_outside_the_subset_is_refused(formula: str, problem: str) -> None:
    with pytest.raises(FormulaError) as caught:
        parse(formula)

    assert problem in str(caught.value)


def test_values_of_the_wrong_type_are_errors_not_guesses() -> None:
    with pytest.raises(FormulaError, match="not a boolean"):
        run("AND(Status__c)", {"Status__c": "Approved"})
    with pytest.raises(FormulaError, match="a comparison's side is 'true', not a boolean"):
        run('Approved__c = "true"', {"Approved__c": True})


def test_an_inactive_rule_never_fails() -> None:
    rule = ValidationRule("R", "TRUE", "no", active=False)

    assert not rule.fails(Context({}, None, USER_ID, "pat@acme.example"))
    assert ValidationRule("R", "TRUE", "no").fails(Context({}, None, USER_ID, "pat@acme.example"))


# --- enforcement, after deploying the provisioned package ------------------------------------


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator() as emulator:
        connect(emulator, keypair)
        emulator.deploy_polls = 0
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def config(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path) -> Config:
    flow_user = emu.add_user(FLOW_BY_ID)
    governed = {
        "object": OBJECT,
        "fields": ["Amount__c", "Status__c"],
        "approval_field": "Status__c",
        "approved_values": ["Approved", "Approved by Finance"],
        "form_id": "budget-request",
        "stages": [
            {"name": "business strategy", "approvers": ["strategy@acme.example"]},
            {"name": "finance", "approvers": ["cfo@acme.example"]},
        ],
        "revert_to": "Submitted",
        "status_writers": [flow_user[:15], FLOW_BY_NAME],
    }
    return make_config(
        f"sqlite:///{tmp_path}/x.db", tmp_path, governed=[governed], **overrides(emu, keypair, tmp_path)
    )


@pytest.fixture
def deployed(emu: SalesforceEmulator, config: Config) -> Config:
    """The provisioned package, deployed through OnRecord's own writer (Metadata API deploy)."""
    outcome = deploy_package(build_salesforce_writer(config), build_package(config), sandbox=False)
    assert outcome.ok, outcome.errors
    return config


@pytest.fixture
def record(emu: SalesforceEmulator, deployed: Config) -> str:
    """A budget request the integration user created, awaiting approval."""
    created = emu.rest_session().post(
        emu.data_url(f"sobjects/{OBJECT}"), json={"Amount__c": 1200, "Status__c": "Submitted"}, timeout=10
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def message(config: Config) -> str:
    return approval_message(config.governed[0])


def patch(
    emu: SalesforceEmulator, username: str, record_id: str, values: dict[str, Any]
) -> requests.Response:
    """`username` edits the record in the CRM (a REST call with that user's session)."""
    return emu.rest_session(username).patch(
        emu.data_url(f"sobjects/{OBJECT}/{record_id}"), json=values, timeout=10
    )


def test_deploy_installs_the_active_rule_with_its_message(emu: SalesforceEmulator, deployed: Config) -> None:
    (rule,) = emu.validation_rules(OBJECT)

    assert (rule.name, rule.active, rule.display_field) == (APPROVAL_RULE, True, "Status__c")
    assert rule.message == message(deployed)
    assert "budget-request" in rule.message and "(business strategy, then finance)" in rule.message


def test_a_person_setting_approved_by_hand_is_refused_and_nothing_changes(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    before = emu.record(OBJECT, record)

    answer = patch(emu, PERSON, record, {"Status__c": "Approved", "Amount__c": 99})

    assert answer.status_code == 400
    assert answer.json() == [
        {
            "message": message(deployed),
            "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "fields": ["Status__c"],
        }
    ]
    assert emu.record(OBJECT, record) == before


@pytest.mark.parametrize("value", ["Approved", "Approved by Finance"])
def test_the_integration_users_write_passes(
    emu: SalesforceEmulator, deployed: Config, record: str, value: str
) -> None:
    writer = build_salesforce_writer(deployed)
    batch = WriteBatch(
        object=OBJECT,
        operation="update",
        external_id_field=None,
        records=[RecordWrite(record, {"Status__c": value, "OnRecord_Approval__c": "Verified"})],
    )

    assert [r.ok for r in writer.write_batch(batch)] == [True]
    stored = emu.record(OBJECT, record)
    assert (
        stored is not None and stored["Status__c"] == value and stored["OnRecord_Approval__c"] == "Verified"
    )
    assert stored["LastModifiedById"] == emu.user_id()


@pytest.mark.parametrize("writer", [FLOW_BY_ID, FLOW_BY_NAME])
def test_a_status_writers_write_passes(
    emu: SalesforceEmulator, deployed: Config, record: str, writer: str
) -> None:
    answer = patch(emu, writer, record, {"Status__c": "Approved"})

    assert answer.status_code == 204, answer.text
    stored = emu.record(OBJECT, record)
    assert stored is not None and stored["Status__c"] == "Approved"
    assert stored["LastModifiedById"] == emu.user_id(writer)


@pytest.mark.parametrize("value", ["Rejected", "Submitted", None])
def test_a_person_setting_a_value_that_is_not_approved_passes(
    emu: SalesforceEmulator, deployed: Config, record: str, value: str | None
) -> None:
    assert patch(emu, PERSON, record, {"Status__c": value}).status_code == 204
    stored = emu.record(OBJECT, record)
    assert stored is not None and stored["Status__c"] == value


def test_editing_other_fields_of_an_approved_record_passes(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    assert patch(emu, FLOW_BY_NAME, record, {"Status__c": "Approved"}).status_code == 204

    assert patch(emu, PERSON, record, {"Amount__c": 1300, "Status__c": "Approved"}).status_code == 204
    stored = emu.record(OBJECT, record)
    assert stored is not None and stored["Amount__c"] == 1300


def test_a_person_setting_onrecords_verified_is_refused(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    answer = patch(emu, PERSON, record, {"OnRecord_Approval__c": "Verified"})

    assert answer.status_code == 400 and answer.json()[0]["message"] == message(deployed)
    assert patch(emu, PERSON, record, {"OnRecord_Approval__c": "Pending"}).status_code == 204


def test_a_person_creating_an_already_approved_record_is_refused(
    emu: SalesforceEmulator, deployed: Config
) -> None:
    session = emu.rest_session(PERSON)
    url = emu.data_url(f"sobjects/{OBJECT}")

    refused = session.post(url, json={"Amount__c": 5, "Status__c": "Approved"}, timeout=10)
    created = session.post(url, json={"Amount__c": 5, "Status__c": "Draft"}, timeout=10)

    assert (
        refused.status_code == 400 and refused.json()[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    )
    assert created.status_code == 201
    assert [r["Status__c"] for r in emu.records(OBJECT)] == ["Draft"]


def test_upsert_by_external_id_is_checked_as_create_then_as_update(
    emu: SalesforceEmulator, deployed: Config
) -> None:
    emu.define_object(OBJECT, ["Ext__c"], external_ids=["Ext__c"])
    session = emu.rest_session(PERSON)
    url = emu.data_url(f"sobjects/{OBJECT}/Ext__c/br-1")

    assert session.patch(url, json={"Status__c": "Approved"}, timeout=10).status_code == 400
    assert session.patch(url, json={"Status__c": "Draft"}, timeout=10).status_code == 201
    assert session.patch(url, json={"Status__c": "Approved"}, timeout=10).status_code == 400
    assert [r["Status__c"] for r in emu.records(OBJECT)] == ["Draft"]


def test_collections_refuse_only_the_offending_record(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    other = emu.rest_session().post(
        emu.data_url(f"sobjects/{OBJECT}"), json={"Status__c": "Submitted"}, timeout=10
    )
    other_id = other.json()["id"]
    body: dict[str, Any] = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": OBJECT}, "id": record, "Status__c": "Approved"},
            {"attributes": {"type": OBJECT}, "id": other_id, "Amount__c": 7},
        ],
    }

    answer = emu.rest_session(PERSON).patch(emu.data_url("composite/sobjects"), json=body, timeout=10)

    refusal = {
        "success": False,
        "errors": [
            {
                "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "message": message(deployed),
                "fields": ["Status__c"],
            }
        ],
    }
    assert answer.status_code == 200
    results = answer.json()
    assert results[0] == refusal
    assert results[1] == {"id": other_id, "success": True, "errors": []}
    stored = emu.record(OBJECT, record)
    assert stored is not None and stored["Status__c"] == "Submitted"
    created = emu.rest_session(PERSON).post(
        emu.data_url("composite/sobjects"),
        json={"allOrNone": True, "records": [{"attributes": {"type": OBJECT}, "Status__c": "Approved"}]},
        timeout=10,
    )
    assert created.json() == [refusal]


def test_collections_all_or_none_rolls_back_the_others(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    body: dict[str, Any] = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": OBJECT}, "Status__c": "Draft"},
            {"attributes": {"type": OBJECT}, "Status__c": "Approved"},
        ],
    }

    results = emu.rest_session(PERSON).post(emu.data_url("composite/sobjects"), json=body, timeout=10).json()

    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert len(emu.records(OBJECT)) == 1


def test_a_person_acts_through_the_control_api_too(
    emu: SalesforceEmulator, deployed: Config, record: str
) -> None:
    plain = emu.http_session()
    login = plain.post(f"{emu.base_url}/__emulator/sessions", json={"username": PERSON}, timeout=10).json()
    headers = {"Authorization": f"Bearer {login['access_token']}"}

    answer = plain.patch(
        emu.data_url(f"sobjects/{OBJECT}/{record}"),
        json={"Status__c": "Approved"},
        headers=headers,
        timeout=10,
    )

    assert login["user_id"] == emu.user_id(PERSON) and login["instance_url"] == emu.base_url
    assert answer.status_code == 400 and answer.json()[0]["message"] == message(deployed)


# --- what a deploy accepts -------------------------------------------------------------------


def deploy_with(emu: SalesforceEmulator, config: Config, old: bytes, new: bytes) -> list[str]:
    files = build_package(config)
    name = f"objects/{OBJECT}.object"
    assert old in files[name]
    files = {**files, name: files[name].replace(old, new)}
    outcome = deploy_package(build_salesforce_writer(config), files, sandbox=False)
    return outcome.errors


def test_an_inactive_rule_is_deployed_but_not_enforced(emu: SalesforceEmulator, config: Config) -> None:
    assert deploy_with(emu, config, b"<active>true</active>", b"<active>false</active>") == []
    created = emu.rest_session(PERSON).post(
        emu.data_url(f"sobjects/{OBJECT}"), json={"Status__c": "Approved"}, timeout=10
    )

    assert [r.active for r in emu.validation_rules(OBJECT)] == [False]
    assert created.status_code == 201


def test_a_formula_outside_the_subset_fails_the_deploy(emu: SalesforceEmulator, config: Config) -> None:
    errors = deploy_with(emu, config, b"ISNEW()", b"ISBLANK(Id)")

    assert errors == [
        f"objects/{OBJECT}.object: Error: Error Condition Formula: Unknown function ISBLANK. Check spelling."
    ]
    assert emu.validation_rules(OBJECT) == []


def test_an_error_message_over_255_characters_fails_the_deploy(
    emu: SalesforceEmulator, config: Config
) -> None:
    errors = deploy_with(
        emu, config, b"<errorMessage>", b"<errorMessage>" + b"x" * (256 - len(message(config)))
    )

    assert len(errors) == 1 and "data value too large: max length=255" in errors[0]
