"""Configuration from the CRM, pure: custom metadata records composed into the file's shapes and
validated by the file's own validation, each problem attributed to its record and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.config import Config, ConfigError, load_config
from plugin.crm_config import (
    GOVERNED,
    LEADER,
    SETTING,
    STAGE,
    Composed,
    ConfigRecord,
    CrmConfigError,
    RecordProblem,
    apply,
    compose,
    version,
)


@pytest.fixture
def base(tmp_path: Path) -> Config:
    """The file's configuration: Opportunity governed, one leader, the default weights."""
    return load_config(
        path=None,
        env={},
        overrides={
            "storage.url": f"sqlite:///{tmp_path}/x.db",
            "governed": [{"object": "Opportunity", "fields": ["Amount"]}],
            "leaders.users": [{"email": "old@contoso.com"}],
            "leaders.champions_top": 3,
        },
    )


def governed(name: str = "Budget", **fields: Any) -> ConfigRecord:
    values: dict[str, Any] = {
        "Object__c": "Budget_Request__c",
        "Tracked_Fields__c": "Amount__c\nStatus__c",
        "Approval_Field__c": "Status__c",
        "Approved_Values__c": "Approved",
        "Form_Id__c": "budget-form",
        "Revert_To__c": "Submitted",
        "Set_Status__c": True,
        "Status_Writers__c": None,
        "Grace_Seconds__c": 600.0,
        "Max_Chain_Age_Days__c": None,
        "Active__c": True,
    }
    values.update(fields)
    return ConfigRecord(
        GOVERNED, name, values, "005000000000001AAA", "Ada Admin", "2026-11-26T09:00:00.000+0000"
    )


def stage(name: str, order: Any, approvers: str, parent: str = "Budget", **more: Any) -> ConfigRecord:
    values = {
        "Governed__c": parent,
        "Order__c": order,
        "Stage_Name__c": name.lower(),
        "Approvers__c": approvers,
    }
    return ConfigRecord(STAGE, name, {**values, **more})


def setting(name: str = "Default", **fields: Any) -> ConfigRecord:
    return ConfigRecord(SETTING, name, fields)


def leader(name: str, **fields: Any) -> ConfigRecord:
    return ConfigRecord(LEADER, name, fields)


POLICY = [
    governed(),
    stage("Finance", 2, "Finance Approvers"),
    stage("Strategy", 1, "Strategy Board\nvera@contoso.com"),
    leader("Ceo", Email_Or_Username__c="ceo@contoso.com", Display_Name__c="Dana Chief"),
    leader("Directors", Role_Name__c="Sales Director"),
    setting(Login_Weight__c=2, Weights_Version__c="2026.2", Period__c="day", Champion_Threshold__c=7.5),
]


def test_records_become_the_governed_policy_and_leaders_in_the_files_shapes(base: Config) -> None:
    config = apply(base, compose(POLICY))
    [budget] = config.governed
    assert budget.object == "Budget_Request__c" and budget.crm == "salesforce"
    assert budget.fields == ["Amount__c", "Status__c"]
    assert budget.approved_values == ["Approved"] and budget.revert_to == "Submitted"
    # stages from the records linked to it, in their Order__c
    assert [(s.name, s.approvers) for s in budget.stages] == [
        ("strategy", ["Strategy Board", "vera@contoso.com"]),
        ("finance", ["Finance Approvers"]),
    ]
    assert [(u.email, u.name) for u in config.leaders.users] == [("ceo@contoso.com", "Dana Chief")]
    assert config.leaders.roles == ["Sales Director"]
    assert config.leaders.weights["login"] == 2.0
    assert config.leaders.weights["citation"] == 4.0  # not set in the CRM: the file's
    assert config.leaders.weights_version == "2026.2" and config.leaders.period == "day"
    assert config.leaders.champion_threshold == 7.5
    assert config.leaders.champions_top == 3  # not a CRM setting: the file's
    assert config.storage == base.storage  # server settings stay the file's


def test_an_inactive_governed_record_and_its_stages_are_ignored(base: Config) -> None:
    config = apply(base, compose([governed(Active__c=False), stage("Finance", 1, "")]))
    assert config.governed == []


def test_objects_governed_in_another_crm_stay_as_the_file_has_them(tmp_path: Path) -> None:
    file = load_config(
        path=None,
        env={},
        overrides={
            "storage.url": f"sqlite:///{tmp_path}/x.db",
            "governed": [{"object": "opportunity", "crm": "dataverse", "fields": ["name"]}],
        },
    )
    config = apply(file, compose(POLICY))
    assert [(g.object, g.crm) for g in config.governed] == [
        ("Budget_Request__c", "salesforce"),
        ("opportunity", "dataverse"),
    ]


def file_error(tmp_path: Path, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path=None, env={}, overrides={"storage.url": f"sqlite:///{tmp_path}/x.db", **overrides})
    return str(raised.value)


def problems(records: list[ConfigRecord], base: Config) -> list[RecordProblem]:
    with pytest.raises(CrmConfigError) as raised:
        apply(base, compose(records))
    return raised.value.problems


def test_an_empty_approver_list_gets_the_files_message_on_its_stage_record(
    base: Config, tmp_path: Path
) -> None:
    [problem] = problems([governed(), stage("Finance", 1, "  \n ")], base)
    assert (problem.type, problem.developer_name, problem.field) == (STAGE, "Finance", "Approvers__c")
    same_in_the_file = file_error(
        tmp_path,
        governed=[
            {
                "object": "Budget_Request__c",
                "fields": ["Amount__c"],
                "approval_field": "Status__c",
                "approved_values": ["Approved"],
                "form_id": "budget-form",
                "revert_to": "Submitted",
                "stages": [{"name": "finance", "approvers": []}],
            }
        ],
    )
    assert same_in_the_file == f"governed.0.stages.0.approvers: {problem.message}"


