"""The Power Automate body models (connectors/power_automate/models.py) keep the hand-written
validators' semantics where the existing payload tests do not look."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.power_automate.models import ApprovalDecision, FormSubmission, Signal
from connectors.power_automate.payloads import PayloadRejected, parse_approvals, parse_forms, parse_signals
from plugin.api_models import BodyRefused, validate

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "power_automate" / "fixtures"


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_submit_date_is_not_read_when_submitted_at_is_sent() -> None:
    form = body("forms__submitted.json")
    form["submitDate"] = "not a date at all"  # never read: submitted_at wins
    assert validate(FormSubmission, form).submission_time.year == 2025


def test_a_null_submitted_at_falls_back_to_submit_date() -> None:
    form = body("forms__connector_submit_date.json")
    form["submitted_at"] = None
    assert validate(FormSubmission, form).submission_time.year == 2024


@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_a_blank_flow_run_id_is_missing_as_before(value: str) -> None:
    form = body("forms__submitted.json")
    form["flow_run_id"] = value
    with pytest.raises(PayloadRejected) as info:
        parse_forms(encode(form))
    assert (info.value.reason, info.value.field) == ("missing_field", "flow_run_id")


def test_a_null_response_is_of_the_wrong_type_not_missing() -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["responses"][0] = None
    with pytest.raises(PayloadRejected) as info:
        parse_approvals(encode(approval))
    assert (info.value.reason, info.value.field) == ("wrong_type", "approval.responses[0]")


def test_blank_optional_texts_are_kept_as_sent() -> None:
    approval = body("approvals__stage1_approved.json")
    approval["approval"]["responses"][0]["comments"] = ""
    approval["approval"]["responses"][0]["responder"]["displayName"] = " "
    (event,) = parse_approvals(encode(approval)).events
    assert event.data["comments"] == "" and event.data["responder"]["display_name"] == " "


def test_an_unknown_kind_is_ignored_whatever_else_the_signal_holds() -> None:
    parsed = parse_signals(encode({"kind": "coffee.break", "leader": "not an address", "id": 7}))
    assert parsed.is_ignored and parsed.events == ()
    with pytest.raises(BodyRefused):
        validate(Signal, {"kind": "training", "leader": "not an address", "id": 7})


def test_strict_types_nothing_is_coerced() -> None:
    approval = body("approvals__stage1_approved.json")
    approval["stage"] = 2.0
    with pytest.raises(BodyRefused) as info:
        validate(ApprovalDecision, approval)
    assert (info.value.reason, info.value.field) == ("wrong_type", "stage")
