"""Reading a Dataverse webhook body (RemoteExecutionContext JSON): the fixtures, WCF dates, typed
values, and what a body Dataverse would not send is refused with."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.dataverse.context import (
    EMPTY_GUID,
    ContextRefused,
    Entity,
    EntityRef,
    ExecutionContext,
    read_context,
    to_json,
    wcf_date,
)

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "dataverse" / "fixtures"
OPPORTUNITY = "a1f3c0de-8e1f-ef11-9f89-000d3a4a1c2b"
PERSON = "3b7c1e52-6c1c-ef11-9f89-000d3a4a1c2b"
XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"
# The serialized dictionaries of a context, wherever they are.
PAIR_LISTS = frozenset(
    {
        "Attributes",
        "FormattedValues",
        "InputParameters",
        "OutputParameters",
        "PreEntityImages",
        "PostEntityImages",
        "SharedVariables",
    }
)
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json"))


def raw(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def body(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw(name))
    return loaded


def read(value: dict[str, Any] | list[Any]) -> ExecutionContext:
    return read_context(json.dumps(value).encode())


def refused(value: Any) -> ContextRefused:
    with pytest.raises(ContextRefused) as caught:
        read_context(value if isinstance(value, bytes) else json.dumps(value).encode())
    return caught.value


def target_attributes(context: dict[str, Any]) -> list[dict[str, Any]]:
    attributes: list[dict[str, Any]] = context["InputParameters"][0]["value"]["Attributes"]
    return attributes


def attribute(context: dict[str, Any], key: str) -> dict[str, Any]:
    return next(pair for pair in target_attributes(context) if pair["key"] == key)


# -- the fixtures, read ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_is_a_context_read_whole(name: str) -> None:
    ctx = read_context((FIXTURES / name).read_bytes())
    assert ctx.message_name in ("Create", "Update", "Delete")
    assert ctx.organization_id == "6e1bd5f2-7a1c-ef11-9f89-000d3a4a1c2b"
    assert ctx.operation_created_on.tzinfo is UTC


def test_an_update_with_pre_and_post_images_is_read_with_its_types() -> None:
    ctx = read_context(raw("opportunity_update__pre_post_images"))
    assert (ctx.message_name, ctx.primary_entity_name, ctx.primary_entity_id) == (
        "Update",
        "opportunity",
        OPPORTUNITY,
    )
    assert (ctx.user_id, ctx.initiating_user_id) == (PERSON, PERSON)
    assert (ctx.stage, ctx.mode, ctx.depth) == (40, 1, 1)
    assert ctx.operation_id == "5b0d7e93-a41f-ef11-9f89-000d3a4a1c2b"
    assert ctx.correlation_id == "8c2f4b1a-3d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert ctx.business_unit_id == "0f2a8c3e-6b1c-ef11-9f89-000d3a4a1c2b"
    assert ctx.organization_name == "unq6e1bd5f27a1cef119f89000d3a4a1"
    assert ctx.operation_created_on == datetime(2026, 3, 10, 9, 15, 42, 412000, tzinfo=UTC)
    target = ctx.target
    assert target is not None and target.logical_name == "opportunity" and target.id == OPPORTUNITY
    assert (
        target.attributes["estimatedvalue"] == 185000.0 and type(target.attributes["estimatedvalue"]) is float
    )
    assert target.attributes["statuscode"] == 2
    assert target.attributes["modifiedon"] == datetime(2026, 3, 10, 9, 15, 42, tzinfo=UTC)
    assert target.attributes["modifiedby"] == PERSON and target.lookups == {"modifiedby": "systemuser"}
    assert target.attributes["modifiedonbehalfby"] is None
    assert set(ctx.pre_entity_images) == {"PreImage"}
    assert set(ctx.post_entity_images) == {"PostImage", "AsynchronousStepPrimaryName"}
    before, after = ctx.pre_entity_images["PreImage"], ctx.post_entity_images["PostImage"]
    assert (before.attributes["estimatedvalue"], before.attributes["statuscode"]) == (150000.0, 1)
    assert before.formatted == {"estimatedvalue": "$150,000.00", "statuscode": "In Progress"}
    assert after.attributes["customerid"] == "c47b2e10-8d1f-ef11-9f89-000d3a4a1c2b"
    assert after.lookups == {"customerid": "account"}
    assert after.formatted["statuscode"] == "On Hold"
    assert ctx.input_parameters.keys() == {"Target"} and ctx.shared_variables == {}


def test_a_create_is_read_with_its_output_parameters_and_shared_variables() -> None:
    ctx = read_context(raw("opportunity_create__target_only"))
    target = ctx.target
    assert target is not None and ctx.message_name == "Create"
    assert target.attributes["exchangerate"] == 1.0  # a decimal column: a bare number
    assert target.attributes["estimatedclosedate"] == datetime(2026, 6, 30, tzinfo=UTC)
    assert target.lookups["transactioncurrencyid"] == "transactioncurrency"
    assert ctx.output_parameters == {"id": "b2f3c0de-8e1f-ef11-9f89-000d3a4a1c2b"}
    assert ctx.shared_variables == {"IsAutoTransact": True, "DefaultsAddedFlag": True}
    assert ctx.pre_entity_images == {} and set(ctx.post_entity_images) == {"AsynchronousStepPrimaryName"}


def test_multi_select_money_lookup_and_activity_parties_are_read_as_plain_values() -> None:
    ctx = read_context(raw("appointment_update__multiselect_money_lookup_parties"))
    image = ctx.post_entity_images["PostImage"]
    assert image.attributes["onr_topics"] == [100000000, 100000002]
    assert image.attributes["onr_budget"] == 1250.75
    assert image.attributes["regardingobjectid"] == OPPORTUNITY
    assert image.lookups["regardingobjectid"] == "opportunity"
    assert image.attributes["isalldayevent"] is False
    assert image.formatted["onr_topics"] == "Pricing; Security review"
    attendees = image.attributes["requiredattendees"]
    assert isinstance(attendees, list) and len(attendees) == 2
    contact = attendees[0]
    assert isinstance(contact, dict)
    assert contact["partyid"] == "d58c3f21-8d1f-ef11-9f89-000d3a4a1c2b"
    assert contact["partyid@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert contact["partyid@OData.Community.Display.V1.FormattedValue"] == "Dana Whitfield"
    assert contact["participationtypemask"] == 5
    assert contact["participationtypemask@OData.Community.Display.V1.FormattedValue"] == "Required attendee"
    assert contact["scheduledstart"] == datetime(2026, 3, 18, 13, 0, tzinfo=UTC)
    assert contact["activitypartyid"] == "e8a1d902-9a1f-ef11-9f89-000d3a4a1c2b"
    organizer = image.attributes["organizer"]
    assert isinstance(organizer, list) and isinstance(organizer[0], dict)
    assert organizer[0]["partyid@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"


def test_an_offset_date_is_the_wall_clock_dataverse_held() -> None:
    # The server ran at +02:00; the record's modifiedon (UTC, no offset) and its label
    # (2026-01-16T14:52:16+02:00) say when the change happened: OperationCreatedOn agrees only
    # when its offset is added to its milliseconds.
    ctx = read_context(raw("opportunity_update__server_offset"))
    target = ctx.target
    assert target is not None
    assert ctx.operation_created_on == target.attributes["modifiedon"]
    assert ctx.operation_created_on == datetime.fromisoformat(
        ctx.post_entity_images["PostImage"].formatted["modifiedon"]
    )


def test_microsoft_learns_sample_dates_agree_when_the_offset_is_added() -> None:
    # use-webhooks: OperationCreatedOn "\/Date(1506409448000-0700)\/", modifiedon "\/Date(1506384247000)\/"
    created = wcf_date("/Date(1506409448000-0700)/", "$")
    modified = wcf_date("/Date(1506384247000)/", "$")
    assert created - modified == timedelta(seconds=1)


def test_a_delete_has_a_reference_for_its_target() -> None:
    ctx = read_context(raw("opportunity_delete"))
    assert ctx.target is None
    assert ctx.input_parameters["Target"] == EntityRef("opportunity", "b2f3c0de-8e1f-ef11-9f89-000d3a4a1c2b")


def test_a_body_dataverse_cut_for_size_is_read_without_parameters_or_images() -> None:
    ctx = read_context(raw("opportunity_update__size_exceeded"))
    assert ctx.input_parameters == {} and ctx.target is None
    assert ctx.pre_entity_images == {} and ctx.post_entity_images == {}


# -- WCF dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/Date(0)/", datetime(1970, 1, 1, tzinfo=UTC)),
        ("/Date(1580839345000)/", datetime(2020, 2, 4, 18, 2, 25, tzinfo=UTC)),
        ("/Date(-86400000)/", datetime(1969, 12, 31, tzinfo=UTC)),
        ("/Date(1580839345000+0200)/", datetime(2020, 2, 4, 20, 2, 25, tzinfo=UTC)),
        ("/Date(1580839345000-0530)/", datetime(2020, 2, 4, 12, 32, 25, tzinfo=UTC)),
        ("/Date(1580839345123+0000)/", datetime(2020, 2, 4, 18, 2, 25, 123000, tzinfo=UTC)),
        ("/Date(-62135596800000)/", datetime(1, 1, 1, tzinfo=UTC)),  # DateTime.MinValue
        ("/Date(253402300799999)/", datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),  # MaxValue
    ],
)
def test_wcf_dates_become_aware_utc_datetimes(text: str, expected: datetime) -> None:
    value = wcf_date(text, "$.X")
    assert value == expected and value.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "/Date(abc)/",
        "/Date()/",
        "/Date(1580839345000)",
        "Date(1580839345000)/",
        "\\/Date(1580839345000)\\/",
        "/Date(1580839345000+2)/",
        "/Date(1580839345000+1500)/",  # no time zone is 15 hours off
        "/Date(1580839345000+0260)/",
        "/Date(1.5)/",
        "/Date(1580839345000)/\n",
        " /Date(1580839345000)/",
        "/Date(99999999999999999)/",
        "/Date(9999999999999999)/",  # past year 9999
        "/Date(-9999999999999999)/",
        "2020-02-04T18:02:25Z",
    ],
)
def test_malformed_wcf_dates_are_refused_naming_the_path(text: str) -> None:
    with pytest.raises(ContextRefused) as caught:
        wcf_date(text, "$.OperationCreatedOn")
    assert caught.value.reason == "bad_date" and caught.value.path == "$.OperationCreatedOn"
    assert caught.value.message.startswith("$.OperationCreatedOn ")


@given(
    ms=st.integers(
        min_value=-62_135_596_800_000 + 15 * 3_600_000, max_value=253_402_300_799_999 - 15 * 3_600_000
    ),
    offset=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_a_wcf_date_is_its_milliseconds_plus_its_offset(ms: int, offset: int) -> None:
    sign = "+" if offset >= 0 else "-"
    hh, mm = divmod(abs(offset), 60)
    value = wcf_date(f"/Date({ms}{sign}{hh:02d}{mm:02d})/", "$")
    assert value == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms, minutes=offset)
    assert wcf_date(f"/Date({ms})/", "$") == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


# -- values ------------------------------------------------------------------------------------------


def with_target_value(key: str, value: Any) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    target_attributes(context).append({"key": key, "value": value})
    return context


def test_a_text_that_only_resembles_a_date_stays_text() -> None:
    ctx = read(with_target_value("description", "/Date(soon)/"))
    assert ctx.target is not None and ctx.target.attributes["description"] == "/Date(soon)/"


def test_guid_shaped_strings_are_lower_cased_other_text_is_not() -> None:
    ctx = read(with_target_value("onr_ref", "A1F3C0DE-8E1F-EF11-9F89-000D3A4A1C2B"))
    assert ctx.target is not None and ctx.target.attributes["onr_ref"] == OPPORTUNITY
    ctx = read(with_target_value("name", "MIXED Case Name"))
    assert ctx.target is not None and ctx.target.attributes["name"] == "MIXED Case Name"


def test_whole_amounts_are_floats_too() -> None:
    ctx = read(with_target_value("onr_fee", {"__type": f"Money:{XRM}", "Value": 100}))
    assert ctx.target is not None
    fee = ctx.target.attributes["onr_fee"]
    assert fee == 100.0 and type(fee) is float


def test_a_type_this_reading_does_not_know_is_kept_as_it_came() -> None:
    unknown = {"__type": f"BooleanManagedProperty:{XRM}", "CanBeChanged": True, "Value": False}
    ctx = read(with_target_value("iscustomizable", unknown))
    assert ctx.target is not None and ctx.target.attributes["iscustomizable"] == unknown


def test_a_reference_inside_a_list_keeps_its_table() -> None:
    reference = {
        "__type": f"EntityReference:{XRM}",
        "Id": PERSON.upper(),
        "LogicalName": "systemuser",
        "Name": None,
    }
    ctx = read(with_target_value("onr_people", [reference]))
    assert ctx.target is not None
    assert ctx.target.attributes["onr_people"] == [{"Id": PERSON, "LogicalName": "systemuser", "Name": None}]


def test_every_guid_of_the_envelope_and_of_references_is_lower_case() -> None:
    upper = re.sub(
        rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        lambda m: m.group(0).upper(),
        raw("appointment_update__multiselect_money_lookup_parties"),
    )
    assert read_context(upper) == read_context(raw("appointment_update__multiselect_money_lookup_parties"))


def test_to_json_writes_datetimes_in_utc_and_leaves_the_rest() -> None:
    moment = datetime(2026, 3, 10, 9, 15, 42, 412000, tzinfo=UTC)
    assert to_json({"a": [moment, 1, None, "x"], "b": 2.5}) == {
        "a": ["2026-03-10T09:15:42.412000Z", 1, None, "x"],
        "b": 2.5,
    }
    json.dumps(
        to_json(
            read_context(raw("appointment_update__multiselect_money_lookup_parties"))
            .post_entity_images["PostImage"]
            .plain()
        )
    )


def test_plain_puts_tables_and_labels_beside_their_columns() -> None:
    party = Entity(
        "activityparty", EMPTY_GUID, {"partyid": PERSON}, {"partyid": "systemuser"}, {"partyid": "Sam"}
    )
    assert party.plain() == {
        "partyid": PERSON,
        "partyid@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
        "partyid@OData.Community.Display.V1.FormattedValue": "Sam",
    }


# -- order and duplication ---------------------------------------------------------------------------


def shuffled(value: Any, rnd: random.Random) -> Any:
    """`value` with every serialized dictionary (and only those) in another order."""
    if isinstance(value, list):
        return [shuffled(item, rnd) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: shuffled(item, rnd) for key, item in value.items()}
    for key in PAIR_LISTS & result.keys():
        if isinstance(result[key], list):
            rnd.shuffle(result[key])
    return result


def pair_lists(value: Any, path: str = "$") -> list[tuple[str, list[Any]]]:
    """Every non-empty serialized dictionary in `value` that OnRecord reads (not the
    ParentContext's), with its JSON path."""
    found: list[tuple[str, list[Any]]] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += pair_lists(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "ParentContext":
                continue
            if key in PAIR_LISTS and isinstance(item, list) and item and key != "SharedVariables":
                found.append((f"{path}.{key}", item))
            found += pair_lists(item, f"{path}.{key}")
    return found


@settings(max_examples=50, deadline=None)
@given(
    name=st.sampled_from(
        [
            "opportunity_update__pre_post_images",
            "opportunity_create__target_only",
            "appointment_update__multiselect_money_lookup_parties",
        ]
    ),
    rnd=st.randoms(use_true_random=False),
)
def test_the_order_of_key_value_pairs_does_not_change_the_reading(name: str, rnd: random.Random) -> None:
    context = body(name)
    assert read(shuffled(copy.deepcopy(context), rnd)) == read(context)


@settings(max_examples=50, deadline=None)
@given(
    name=st.sampled_from(
        ["opportunity_update__pre_post_images", "appointment_update__multiselect_money_lookup_parties"]
    ),
    data=st.data(),
)
def test_a_key_twice_in_any_dictionary_is_refused_naming_it(name: str, data: st.DataObject) -> None:
    context = body(name)
    lists = pair_lists(context)
    path, pairs = data.draw(st.sampled_from(lists))
    again = copy.deepcopy(data.draw(st.sampled_from(pairs)))
    pairs.insert(data.draw(st.integers(0, len(pairs))), again)
    problem = refused(context)
    assert problem.reason == "duplicate_key"
    assert problem.message.endswith(f"appears twice in {path}")
    assert repr(again["key"]) in problem.message


# -- what Dataverse would not send -------------------------------------------------------------------


def without(key: str) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    del context[key]
    return context


def changed(**members: Any) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    context.update(members)
    return context


def first_target_value(value: Any) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    target_attributes(context)[0]["value"] = value
    return context


def post_image(value: Any) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    context["PostEntityImages"][0]["value"] = value
    return context


def target_pair(pair: Any) -> dict[str, Any]:
    context = body("opportunity_update__pre_post_images")
    target_attributes(context)[0] = pair
    return context


@pytest.mark.parametrize(
    ("value", "reason", "named"),
    [
        (b"<xml/>", "not_json", "body is not JSON"),
        (b'{"MessageName": "Update", "MessageName": "Create"}', "duplicate_key", "appears twice"),
        (b'{"Depth": NaN}', "not_a_number", "NaN"),
        ([body("opportunity_create__target_only")], "bad_shape", "$ must be a JSON object"),
        ("Update", "bad_shape", "$ must be a JSON object"),
        (without("PrimaryEntityId"), "missing_field", "$.PrimaryEntityId is required"),
        (changed(PrimaryEntityId=None), "missing_field", "$.PrimaryEntityId is required"),
        (changed(PrimaryEntityId="not-a-guid"), "bad_field", "$.PrimaryEntityId is not a GUID"),
        (changed(PrimaryEntityId=f"{{{OPPORTUNITY}}}"), "bad_field", "$.PrimaryEntityId is not a GUID"),
        (changed(PrimaryEntityId=OPPORTUNITY + "\n"), "bad_field", "$.PrimaryEntityId is not a GUID"),
        (changed(UserId=7), "bad_field", "$.UserId is not a GUID"),
        (without("OperationId"), "missing_field", "$.OperationId is required"),
        (without("OrganizationId"), "missing_field", "$.OrganizationId is required"),
        (without("MessageName"), "missing_field", "$.MessageName is required"),
        (changed(MessageName="Up date"), "bad_field", "$.MessageName is not a message name"),
        (changed(PrimaryEntityName="Opportunity"), "bad_field", "$.PrimaryEntityName is not a logical name"),
        (changed(PrimaryEntityName=""), "bad_field", "$.PrimaryEntityName must be a non-empty string"),
        (
            changed(OperationCreatedOn="2026-03-10T09:15:42Z"),
            "bad_date",
            "$.OperationCreatedOn is not a /Date",
        ),
        (changed(OperationCreatedOn="/Date(1773134142412+99)/"), "bad_date", "$.OperationCreatedOn"),
        (
            changed(OperationCreatedOn=1773134142412),
            "bad_field",
            "$.OperationCreatedOn must be a non-empty string",
        ),
        (changed(Stage=True), "bad_field", "$.Stage must be a whole number"),
        (changed(Mode=2), "bad_field", "$.Mode must be a whole number from 0 to 1"),
        (changed(Depth="1"), "bad_field", "$.Depth must be a whole number"),
        (
            changed(InputParameters={"Target": {}}),
            "bad_shape",
            "$.InputParameters must be a list of key/value",
        ),
        (
            changed(PostEntityImages=[["PostImage", {}]]),
            "bad_shape",
            "$.PostEntityImages[0] must be an object",
        ),
        (
            changed(SharedVariables=[{"key": "tag"}]),
            "bad_shape",
            "$.SharedVariables[0] must be an object with",
        ),
        (changed(SharedVariables=[{"key": 1, "value": 2}]), "bad_field", "$.SharedVariables[0].key must be"),
        (
            changed(SharedVariables=[{"key": "a", "value": 1, "x": 2}]),
            "bad_shape",
            "has a member no key/value",
        ),
        (
            post_image("AsynchronousStepPrimaryName"),
            "bad_shape",
            "$.PostEntityImages[0].value must be an entity",
        ),
        (
            post_image({"__type": f"EntityReference:{XRM}", "Id": OPPORTUNITY, "LogicalName": "opportunity"}),
            "bad_shape",
            "$.PostEntityImages[0].value must be an entity, not a EntityReference",
        ),
        (
            post_image({"LogicalName": "opportunity"}),
            "missing_field",
            "$.PostEntityImages[0].value.Attributes is",
        ),
        (
            post_image({"LogicalName": "opportunity", "Attributes": [], "Id": "x"}),
            "bad_field",
            "$.PostEntityImages[0].value.Id is not a GUID",
        ),
        (
            first_target_value({"__type": f"Money:{XRM}", "Value": "185000"}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Value must be a number",
        ),
        (
            first_target_value({"__type": f"Money:{XRM}", "Value": True}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Value must be a number",
        ),
        (
            first_target_value({"__type": f"OptionSetValue:{XRM}", "Value": 1.5}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Value must be a whole number",
        ),
        (
            first_target_value({"__type": f"OptionSetValue:{XRM}", "Value": 2**31}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Value must be a whole number",
        ),
        (
            first_target_value([{"__type": f"OptionSetValue:{XRM}"}]),
            "missing_field",
            "$.InputParameters[0].value.Attributes[0].value[0].Value is required",
        ),
        (
            first_target_value({"__type": f"EntityReference:{XRM}", "Id": "nope", "LogicalName": "account"}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Id is not a GUID",
        ),
        (
            first_target_value({"__type": f"EntityReference:{XRM}", "Id": OPPORTUNITY, "LogicalName": "a b"}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.LogicalName is not a logical name",
        ),
        (
            first_target_value(
                {"__type": f"EntityReference:{XRM}", "Id": OPPORTUNITY, "LogicalName": "x", "Name": 1}
            ),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].value.Name must be a string or null",
        ),
        (
            first_target_value({"__type": f"EntityCollection:{XRM}", "Entities": {}}),
            "bad_shape",
            "$.InputParameters[0].value.Attributes[0].value.Entities must be a list",
        ),
        (
            first_target_value({"__type": f"EntityCollection:{XRM}", "Entities": [7]}),
            "bad_shape",
            "$.InputParameters[0].value.Attributes[0].value.Entities[0] must be an entity",
        ),
        (
            first_target_value({"__type": 42}),
            "bad_shape",
            "$.InputParameters[0].value.Attributes[0].value.__type must be a type name",
        ),
        (
            first_target_value("/Date(9999999999999999)/"),
            "bad_date",
            "$.InputParameters[0].value.Attributes[0].value is outside the years 1 to 9999",
        ),
        (
            target_pair({"key": "", "value": 1}),
            "bad_field",
            "$.InputParameters[0].value.Attributes[0].key must be",
        ),
    ],
)
def test_bodies_dataverse_would_not_send_are_refused_naming_the_problem_and_its_path(
    value: Any, reason: str, named: str
) -> None:
    problem = refused(value)
    assert (problem.reason, named in problem.message) == (reason, True), problem.message


def test_a_formatted_value_must_be_text() -> None:
    context = body("opportunity_update__pre_post_images")
    context["PreEntityImages"][0]["value"]["FormattedValues"][0]["value"] = 150000
    problem = refused(context)
    assert problem.reason == "bad_field"
    assert (
        problem.message
        == "$.PreEntityImages[0].value.FormattedValues[0].value must be a string (a formatted value)"
    )
