"""`record_touched`: the provenance rule's leader signal for a governed change a person made."""

from __future__ import annotations

from datetime import timedelta

import pytest

from plugin.events import Event, Fact, Outcome
from plugin.provenance.keys import SigningKey
from plugin.provenance.rule import Settings, provenance_rule
from plugin.rules import DictState, Rule
from tests.plugin.provenance.support import FLOW_USER, INTEGRATION, PERSON, RECORD, T0, changed, form

KEY = SigningKey.generate()
IMPORTER = "0055g00000ImportAA"
SETTINGS = Settings(
    governed={"Opportunity": ("Amount", "StageName")},
    integration_user=INTEGRATION,
    api_users=(FLOW_USER,),
    import_users=(IMPORTER,),
)


def run(rule: Rule, state: DictState, event: Event) -> Outcome:
    outcome = rule.apply(event, state, event.occurred_at + timedelta(seconds=3))
    state.values.update(outcome.state)
    return outcome


def touched(*events: Event) -> list[Fact]:
    """The record_touched facts of each event in turn, through one rule and state."""
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    return [f for e in events for f in run(rule, state, e).facts if f.kind == "record_touched"]


def test_a_change_made_in_the_crm_is_one_fact_about_its_actor() -> None:
    [fact] = touched(changed(0, delivery="04l-one", Amount="120000"))
    assert (fact.person, fact.key, fact.occurred_at) == (PERSON, "salesforce.outbound:04l-one", T0)
    assert fact.data == {"object": "Opportunity", "record_id": RECORD, "channel": "UI"}
    assert not fact.retracted


def test_a_person_saving_right_after_a_form_touched_the_record_too() -> None:
    [fact] = touched(form(0), changed(1, delivery="04l-two", Amount="5"))
    assert (fact.person, fact.data["channel"]) == (PERSON, "Form")


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([changed(0, actor=IMPORTER, Amount="5")], id="an import"),
        pytest.param([changed(0, actor=FLOW_USER, Amount="5")], id="an API user"),
        pytest.param([form(0), changed(1, actor=FLOW_USER, Amount="5")], id="a flow writing a form's values"),
        pytest.param([changed(0, actor=INTEGRATION, Amount="5")], id="OnRecord's own write"),
        pytest.param([changed(0, actor=None, Amount="5")], id="no actor"),
        pytest.param([changed(0, obj="Account", Amount="5")], id="not governed"),
    ],
)
def test_changes_no_person_made_are_not_counted(events: list[Event]) -> None:
    assert touched(*events) == []


def test_a_replay_or_the_same_values_again_is_not_counted_again() -> None:
    first = changed(0, delivery="04l-one", Amount="100")
    facts = touched(first, first, changed(1, delivery="04l-other", Amount="100"))
    assert [f.key for f in facts] == ["salesforce.outbound:04l-one"]


def test_a_form_reattributing_a_change_is_no_second_touch() -> None:
    # the change is signed as UI, then the late form response re-signs it as Form: one fact
    rule, state = provenance_rule(SETTINGS, KEY), DictState()
    signed = run(rule, state, changed(0, delivery="04l-one", Amount="100"))
    resigned = run(rule, state, form(1))
    assert resigned.writes[0].fields["OnRecord_Channel__c"] == "Form"  # re-signed, as Form
    assert [f.key for f in signed.facts] == ["salesforce.outbound:04l-one"] and resigned.facts == []
