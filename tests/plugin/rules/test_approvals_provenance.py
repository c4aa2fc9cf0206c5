"""The approvals rule and the provenance rule together, as the worker applies them: the value
OnRecord sets is signed with its proven chain; a form that arrives after the change it explains
re-attributes the change; people are named by name in what is signed and written."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from plugin.events import Event, Outcome
from plugin.provenance.dsse import open_envelope
from plugin.provenance.keys import SigningKey
from plugin.provenance.rule import Settings as ProvenanceSettings
from plugin.provenance.rule import provenance_rule
from plugin.rules import DictState, Rule
from plugin.rules.approvals import approvals_rule
from plugin.worker import Worker
from tests.plugin.rules.support import (
    DIRECTORY,
    FLOW_USER,
    JANE_ID,
    OBJ,
    T0,
    form,
    proven_chain,
    settings,
    status_change,
)

KEY = SigningKey.generate()


def rules() -> list[Rule]:
    approvals = settings()
    prov = ProvenanceSettings(
        governed={OBJ: ("Amount__c", "Status__c")}, integration_user=approvals.integration_user
    )
    return [approvals_rule(approvals, lambda: DIRECTORY), provenance_rule(prov, KEY, lambda: DIRECTORY)]


def apply(
    events: list[Event], state: DictState, now_after: timedelta = timedelta(seconds=5)
) -> list[Outcome]:
    worker = Worker.__new__(Worker)  # apply_rules only: no database
    worker.rules = rules()
    outcomes = []
    for event in events:
        for _, outcome in worker.apply_rules(event, state, event.occurred_at + now_after):
            state.values.update(outcome.state)
            outcomes.append(outcome)
    return outcomes


def statements(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    found = []
    for outcome in outcomes:
        for key, value in outcome.state.items():
            if key.startswith("provenance:pending:"):
                payload, _ = open_envelope(value["envelope"], {KEY.kid: KEY.public})
                found.append(json.loads(payload))
    return found


def test_the_approved_value_onrecord_sets_is_signed_with_its_proven_chain() -> None:
    state = DictState()
    outcomes = apply([status_change(T0 - timedelta(hours=1), "Submitted"), *proven_chain()], state)
    *_, approved = statements(outcomes)
    predicate = approved["predicate"]
    assert predicate["entity"]["values"]["Status__c"] == "Approved"
    assert predicate["channel"] == "Form"
    assert predicate["wasGeneratedBy"]["form"]["name"] == "Budget Request"
    assert predicate["wasAttributedTo"]["agentName"] == "OnRecord"
    assert predicate["wasAttributedTo"]["actedOnBehalfOfName"] == "Alex Requester"
    chain = predicate["approval"]
    assert chain["status"] == "proven"
    assert [(s["name"], s["approvers"]) for s in chain["stages"]] == [
        ("business strategy", ["vera@contoso.com"]),
        ("finance", ["casey@contoso.com"]),
    ]
    assert predicate["sequence"] == 2  # chained to the record's first statement


def test_a_person_is_named_by_name_in_the_statement_and_on_the_record() -> None:
    state = DictState()
    outcomes = apply([status_change(T0, "Submitted", actor=JANE_ID)], state)
    [statement] = statements(outcomes)
    assert statement["predicate"]["wasAttributedTo"] == {
        "agent": JANE_ID,
        "actedOnBehalfOf": None,
        "agentName": "Jane Doe",
    }
    written = [w.fields for o in outcomes for w in o.writes if "OnRecord_Source__c" in w.fields]
    assert written[-1]["OnRecord_Source__c"] == "Edited in the CRM by Jane Doe"


def test_a_form_arriving_after_its_change_reattributes_it_to_the_form() -> None:
    state = DictState()
    change = status_change(T0 + timedelta(minutes=1), "Submitted", actor=FLOW_USER)
    first = statements(apply([change], state))
    assert first[-1]["predicate"]["channel"] == "UI"
    late = apply([form(T0)], state, now_after=timedelta(minutes=3))  # submitted before, delivered after
    [again] = statements(late)
    assert again["predicate"]["channel"] == "Form"
    assert again["predicate"]["reattributed"] is True
    assert again["predicate"]["entity"]["values"] == first[-1]["predicate"]["entity"]["values"]
    assert again["predicate"]["wasRevisionOf"] is not None
    source = [
        w.fields["OnRecord_Source__c"] for o in late for w in o.writes if "OnRecord_Source__c" in w.fields
    ]
    assert source == ["Form 'Budget Request' response 1"]


def test_a_form_long_after_the_change_does_not_claim_it() -> None:
    state = DictState()
    apply([status_change(T0, "Submitted", actor=FLOW_USER)], state)
    assert statements(apply([form(T0 + timedelta(hours=1))], state)) == []
