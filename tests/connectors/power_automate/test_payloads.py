"""Power Automate bodies -> normalised events (fixtures from connectors/power_automate/fixtures/)."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.power_automate.payloads import (
    MAX_BODY_BYTES,
    SOURCE_APPROVALS,
    SOURCE_FORMS,
    SOURCE_SIGNALS,
    Parsed,
    PayloadRejected,
    parse,
    parse_approvals,
    parse_forms,
    parse_signals,
)
from plugin.events import KINDS

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "power_automate" / "fixtures"
SENDER = "entra:4f8d2c1a-6b3e-4a5d-9c7f-0e1d2c3b4a59/11112222-3333-4444-8555-666677778888"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw(name))
    return data


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def only(parsed: Parsed) -> Any:
    assert parsed.ignored is None
    assert len(parsed.events) == 1
    return parsed.events[0]


def check_common(parsed: Parsed, payload: bytes, source: str) -> None:
    for event in parsed.events:
        assert event.source == source
        assert event.kind in KINDS
        assert event.sender == SENDER
        assert event.raw_digest == hashlib.sha256(payload).hexdigest()
        assert event.occurred_at.tzinfo is not None
        assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        json.dumps(dict(event.data))  # JSON-serialisable


# -- forms --------------------------------------------------------------------------------------


def test_form_submitted() -> None:
    payload = raw("forms__submitted.json")
    parsed = parse_forms(payload, sender=SENDER)
    check_common(parsed, payload, SOURCE_FORMS)
    event = only(parsed)
    form = body("forms__submitted.json")
    assert event.kind == "form.submitted"
    assert event.delivery_id == f"form:{form['form_id']}:42"
    assert (event.object, event.record_id) == ("Opportunity", "0065g00000AbCdEAAV")
    assert event.actor == "ana.ruiz@contoso.com"
    assert event.occurred_at == datetime(2025, 11, 26, 9, 14, 7, 123456, tzinfo=UTC)
    assert event.data["form_name"] == "Budget Request"
    assert event.data["response_id"] == "42"
    assert event.data["answers"]["Amount (EUR)"] == "125000"
    assert event.data["answers"]["Needs finance review"] is True
    assert event.data["flow_run_id"] == "08584732894726129482736102947CU31"
    assert "flow_name" not in event.data  # unknown keys tolerated, not carried


def test_form_retried_delivery_has_same_id() -> None:
    first = only(parse_forms(raw("forms__submitted.json")))
    retried = body("forms__submitted.json")
    retried["flow_run_id"] = "08584732894726129482736102947CU99"  # the flow was re-run / resubmitted
    second = only(parse_forms(encode(retried)))
    assert first.delivery_id == second.delivery_id
    assert first.raw_digest != second.raw_digest


def test_form_response_id_as_string() -> None:
    form = body("forms__submitted.json")
    form["response_id"] = "42"
    assert only(parse_forms(encode(form))).delivery_id.endswith(":42")


# -- approvals ----------------------------------------------------------------------------------


def test_stage1_approved() -> None:
    payload = raw("approvals__stage1_approved.json")
    parsed = parse_approvals(payload, sender=SENDER)
    check_common(parsed, payload, SOURCE_APPROVALS)
    event = only(parsed)
    assert event.kind == "approval.decided"
    assert (
        event.delivery_id
        == "approval:9a1f2c3d-4b5e-4f60-8a7b-1c2d3e4f5a6b:1:3b3ba145-7da5-414d-b84f-a9835eb71f3b"
    )
    assert (event.object, event.record_id) == ("Opportunity", "0065g00000AbCdEAAV")
    assert event.actor == "jane.doe@contoso.com"
    assert event.occurred_at == utc("2025-11-26T11:02:45+00:00")
    data = event.data
    assert data["stage"] == 1
    assert data["stage_name"] == "business_strategy"
    assert data["outcome"] == "Approve"
    assert data["approver_response"] == "Approve"
    assert data["comments"] == "Fits the FY26 platform strategy."
    assert data["approval_name"] == "9a1f2c3d-4b5e-4f60-8a7b-1c2d3e4f5a6b"
    assert data["approval_title"] == "Budget Request 42 - stage 1 (business strategy)"
    assert data["request_date"] == "2025-11-26T09:14:12Z"
    assert data["completion_date"] == "2025-11-26T11:02:45Z"
    assert data["responder"]["display_name"] == "Jane Doe"
    assert data["responder"]["tenant_id"] == "4f8d2c1a-6b3e-4a5d-9c7f-0e1d2c3b4a59"
    assert data["flow_run_id"] == "08584732894726129482736102947CU31"


def test_stage2_rejected() -> None:
    event = only(parse_approvals(raw("approvals__stage2_rejected.json")))
    assert (
        event.delivery_id
        == "approval:d4e5f6a7-b8c9-4d0e-9f1a-2b3c4d5e6f70:2:5c2e7a91-0d3b-4f1e-9a84-6b7c8d9e0f12"
    )
    assert event.data["stage"] == 2
    assert event.data["stage_name"] == "finance"
    assert event.data["outcome"] == "Reject"
    assert event.data["approver_response"] == "Reject"
    assert event.occurred_at == datetime(2025, 11, 27, 7, 30, tzinfo=UTC)  # +01:00 normalised to UTC
    assert event.actor == "omar.haddad@contoso.com"


def test_two_responders_give_two_events() -> None:
    parsed = parse_approvals(raw("approvals__two_responders.json"))
    assert len(parsed.events) == 2
    first, second = parsed.events
    assert first.delivery_id.endswith(":1:3b3ba145-7da5-414d-b84f-a9835eb71f3b")
    assert second.delivery_id.endswith(":1:8e9f0a1b-2c3d-4e5f-8a9b-0c1d2e3f4a5b")
    assert first.delivery_id != second.delivery_id
    assert (first.object, first.record_id) == ("Budget_Request__c", "a0B5g000003XyZaEAK")
    assert first.data["comments"] is None
    assert second.actor == "li.wei@contoso.onmicrosoft.com"  # no e-mail: the UPN
    assert second.occurred_at == datetime(2025, 12, 2, 16, 40, 21, 500000, tzinfo=UTC)
    assert [e.data["response_index"] for e in parsed.events] == [0, 1]
    assert {e.data["response_count"] for e in parsed.events} == {2}


def test_approval_retried_delivery_has_same_ids() -> None:
    first = parse_approvals(raw("approvals__two_responders.json"))
    second = parse_approvals(raw("approvals__two_responders.json"))
    assert [e.delivery_id for e in first.events] == [e.delivery_id for e in second.events]


@pytest.mark.parametrize(
    ("sent", "stage"), [(1, 1), ("1", 1), ("business_strategy", 1), (2, 2), ("finance", 2)]
)
def test_stage_forms(sent: Any, stage: int) -> None:
    approval = body("approvals__stage1_approved.json")
    approval["stage"] = sent
    event = only(parse_approvals(encode(approval)))
    assert event.data["stage"] == stage
    assert event.data["stage_name"] == {1: "business_strategy", 2: "finance"}[stage]
    assert event.delivery_id.split(":")[2] == str(stage)


# 3, "Finance" and "stage1" used to be refused here: approval policies now name their own stages
# and may have up to 20, so they are accepted (see test_connector_formats.test_stage_numbers_and_names).
@pytest.mark.parametrize(
    "sent",
    [0, 21, -1, True, "0", "21", "03", "3rd stage", "", " finance", "has:colon", "x" * 81, 1.0, None, [1]],
)
def test_bad_stage_rejected(sent: Any) -> None:
    approval = body("approvals__stage1_approved.json")
    approval["stage"] = sent
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert info.value.field == "stage"


# These texts used to be refused as approverResponse. "Custom Responses" approvals send whatever
# option the flow author defined -- "approve" or "Approved" included -- and the outcome then repeats
# it, so they are accepted and carried exactly; the policy's approve_responses decide what means yes.
@pytest.mark.parametrize("response", ["approve", "APPROVE", "Approved", "reject", "Rejected"])
def test_approver_response_is_free_text(response: str) -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["responses"][0]["approverResponse"] = response
    approval["approval"]["outcome"] = response
    event = only(parse_approvals(encode(approval)))
    assert event.data["approver_response"] == response
    assert (event.data["outcome"], event.data["outcome_responses"]) == (response, [response])


@pytest.mark.parametrize("response", ["approve", "APPROVE", "Approved", "reject", "Rejected"])
def test_approver_response_must_match_outcome_case_sensitively(response: str) -> None:
    approval = body("approvals__stage1_approved.json")  # outcome "Approve"
    approval["approval"]["responses"][0]["approverResponse"] = response
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert (info.value.field, info.value.reason) == ("approval.outcome", "invalid_value")


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("", "missing_field"),
        ("   ", "missing_field"),
        (None, "missing_field"),
        (7, "wrong_type"),
        (["Approve"], "wrong_type"),
        ("x" * 201, "too_long"),
        ("Approve\n", "invalid_value"),
        ("Appr\u0007ove", "invalid_value"),
    ],
)
def test_bad_approver_response_rejected(response: Any, reason: str) -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["responses"][0]["approverResponse"] = response  # refused before the outcome check
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert (info.value.field, info.value.reason) == ("approval.responses[0].approverResponse", reason)


def test_outcome_is_case_sensitive() -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["outcome"] = "approve"
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert info.value.field == "approval.outcome"


def test_duplicate_responder_rejected() -> None:
    approval = body("approvals__two_responders.json")
    responses = approval["approval"]["responses"]
    responses[1]["responder"]["id"] = responses[0]["responder"]["id"].upper()
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert info.value.field == "approval.responses[1].responder.id"


def test_response_before_request_rejected() -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["responses"][0]["responseDate"] = "2025-11-26T09:00:00Z"
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert info.value.field == "approval.responses[0].responseDate"


def test_extra_approval_fields_tolerated() -> None:
    approval = body("approvals__stage2_rejected.json")
    approval["approval"]["respondLink"] = "https://make.powerautomate.com/environments/x/approvals/received/y"
    approval["approval"]["approvers"] = [{"id": "x"}]
    approval["approval"]["responses"][0]["extra"] = {"nested": True}
    approval["my_field"] = "added by the flow author"
    assert len(parse_approvals(encode(approval)).events) == 1


# -- signals ------------------------------------------------------------------------------------


def test_training_attended() -> None:
    payload = raw("signals__training_attended.json")
    parsed = parse_signals(payload, sender=SENDER)
    check_common(parsed, payload, SOURCE_SIGNALS)
    event = only(parsed)
    assert event.kind == "training.attended"
    assert event.delivery_id == "signal:training-crm-basics-2025-11-20-jane.doe"
    assert event.actor == "jane.doe@contoso.com"
    assert event.occurred_at == datetime(2025, 11, 20, 14, 0, tzinfo=UTC)
    assert event.data["signal_kind"] == "training"
    assert event.data["details"]["duration_minutes"] == 90
    assert event.object is None and event.record_id is None
    assert event.ordering_key == "actor/jane.doe@contoso.com"


@pytest.mark.parametrize(
    ("kind", "normalised"),
    [
        ("training.attended", "training.attended"),
        ("Training", "training.attended"),
        ("citation.made", "citation.made"),
        ("citation", "citation.made"),
        ("report.viewed", "user.activity"),
        ("dashboard.viewed", "user.activity"),
    ],
)
def test_signal_kinds(kind: str, normalised: str) -> None:
    signal = body("signals__training_attended.json")
    signal["kind"] = kind
    event = only(parse_signals(encode(signal)))
    assert event.kind == normalised
    assert event.delivery_id == "signal:training-crm-basics-2025-11-20-jane.doe"


def test_citation_with_record() -> None:
    signal = body("signals__training_attended.json")
    signal.update(
        kind="citation.made", id="cit-1", record={"object": "Opportunity", "id": "0065g00000AbCdEAAV"}
    )
    event = only(parse_signals(encode(signal)))
    assert (event.object, event.record_id) == ("Opportunity", "0065g00000AbCdEAAV")


def test_unknown_kind_ignored() -> None:
    parsed = parse_signals(raw("signals__unknown_kind.json"))
    assert parsed.events == ()
    assert parsed.is_ignored
    assert "coffee.break" in (parsed.ignored or "")


def test_signal_retried_delivery_has_same_id() -> None:
    first = only(parse_signals(raw("signals__training_attended.json")))
    second = only(parse_signals(raw("signals__training_attended.json")))
    assert first.delivery_id == second.delivery_id
    assert first == second


# -- malformed fixtures -------------------------------------------------------------------------

MALFORMED = {
    "malformed__forms__naive_submitted_at.json": ("forms", "submitted_at", "naive_datetime"),
    "malformed__forms__missing_record_id.json": ("forms", "record.id", "missing_field"),
    "malformed__forms__anonymous_responder.json": ("forms", "responder", "invalid_value"),
    "malformed__forms__day_month_submit_date.json": ("forms", "submitDate", "invalid_datetime"),
    # was malformed__approvals__lowercase_approve.json, refused at approverResponse: a lower-case
    # "approve" is a valid custom response now, but an outcome that does not repeat it exactly is not
    "malformed__approvals__outcome_case_mismatch.json": ("approvals", "approval.outcome", "invalid_value"),
    "malformed__approvals__bad_stage.json": ("approvals", "stage", "invalid_value"),
    "malformed__approvals__outcome_mismatch.json": ("approvals", "approval.outcome", "invalid_value"),
    "malformed__approvals__outcome_list_short.json": ("approvals", "approval.outcome", "invalid_value"),
    "malformed__approvals__missing_responder_id.json": (
        "approvals",
        "approval.responses[0].responder.id",
        "missing_field",
    ),
    "malformed__signals__bad_leader.json": ("signals", "leader", "invalid_email"),
}


def test_every_malformed_fixture_is_covered() -> None:
    assert {p.name for p in FIXTURES.glob("malformed__*.json")} == set(MALFORMED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_fixture_rejected(name: str) -> None:
    endpoint, field, reason = MALFORMED[name]
    with pytest.raises(PayloadRejected) as info:
        parse(endpoint, raw(name))  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.reason == reason
    assert field in info.value.message


def test_outcome_case_mismatch_rejected() -> None:
    # outcome "Approve", approverResponse "approve": the connector copies the response into the
    # outcome verbatim, so the case must agree (the lower-case response alone is accepted now)
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(raw("malformed__approvals__outcome_case_mismatch.json"))
    assert "'approve'" in info.value.message
    assert "case-sensitive" in info.value.message


# -- generic validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "invalid_json"),
        (b"not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[]", "not_object"),
        (b'"text"', "not_object"),
        (b'{"kind": "training", "kind": "citation"}', "invalid_json"),
        (b'{"kind": NaN}', "invalid_json"),
        (b"{" * 100_000, "invalid_json"),
        (b" " * (MAX_BODY_BYTES + 1), "too_large"),
    ],
)
def test_not_a_json_object(payload: bytes, reason: str) -> None:
    for endpoint in ("forms", "approvals", "signals"):
        with pytest.raises(PayloadRejected) as info:
            parse(endpoint, payload)
        assert info.value.reason == reason


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("submitted_at", "2025-11-26", "invalid_datetime"),
        ("submitted_at", "26/11/2025 09:14", "invalid_datetime"),
        # "11/26/2025 9:14:07 AM" was refused here; it is the Forms connector's own submitDate
        # format, accepted now (test_connector_formats.test_forms_connector_date_formats)
        ("submitted_at", "26/11/2025 9:14:07 AM", "invalid_datetime"),
        ("submitted_at", "11/26/2025 13:14:07 PM", "invalid_datetime"),
        ("submitted_at", "11/26/2025 0:14:07 AM", "invalid_datetime"),
        ("submitted_at", "11/26/2025 9:14 AM", "invalid_datetime"),
        ("submitted_at", "11/26/2025 9:14:07 am", "invalid_datetime"),
        ("submitted_at", "11/26/2025 9:14:07", "invalid_datetime"),
        ("submitted_at", "2/30/2025 9:14:07 AM", "invalid_datetime"),
        ("submitted_at", "11/26/1999 9:14:07 AM", "invalid_datetime"),
        ("submitted_at", "2025-13-26T09:14:07Z", "invalid_datetime"),
        ("submitted_at", "2025-11-26T09:14:07.123", "naive_datetime"),
        ("submitted_at", 1764148447, "wrong_type"),
        ("responder", "not-an-email", "invalid_email"),
        ("responder", "a@b", "invalid_email"),
        ("responder", 42, "wrong_type"),
        ("responder", "", "missing_field"),
        ("form_id", "has:colon", "invalid_value"),
        ("form_id", "x" * 201, "too_long"),
        ("form_name", "n" * 1001, "too_long"),
        ("response_id", -1, "invalid_value"),
        ("response_id", True, "wrong_type"),
        ("response_id", 1.5, "wrong_type"),
        ("record", "Opportunity/0065g00000AbCdEAAV", "wrong_type"),
        ("answers", [], "wrong_type"),
        ("answers", {"q": {"nested": "object"}}, "wrong_type"),
        ("answers", {"q": "x" * 4001}, "too_long"),
        ("flow_run_id", "run id with spaces", "invalid_value"),
    ],
)
def test_form_field_rejected(field: str, value: Any, reason: str) -> None:
    form = body("forms__submitted.json")
    form[field] = value
    with pytest.raises(PayloadRejected) as info:
        parse_forms(encode(form))
    assert info.value.reason == reason
    assert info.value.field is not None and info.value.field.startswith(field)


@pytest.mark.parametrize(
    "field", ["form_id", "form_name", "response_id", "responder", "submitted_at", "record", "answers"]
)
def test_form_required_fields(field: str) -> None:
    form = body("forms__submitted.json")
    del form[field]
    with pytest.raises(PayloadRejected) as info:
        parse_forms(encode(form))
    assert (info.value.reason, info.value.field) == ("missing_field", field)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda a: a["approval"].pop("name"), "approval.name"),
        (lambda a: a["approval"].update(name="not-a-guid"), "approval.name"),
        (lambda a: a["approval"].pop("title"), "approval.title"),
        (lambda a: a["approval"].pop("requestDate"), "approval.requestDate"),
        (lambda a: a["approval"].update(completionDate="2025-11-26T11:02:45"), "approval.completionDate"),
        (lambda a: a["approval"].update(responses=[]), "approval.responses"),
        (lambda a: a["approval"].update(responses={}), "approval.responses"),
        (lambda a: a.pop("approval"), "approval"),
        (lambda a: a.update(approval="{}"), "approval"),
        (lambda a: a.update(record={"object": "Opportunity; DROP", "id": "1"}), "record.object"),
        (lambda a: a["approval"]["responses"].__setitem__(0, "Approve"), "approval.responses[0]"),
        (
            lambda a: a["approval"]["responses"][0]["responder"].update(tenantId="contoso"),
            "approval.responses[0].responder.tenantId",
        ),
        (
            lambda a: a["approval"]["responses"][0]["responder"].update(userPrincipalName=None),
            "approval.responses[0].responder.userPrincipalName",
        ),
        (
            lambda a: a["approval"]["responses"][0]["responder"].update(email="jane"),
            "approval.responses[0].responder.email",
        ),
        (
            lambda a: a["approval"]["responses"][0].update(responseDate="2025-11-26T11:02:45"),
            "approval.responses[0].responseDate",
        ),
        (
            lambda a: a["approval"]["responses"][0].update(comments=["not", "text"]),
            "approval.responses[0].comments",
        ),
    ],
)
def test_approval_field_rejected(mutate: Any, field: str) -> None:
    approval = copy.deepcopy(body("approvals__stage1_approved.json"))
    mutate(approval)
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert info.value.field == field
    assert field in info.value.message


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("leader", "jane.doe", "invalid_email"),
        ("occurred_at", "2025-11-20T15:00:00", "naive_datetime"),
        ("id", "has spaces", "invalid_value"),
        ("id", "", "missing_field"),
        ("details", "text", "wrong_type"),
        ("details", {"blob": "x" * 20_000}, "too_long"),
        ("record", {"object": "Opportunity"}, "missing_field"),
        ("kind", 7, "wrong_type"),
    ],
)
def test_signal_field_rejected(field: str, value: Any, reason: str) -> None:
    signal = body("signals__training_attended.json")
    signal[field] = value
    with pytest.raises(PayloadRejected) as info:
        parse_signals(encode(signal))
    assert info.value.reason == reason
    assert info.value.field is not None and info.value.field.startswith(field)


def test_signal_without_details() -> None:
    signal = body("signals__training_attended.json")
    del signal["details"]
    assert only(parse_signals(encode(signal))).data["details"] == {}


def test_unknown_endpoint() -> None:
    with pytest.raises(ValueError):
        parse("dataverse", b"{}")  # type: ignore[arg-type]