def test_a_non_numeric_weight_gets_the_files_message_on_its_setting_record(
    base: Config, tmp_path: Path
) -> None:
    [problem] = problems([setting(Citation_Weight__c="lots")], base)
    assert (problem.type, problem.developer_name, problem.field) == (SETTING, "Default", "Citation_Weight__c")
    assert file_error(tmp_path, **{"leaders.weights": {"citation": "lots"}}) == (
        f"leaders.weights.citation: {problem.message}"
    )


def test_a_positive_off_system_weight_names_that_weight(base: Config) -> None:
    [problem] = problems([setting(Off_System_Approval_Weight__c=5)], base)
    assert problem.field == "Off_System_Approval_Weight__c"
    assert "off_system_approval must weigh zero or less" in problem.message


def test_an_unknown_field_with_a_value_is_a_problem_of_that_field(base: Config) -> None:
    [problem] = problems([governed(Require_All__c=True, Extra_Note__c=None)], base)  # empty: harmless
    assert (problem.developer_name, problem.field) == ("Budget", "Require_All__c")
    assert problem.message.startswith("unknown field: OnRecord does not read it (its fields: Active__c, ")


def test_a_stage_pointing_at_no_governed_record_is_refused(base: Config) -> None:
    [problem] = problems([governed(), stage("Legal", 1, "Legal", parent="Budgett")], base)
    assert (problem.developer_name, problem.field) == ("Legal", "Governed__c")
    assert problem.message == "no OnRecord Governed record 'Budgett' (the records: Budget)"


def test_a_policy_mistake_is_attributed_to_the_governed_record_and_its_field(base: Config) -> None:
    [problem] = problems([governed(Form_Id__c=None), stage("Finance", 1, "Finance")], base)
    assert (problem.type, problem.developer_name, problem.field) == (GOVERNED, "Budget", "Form_Id__c")
    assert "form_id: is required when approval_field is set" in problem.message


def test_a_leader_without_email_or_role_and_two_settings_setting_one_value(base: Config) -> None:
    found = problems(
        [
            leader("Nobody", Display_Name__c="No One"),
            setting("A", Period__c="day"),
            setting("B", Period__c="week"),
        ],
        base,
    )
    assert [(p.developer_name, p.field) for p in found] == [
        ("Nobody", "Email_Or_Username__c"),
        ("B", "Period__c"),
    ]


def test_every_problem_is_reported_not_only_the_first(base: Config) -> None:
    found = problems(
        [
            governed(),
            stage("Finance", 1, ""),
            setting(Login_Weight__c="x"),
            leader("Bad", Email_Or_Username__c="nope"),
        ],
        base,
    )
    assert sorted((p.developer_name, p.field) for p in found) == [
        ("Bad", "Email_Or_Username__c"),
        ("Default", "Login_Weight__c"),
        ("Finance", "Approvers__c"),
    ]


def test_composed_survives_its_json_form(base: Config) -> None:
    composed = compose(POLICY)
    assert Composed.from_json(composed.to_json()) == composed
    assert apply(base, Composed.from_json(composed.to_json())) == apply(base, composed)


def test_no_records_means_nothing_governed_from_this_crm_and_no_leaders(base: Config) -> None:
    config = apply(base, compose([]))
    assert config.governed == [] and config.leaders.users == []
    assert config.leaders.weights == base.leaders.weights


# --- the version ---

values = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=20))
records = st.lists(
    st.builds(
        ConfigRecord,
        type=st.sampled_from([GOVERNED, STAGE, LEADER, SETTING]),
        developer_name=st.from_regex(r"[A-Z][a-z]{0,8}", fullmatch=True),
        fields=st.dictionaries(st.sampled_from(["Object__c", "Order__c", "Period__c"]), values, max_size=3),
        modstamp=st.text(max_size=5),
    ),
    max_size=8,
    unique_by=lambda r: (r.type, r.developer_name),
)


@given(records, st.randoms())
def test_the_same_records_give_the_same_version_whatever_their_order(
    found: list[ConfigRecord], rnd: Any
) -> None:
    shuffled = list(found)
    rnd.shuffle(shuffled)
    assert version(shuffled) == version(found)


def test_a_changed_value_is_a_new_version_a_resave_is_not() -> None:
    first = version(POLICY)
    changed = [*POLICY[:1], stage("Finance", 2, "Someone Else"), *POLICY[2:]]
    assert version(changed) != first
    resaved = [ConfigRecord(r.type, r.developer_name, r.fields, "005X", "Bo", "2027-01-01") for r in POLICY]
    assert version(resaved) == first
    assert len(first) == 64


def test_each_version_applies_to_the_files_configuration_not_to_the_previous_version(base: Config) -> None:
    first = apply(base, compose([setting(Login_Weight__c=7)]))
    assert first.leaders.weights["login"] == 7.0 and first.crm_version == version(
        [setting(Login_Weight__c=7)]
    )
    second = apply(first, compose([setting(Weights_Version__c="2026.3")]))  # the weight cleared
    assert second.leaders.weights["login"] == base.leaders.weights["login"]
    assert base.crm_version == ""  # the file's own names no version
