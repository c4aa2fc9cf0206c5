"""Channel classification over a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plugin.provenance.channels import Attribution, classify

T = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
PERSON = "0055g00000PersonAA"
API_USER = "0055g00000ApiUsrAA"
IMPORT_USER = "0055g00000ImportAA"
FORM = {
    "form_id": "f1",
    "form_name": "Budget Request",
    "response_id": "123",
    "responder": "ann@contoso.com",
    "flow_run_id": "08585",
}
FLOW = {"flow_run_id": "08599", "actor": "cfo@contoso.com"}


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


CASES: list[tuple[str, str | None, list[dict[str, Any]], list[dict[str, Any]], str]] = [
    # name, actor, forms, flows, expected channel
    ("form five minutes before", API_USER, [FORM | {"at": at(-5)}], [], "Form"),
    ("form a minute after (flow reports late)", PERSON, [FORM | {"at": at(1)}], [], "Form"),
    ("form too long before", PERSON, [FORM | {"at": at(-11)}], [], "UI"),
    ("form too long after", PERSON, [FORM | {"at": at(3)}], [], "UI"),
    ("flow run within the window", API_USER, [], [FLOW | {"at": at(-2)}], "Flow"),
    ("form wins over flow", PERSON, [FORM | {"at": at(-2)}], [FLOW | {"at": at(-1)}], "Form"),
    ("API user, nothing correlates", API_USER, [], [], "API"),
    ("API user, 18-char id given as 15", API_USER[:15], [], [], "API"),
    ("import user, even with a form", IMPORT_USER, [FORM | {"at": at(-1)}], [], "Import"),
    ("a person in the CRM", PERSON, [], [], "UI"),
    ("no actor at all", None, [], [], "Unknown"),
]


@pytest.mark.parametrize(("name", "actor", "forms", "flows", "channel"), CASES, ids=[c[0] for c in CASES])
def test_channel_of_a_change(
    name: str, actor: str | None, forms: list[dict[str, Any]], flows: list[dict[str, Any]], channel: str
) -> None:
    got = classify(T, actor, forms, flows, api_users=[API_USER], import_users=[IMPORT_USER])
    assert got.channel == channel


def test_the_latest_form_in_the_window_is_the_source_with_its_responder_and_run() -> None:
    older = FORM | {"response_id": "122", "at": at(-8)}
    newer = FORM | {"response_id": "123", "at": at(-1)}
    got = classify(T, API_USER, [newer, older], [])
    assert got.form is not None and got.form.response_id == "123"
    assert (got.on_behalf_of, got.flow_run_id, got.actor) == ("ann@contoso.com", "08585", API_USER)
    assert got.source_text() == "Form 'Budget Request' response 123 · flow run 08585"


@pytest.mark.parametrize(
    ("attribution", "text"),
    [
        (Attribution("Flow", API_USER, flow_run_id="08599"), "Flow run 08599"),
        (Attribution("API", API_USER), f"API user {API_USER}"),
        (Attribution("Import", IMPORT_USER), f"Import by {IMPORT_USER}"),
        (Attribution("UI", PERSON), f"Edited in the CRM by {PERSON}"),
        (Attribution("Unknown", None), "Unknown source"),
    ],
)
def test_source_text_names_where_the_values_came_from(attribution: Attribution, text: str) -> None:
    assert attribution.source_text() == text


def test_source_text_fits_a_salesforce_text_field() -> None:
    long = Attribution("Flow", None, flow_run_id="0" * 400)
    assert len(long.source_text()) == 255 and long.source_text().endswith("…")
