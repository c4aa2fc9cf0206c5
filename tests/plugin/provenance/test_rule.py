"""The provenance rule, pure: statements, chaining, write-back, and what it must ignore."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from plugin.events import Event, Outcome
from plugin.provenance.canonical import values_digest
from plugin.provenance.dsse import open_envelope
from plugin.provenance.keys import SigningKey
from plugin.provenance.rule import Settings, head_key, pending_key, provenance_rule
from plugin.provenance.statement import statement_digest
from plugin.rules import DictState, Rule

from .support import FLOW_USER, INTEGRATION, PERSON, RECORD, T0, changed, form

KEY = SigningKey.generate()
SETTINGS = Settings(
    governed={"Opportunity": ("Amount", "StageName")}, integration_user=INTEGRATION, api_users=(FLOW_USER,)
)


def run(rule: Rule, state: DictState, event: Event) -> Outcome:
    outcome = rule.apply(event, state, event.occurred_at + timedelta(seconds=3))
    state.values.update(outcome.state)
    return outcome


def statement_of(outcome: Outcome) -> dict:
    pending = next(v for k, v in outcome.state.items() if k.startswith("provenance:pending:"))
    payload, _ = open_envelope(pending["envelope"], {KEY.kid: KEY.public})
    return json.loads(payload)


def test_a_governed_change_is_signed_and_written_back_on_the_record() -> None:
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    outcome = run(rule, state, changed(Amount="120000.00", StageName="Proposal"))
    statement = statement_of(outcome)
    values = {"Amount": 120000, "StageName": "Proposal"}
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [
        {"name": f"Opportunity/{RECORD}", "digest": {"sha256": values_digest(values)}}
    ]
    predicate = statement["predicate"]
    assert predicate["entity"] == {
        "object": "Opportunity",
        "id": RECORD,
        "name": "Acme renewal",
        "values": values,
    }
    assert predicate["channel"] == "UI" and predicate["wasAttributedTo"]["agent"] == PERSON
    assert predicate["generatedAtTime"] == "2026-11-26T10:00:00.000Z"
    assert predicate["recordedAt"] == "2026-11-26T10:00:03.000Z"
    assert (predicate["sequence"], predicate["wasRevisionOf"]) == (1, None)
    [write] = outcome.writes
    assert (write.object, write.record_id) == ("Opportunity", RECORD)
    assert write.fields["OnRecord_Channel__c"] == "UI"
    assert write.fields["OnRecord_Source__c"] == f"Edited in the CRM by {PERSON}"
    assert write.fields["OnRecord_Recorded_At__c"] == "2026-11-26T10:00:03.000Z"
    assert write.fields["OnRecord_Digest__c"] == "sha256:" + values_digest(values)
    envelope = json.loads(write.fields["OnRecord_Signature__c"])  # the record carries its own proof
    assert open_envelope(envelope, {KEY.kid: KEY.public})[1] == KEY.kid


def test_each_change_links_to_the_previous_statement_of_the_record() -> None:
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    first = statement_of(run(rule, state, changed(0, Amount="100")))
    second_outcome = run(rule, state, changed(5, Amount="120000"))
    second = statement_of(second_outcome)
    head = state.get(head_key("Opportunity", RECORD))
    first_digest = state.get(pending_key("Opportunity", RECORD, 1))["digest"]
    assert second["predicate"]["sequence"] == 2
    assert second["predicate"]["wasRevisionOf"] == {"sha256": first_digest}
    assert second["predicate"]["entity"]["values"] == {"Amount": 120000}
    assert first["predicate"]["entity"]["values"] == {"Amount": 100}
    assert head["digest"] == state.get(pending_key("Opportunity", RECORD, 2))["digest"]
    payload, _ = open_envelope(
        state.get(pending_key("Opportunity", RECORD, 1))["envelope"], {KEY.kid: KEY.public}
    )
    assert statement_digest(payload) == first_digest


def test_a_change_after_a_form_response_is_attributed_to_the_form() -> None:
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    run(rule, state, form(0))
    outcome = run(rule, state, changed(1, actor=FLOW_USER, Amount="120000"))
    predicate = statement_of(outcome)["predicate"]
    assert predicate["channel"] == "Form"
    assert predicate["wasGeneratedBy"] == {
        "form": {"id": "f1", "name": "Budget Request", "responseId": "123"},
        "flowRunId": "08585371812345",
    }
    assert predicate["wasAttributedTo"] == {"agent": FLOW_USER, "actedOnBehalfOf": "ann@contoso.com"}
    source = outcome.writes[0].fields["OnRecord_Source__c"]
    assert source == "Form 'Budget Request' response 123 · flow run 08585371812345"


@pytest.mark.parametrize(
    "event",
    [
        changed(1, Amount="100.0"),  # the same value again (a re-sent message, another field)
        changed(1, OnRecord_Channel__c="UI", OnRecord_Digest__c="sha256:00"),  # only OnRecord's fields
        changed(1, actor=INTEGRATION, Amount="5"),  # OnRecord's own write
        changed(-1, Amount="5"),  # older than what is recorded: an out-of-order re-delivery
        changed(1, obj="Account", Amount="5"),  # not governed
    ],
    ids=["same values", "only OnRecord fields", "integration user", "stale", "not governed"],
)
def test_changes_that_are_not_new_produce_no_statement(event: Event) -> None:
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    run(rule, state, changed(0, Amount="100"))
    before = dict(state.values)
    outcome = run(rule, state, event)
    assert outcome.writes == [] and outcome.state == {}
    assert state.values == before


def test_the_rule_is_deterministic() -> None:
    # Ed25519 is deterministic: the same inputs sign to the same bytes (a replay is identical).
    a = run(provenance_rule(SETTINGS, KEY), DictState(), changed(Amount="1"))
    b = run(provenance_rule(SETTINGS, KEY), DictState(), changed(Amount="1"))
    assert a == b and T0 is not None
