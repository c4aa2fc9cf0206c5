"""Request bodies described once (plugin/api_models.py): the refusal every model gives, and the
OpenAPI documents generated from the models (plugin/openapi.py)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

from connectors.power_automate.models import (
    OPENAPI_MODELS,
    SUBSCRIPTION_REASONS,
    ApprovalDecision,
    SubscriptionRequest,
)
from plugin.api_models import (
    BodyModel,
    BodyRefused,
    CitationRequest,
    VerifyRequest,
    email,
    fail,
    json_path,
    text,
    timestamp,
    validate,
)
from plugin.openapi import CORE_MODELS, _neutral, model_schemas, openapi3, swagger2

RECORD = "0065g00000AbCdEAAV"


class Inner(BodyModel):
    """An inner shape."""

    name: Annotated[str, text(10)]
    when: Annotated[Any, timestamp(optional=True)] = None


class Outer(BodyModel):
    """An outer shape."""

    who: Annotated[str, email()]
    inner: Inner
    items: list[Inner] = Field(min_length=1, max_length=2)
    note: Annotated[str | None, text(20, optional=True)] = None


GOOD: dict[str, Any] = {"who": "A@B.co", "inner": {"name": "x"}, "items": [{"name": "y"}]}


def refused(model: type[BodyModel], body: Any, **kw: Any) -> BodyRefused:
    with pytest.raises(BodyRefused) as info:
        validate(model, body, **kw)
    return info.value


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("approval", "responses", 0, "responder", "id"), "approval.responses[0].responder.id"),
        (("events", 3, "record", "UserId"), "events[3].record.UserId"),
        (("answers", "Amount (EUR)", 2), "answers.Amount (EUR)[2]"),
        ((), ""),
    ],
)
def test_a_json_path_names_the_member(loc: tuple[str | int, ...], path: str) -> None:
    assert json_path(loc) == path


def test_a_valid_body_is_kept_with_its_values_normalised() -> None:
    body = validate(Outer, {**GOOD, "unknown": {"tolerated": True}})
    assert body.who == "a@b.co" and body.inner.name == "x" and body.note is None


@pytest.mark.parametrize(
    ("change", "reason", "field", "message"),
    [
        ({"who": None}, "missing_field", "who", "who is required"),
        ({"inner": None}, "missing_field", "inner", "inner is required"),
        ({"inner": "x"}, "wrong_type", "inner", "inner must be an object"),
        ({"inner": {}}, "missing_field", "inner.name", "inner.name is required"),
        ({"inner": {"name": " "}}, "missing_field", "inner.name", "inner.name is empty"),
        ({"inner": {"name": 7}}, "wrong_type", "inner.name", "inner.name must be a string"),
        ({"inner": {"name": "x" * 11}}, "too_long", "inner.name", "inner.name exceeds 10 characters"),
        ({"inner": {"name": "x", "when": "2026-11-26T10:00:00"}}, "naive_datetime", "inner.when", None),
        ({"inner": {"name": "x", "when": "9999-11-26T10:00:00Z"}}, "invalid_datetime", "inner.when", None),
        ({"items": []}, "invalid_value", "items", "items is empty"),
        ({"items": "x"}, "wrong_type", "items", "items must be an array"),
        ({"items": [{"name": "x"}] * 3}, "too_long", "items", "items has more than 2 items"),
        # a null list item is of the wrong type, a null member is missing
        ({"items": [None]}, "wrong_type", "items[0]", "items[0] must be an object"),
        ({"items": [{"name": "x"}, {"name": 1}]}, "wrong_type", "items[1].name", None),
        ({"who": "jane"}, "invalid_email", "who", "who must be an e-mail address or UPN"),
        ({"note": 5}, "wrong_type", "note", None),
    ],
)
def test_every_refusal_names_the_member_by_its_json_path(
    change: dict[str, Any], reason: str, field: str, message: str | None
) -> None:
    error = refused(Outer, {**GOOD, **change})
    assert (error.reason, error.field) == (reason, field)
    assert error.message.startswith(f"{field} ")
    if message is not None:
        assert error.message == message


def test_a_refusal_below_a_member_and_under_a_prefix_and_in_a_sources_own_codes() -> None:
    def check(value: Any) -> Any:
        raise fail("too_long", "is too long here", "deep", 2)

    from plugin.api_models import Checked

    class Odd(BodyModel):
        thing: Annotated[Any, Checked(check, {"type": "object"})]

    error = refused(Odd, {"thing": {}}, prefix=("events", 4), reasons={"too_long": "bad_field"})
    assert (error.reason, error.field) == ("bad_field", "events[4].thing.deep[2]")
    assert error.message == "events[4].thing.deep[2] is too long here"


def test_a_body_that_is_not_an_object() -> None:
    error = refused(Outer, ["not", "an", "object"])
    assert (error.reason, error.field) == ("wrong_type", None)


# -- the /api bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"object": "Opportunity", "id": RECORD, "field": "Amount"}, "value"),
        ({"object": "Opportunity; DROP", "id": RECORD, "field": "Amount", "value": 1}, "object"),
        ({"object": "Opportunity", "id": "a b", "field": "Amount", "value": 1}, "id"),
        ({"object": "Opportunity", "id": RECORD, "field": "Amount", "value": [1]}, "value"),
        ({"object": "Opportunity", "id": RECORD, "field": "", "value": 1}, "field"),
    ],
)
def test_a_figure_request_names_the_bad_member(body: dict[str, Any], field: str) -> None:
    assert refused(VerifyRequest, body).field == field


def test_a_citation_needs_a_leaders_address_and_a_short_occasion() -> None:
    body = {
        "leader": "CFO@contoso.com",
        "object": "Opportunity",
        "id": RECORD,
        "field": "Amount",
        "value": None,
    }
    assert validate(CitationRequest, body).leader == "cfo@contoso.com"
    assert refused(CitationRequest, {**body, "leader": "cfo"}).field == "leader"
    assert refused(CitationRequest, {**body, "occasion": "x" * 501}).reason == "too_long"
    assert refused(CitationRequest, {**body, "occasion": None}).field == "occasion"


def test_a_subscription_is_refused_in_its_endpoints_codes() -> None:
    body = {"callback_url": "https://prod-1.westeurope.logic.azure.com/x", "events": ["approval.blocked"] * 2}
    assert validate(SubscriptionRequest, body).events == ["approval.blocked"]
    error = refused(SubscriptionRequest, {**body, "events": ["coffee"]}, reasons=SUBSCRIPTION_REASONS)
    assert (error.reason, error.field) == ("bad_field", "events")
    error = refused(SubscriptionRequest, {**body, "callback_url": ""}, reasons=SUBSCRIPTION_REASONS)
    assert (error.reason, error.field) == ("missing_field", "callback_url")


# -- the documents, generated from the models -----------------------------------------------------


def every_schema(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("properties"), dict):
                found.extend(p for p in item["properties"].values() if isinstance(p, dict))
            for sub in item.values():
                walk(sub)
        elif isinstance(item, list):
            for sub in item:
                walk(sub)

    walk(value)
    return found


@pytest.mark.parametrize("model", [*CORE_MODELS, *OPENAPI_MODELS], ids=lambda m: m.__name__)
def test_each_documented_body_is_its_model(model: type[BodyModel]) -> None:
    for document, where in (
        (swagger2("https://onrecord.contoso.com"), "definitions"),
        (openapi3("https://onrecord.contoso.com")["components"], "schemas"),
    ):
        definition = document[where][model.__name__]
        fields = model.model_fields
        assert set(definition["properties"]) == {f.alias or name for name, f in fields.items()}
        assert definition["required"] == [f.alias or n for n, f in fields.items() if f.is_required()]
        assert definition["description"] == model.__doc__
        for name, info in fields.items():
            if info.description is not None and "$ref" not in definition["properties"][name]:
                assert definition["properties"][name]["description"] == info.description


def test_the_documents_say_nullable_in_their_own_dialect() -> None:
    v2 = swagger2("https://onrecord.contoso.com")
    v3 = openapi3("https://onrecord.contoso.com")
    comments_v2 = v2["definitions"]["ApprovalResponse"]["properties"]["comments"]
    comments_v3 = v3["components"]["schemas"]["ApprovalResponse"]["properties"]["comments"]
    assert (comments_v2["type"], comments_v2["x-nullable"]) == ("string", True)
    assert (comments_v3["type"], comments_v3["nullable"]) == ("string", True)
    assert "x-nullable" not in comments_v3
    for document in (v2, v3):
        for schema in every_schema(document):
            assert "anyOf" not in schema and ("type" in schema or "$ref" in schema), schema
            assert schema.get("default", ...) is not None


def test_the_converter() -> None:
    assert _neutral({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}], "default": None}) == {
        "type": "string",
        "maxLength": 3,
        "x-nullable": True,
    }
    assert _neutral({"anyOf": [{"$ref": "RecordRef"}, {"type": "null"}], "description": "x"}) == {
        "$ref": "RecordRef"
    }
    with pytest.raises(ValueError):
        _neutral({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(ValueError):
        _neutral({"description": "no type"})


def test_definitions_are_named_by_class_and_carry_no_made_up_titles() -> None:
    definitions = model_schemas((ApprovalDecision,))
    assert set(definitions) == {
        "ApprovalDecision",
        "ApprovalOutput",
        "ApprovalResponse",
        "ApprovalResponder",
        "RecordRef",
    }
    assert all("title" not in d for d in definitions.values())
    assert all("title" not in p for d in definitions.values() for p in d["properties"].values())
    callback = model_schemas((SubscriptionRequest,))["SubscriptionRequest"]["properties"]["callback_url"]
    assert callback["title"] == "Callback URL" and callback["x-ms-notification-url"] is True
