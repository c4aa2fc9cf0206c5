"""What the Microsoft connectors really emit, passed straight through by the flow, is accepted.

Sources for the shapes in the fixtures used here:

* Approvals connector (learn.microsoft.com/connectors/approvals, "Known issues and limitations"):
  "Valid responses to a Basic or Await all approval type are "Approve" and "Reject". These responses
  are case-sensitive."; custom responses are the flow author's own options.
* "Everyone must approve" outcome: the responses joined by ", ", e.g. "Approve, Approve, Approve"
  (MicrosoftDocs/power-automate-docs issues #660 and #707, the latter from Microsoft support in
  Japan); with one rejection the outcome lists every response too (Microsoft support, quoted in
  MicrosoftDocs/BusinessApplicationPlatform-Connectors-public issue #439). A plain "Reject" is
  accepted as well, as the Power Automate docs say such an approval ends on the first rejection.
* Microsoft Forms connector, "Get response details": ``responder`` and ``submitDate`` as
  "8/27/2024 12:34:21 PM" (US month/day/year, 12-hour clock, UTC, no offset).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.power_automate.payloads import (
    SOURCE_APPROVALS,
    SOURCE_FORMS,
    Parsed,
    PayloadRejected,
    parse_approvals,
    parse_forms,
)

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "power_automate" / "fixtures"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw(name))
    return data


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def only(parsed: Parsed) -> Any:
    assert parsed.ignored is None
    assert len(parsed.events) == 1
    return parsed.events[0]


def refused(approval: dict[str, Any]) -> PayloadRejected:
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    return info.value


# -- "Everyone must approve" ----------------------------------------------------------------------


def test_everyone_must_approve() -> None:
    # outcome "Approve, Approve, Approve": the connector's summary of an Await-all approval
    parsed = parse_approvals(raw("approvals__everyone_must_approve.json"))
    assert len(parsed.events) == 3
    assert {e.source for e in parsed.events} == {SOURCE_APPROVALS}
    assert [e.actor for e in parsed.events] == [
        "jane.doe@contoso.com",
        "li.wei@contoso.com",
        "priya.nair@contoso.com",
    ]
    for event in parsed.events:
        assert event.data["outcome"] == "Approve, Approve, Approve"
        assert event.data["outcome_responses"] == ["Approve", "Approve", "Approve"]
        assert event.data["approver_response"] == "Approve"
        # the stage is named by the policy: no number
        assert (event.data["stage"], event.data["stage_name"]) == (None, "business strategy")
    assert parsed.events[0].delivery_id == (
        "approval:5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e:business strategy:3b3ba145-7da5-414d-b84f-a9835eb71f3b"
    )
    assert parsed.events[1].occurred_at == datetime(2026, 1, 12, 10, 47, 38, 273000, tzinfo=UTC)


def test_everyone_one_rejects_lists_every_response() -> None:
    parsed = parse_approvals(raw("approvals__everyone_one_rejects.json"))
    approve, reject = parsed.events
    assert approve.data["approver_response"] == "Approve"
    assert reject.data["approver_response"] == "Reject"
    assert reject.actor == "sara.lindqvist@contoso.com"
    assert reject.occurred_at == datetime(2026, 1, 13, 10, 20, tzinfo=UTC)
    for event in parsed.events:
        assert event.data["outcome"] == "Approve, Reject"
        assert event.data["outcome_responses"] == ["Approve", "Reject"]
        assert (event.data["stage"], event.data["stage_name"]) == (2, "finance")  # legacy name
    assert approve.delivery_id.split(":")[2] == "2"


def test_everyone_one_rejects_with_a_plain_reject_outcome() -> None:
    approval = body("approvals__everyone_one_rejects.json")
    approval["approval"]["outcome"] = "Reject"
    parsed = parse_approvals(encode(approval))
    assert [e.data["outcome_responses"] for e in parsed.events] == [["Reject"], ["Reject"]]


def test_list_outcome_in_any_order() -> None:
    approval = body("approvals__everyone_one_rejects.json")
    approval["approval"]["outcome"] = "Reject, Approve"
    parsed = parse_approvals(encode(approval))
    assert parsed.events[0].data["outcome_responses"] == ["Reject", "Approve"]


@pytest.mark.parametrize(
    "outcome",
    [
        "Approve",  # a single "Approve" while a response is "Reject"
        "Approve, Approve",  # lists a response that is not there
        "Approve, Reject, Reject",  # one entry too many
        "Approve,Reject",  # not the connector's separator
        "Approve, reject",  # case-sensitive
        "Approve, Reject, ",
        ", Approve, Reject",
        "Approve Reject",
    ],
)
def test_list_outcome_must_list_each_response_once(outcome: str) -> None:
    approval = body("approvals__everyone_one_rejects.json")
    approval["approval"]["outcome"] = outcome
    error = refused(approval)
    assert (error.field, error.reason) == ("approval.outcome", "invalid_value")


def test_single_approve_outcome_with_a_reject_is_still_refused() -> None:
    approval = body("approvals__everyone_must_approve.json")
    approval["approval"]["responses"][2]["approverResponse"] = "Reject"
    approval["approval"]["outcome"] = "Approve"
    error = refused(approval)
    assert error.field == "approval.outcome"
    assert "'Reject'" in error.message


def test_list_outcome_of_a_hundred_responses() -> None:
    approval = body("approvals__everyone_must_approve.json")
    template = approval["approval"]["responses"][0]
    responses = []
    for i in range(100):
        item = json.loads(json.dumps(template))
        item["responder"]["id"] = f"00000000-0000-4000-8000-{i:012d}"
        item["approverResponse"] = f"Option {i}"
        responses.append(item)
    approval["approval"]["responses"] = responses
    approval["approval"]["outcome"] = ", ".join(f"Option {i}" for i in reversed(range(100)))
    parsed = parse_approvals(encode(approval))
    assert len(parsed.events) == 100
    assert parsed.events[0].data["outcome_responses"][:2] == ["Option 99", "Option 98"]


# -- custom responses ---------------------------------------------------------------------------


def test_custom_responses() -> None:
    # "Custom Responses - Wait for all responses": the flow author's options, carried exactly
    parsed = parse_approvals(raw("approvals__custom_response.json"))
    first, second = parsed.events
    assert first.data["approver_response"] == "Approve with conditions"
    assert second.data["approver_response"] == "Need more info"
    assert second.actor == "li.wei@contoso.onmicrosoft.com"
    for event in parsed.events:
        assert event.data["outcome"] == "Approve with conditions, Need more info"
        assert event.data["outcome_responses"] == ["Approve with conditions", "Need more info"]
        assert (event.data["stage"], event.data["stage_name"]) == (3, None)  # a number beyond the legacy two
    assert first.delivery_id == (
        "approval:7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a:3:3b3ba145-7da5-414d-b84f-a9835eb71f3b"
    )


def test_custom_response_wait_for_one() -> None:
    approval = body("approvals__custom_response.json")
    del approval["approval"]["responses"][1]
    approval["approval"]["outcome"] = "Approve with conditions"
    assert only(parse_approvals(encode(approval))).data["outcome_responses"] == ["Approve with conditions"]


def test_custom_response_containing_the_separator_is_matched_whole() -> None:
    approval = body("approvals__custom_response.json")
    responses = approval["approval"]["responses"]
    responses[0]["approverResponse"] = "Yes, with conditions"
    responses[1]["approverResponse"] = "Yes"
    approval["approval"]["outcome"] = "Yes, Yes, with conditions"
    parsed = parse_approvals(encode(approval))
    assert parsed.events[0].data["outcome_responses"] == ["Yes", "Yes, with conditions"]
    # ... and as a single-value outcome ("Wait for one response")
    approval["approval"]["outcome"] = "Yes, with conditions"
    parsed = parse_approvals(encode(approval))
    assert parsed.events[0].data["outcome_responses"] == ["Yes, with conditions"]


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("Approve with conditions, Need more info\n", "invalid_value"),
        ("Approve with conditions\t", "invalid_value"),
        ("", "missing_field"),
        (42, "wrong_type"),
        ("x" * 20_201, "too_long"),
        ("Approve", "invalid_value"),  # neither response
    ],
)
def test_bad_custom_outcome_rejected(outcome: Any, reason: str) -> None:
    approval = body("approvals__custom_response.json")
    approval["approval"]["outcome"] = outcome
    error = refused(approval)
    assert (error.field, error.reason) == ("approval.outcome", reason)


# -- stages named by the policy -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stage", "stage_name", "key"),
    [
        (1, 1, "business_strategy", "1"),
        ("2", 2, "finance", "2"),
        ("finance", 2, "finance", "2"),
        (3, 3, None, "3"),
        ("3", 3, None, "3"),
        (20, 20, None, "20"),
        ("20", 20, None, "20"),
        ("business strategy", None, "business strategy", "business strategy"),
        ("Finance", None, "Finance", "Finance"),
        ("stage1", None, "stage1", "stage1"),
        ("Legal v2.1 - EMEA_x", None, "Legal v2.1 - EMEA_x", "Legal v2.1 - EMEA_x"),
        ("L" + "x" * 79, None, "L" + "x" * 79, "L" + "x" * 79),
    ],
)
def test_stage_numbers_and_names(sent: Any, stage: int | None, stage_name: str | None, key: str) -> None:
    approval = body("approvals__stage1_approved.json")
    approval["stage"] = sent
    event = only(parse_approvals(encode(approval)))
    assert (event.data["stage"], event.data["stage_name"]) == (stage, stage_name)
    assert (
        event.delivery_id
        == f"approval:9a1f2c3d-4b5e-4f60-8a7b-1c2d3e4f5a6b:{key}:3b3ba145-7da5-414d-b84f-a9835eb71f3b"
    )


def test_delivery_ids_accepted_before_are_unchanged() -> None:
    # every stage value accepted before keeps its delivery id: approval:{name}:{1|2}:{responder id}
    for sent, number in [(1, 1), (2, 2), ("1", 1), ("2", 2), ("business_strategy", 1), ("finance", 2)]:
        approval = body("approvals__stage1_approved.json")
        approval["stage"] = sent
        event = only(parse_approvals(encode(approval)))
        assert event.delivery_id == (
            f"approval:9a1f2c3d-4b5e-4f60-8a7b-1c2d3e4f5a6b:{number}:3b3ba145-7da5-414d-b84f-a9835eb71f3b"
        )


# -- Forms connector dates ----------------------------------------------------------------------


def test_forms_connector_submit_date() -> None:
    # the body carries "Get response details"' own submitDate, and no submitted_at
    payload = raw("forms__connector_submit_date.json")
    event = only(parse_forms(payload))
    assert event.source == SOURCE_FORMS
    assert event.occurred_at == datetime(2024, 8, 27, 12, 34, 21, tzinfo=UTC)
    assert event.data["submitted_at"] == "2024-08-27T12:34:21Z"
    assert event.actor == "li.wei@contoso.com"
    assert (
        event.delivery_id
        == "form:v4j5cvGGr0GRqy180BHbR4mXhT0w1QpMnBvC8sLx2ZtUQ0pNMk9EWjJRWTNBVlhFN0ZHUzhKVC4u:57"
    )
    assert "submitDate" not in event.data


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("8/27/2024 12:34:21 PM", datetime(2024, 8, 27, 12, 34, 21, tzinfo=UTC)),
        ("8/27/2024 12:34:21 AM", datetime(2024, 8, 27, 0, 34, 21, tzinfo=UTC)),
        ("12/1/2025 1:05:09 PM", datetime(2025, 12, 1, 13, 5, 9, tzinfo=UTC)),
        ("11/26/2025 9:14:07 AM", datetime(2025, 11, 26, 9, 14, 7, tzinfo=UTC)),
        ("02/03/2026 11:59:59 PM", datetime(2026, 2, 3, 23, 59, 59, tzinfo=UTC)),
        ("2/29/2024 6:00:00 AM", datetime(2024, 2, 29, 6, 0, tzinfo=UTC)),
        ("2025-11-26T09:14:07+01:00", datetime(2025, 11, 26, 8, 14, 7, tzinfo=UTC)),
    ],
)
def test_forms_connector_date_formats(sent: str, expected: datetime) -> None:
    for key in ("submitted_at", "submitDate"):
        form = body("forms__submitted.json")
        del form["submitted_at"]
        form[key] = sent
        assert only(parse_forms(encode(form))).occurred_at == expected


def test_submitted_at_wins_over_submit_date() -> None:
    form = body("forms__connector_submit_date.json")
    form["submitted_at"] = "2024-08-27T12:34:25Z"
    assert only(parse_forms(encode(form))).occurred_at == datetime(2024, 8, 27, 12, 34, 25, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        ("2024-08-27T12:34:21", "naive_datetime"),  # naive ISO stays ambiguous
        ("27/8/2024 12:34:21 PM", "invalid_datetime"),
        ("8/27/2024 12:34:21", "invalid_datetime"),
        ("8/27/2024 12:34 PM", "invalid_datetime"),
        ("8/27/2024 00:34:21 AM", "invalid_datetime"),
        ("8/27/24 12:34:21 PM", "invalid_datetime"),
        ("Tuesday, August 27, 2024", "invalid_datetime"),
        ("", "invalid_datetime"),
        (1724762061, "wrong_type"),
    ],
)
def test_bad_submit_date_rejected(sent: Any, reason: str) -> None:
    form = body("forms__connector_submit_date.json")
    form["submitDate"] = sent
    with pytest.raises(PayloadRejected) as info:
        parse_forms(encode(form))
    assert (info.value.field, info.value.reason) == ("submitDate", reason)


def test_submission_time_required() -> None:
    form = body("forms__connector_submit_date.json")
    del form["submitDate"]
    with pytest.raises(PayloadRejected) as info:
        parse_forms(encode(form))
    assert (info.value.field, info.value.reason) == ("submitted_at", "missing_field")
