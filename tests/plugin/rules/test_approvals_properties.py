"""Properties of the approvals rule that must hold whatever order or duplication Power Automate
and Salesforce deliver in: the verdict is a function of what happened, not of how it arrived."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.events import Event
from tests.plugin.rules.support import FLOW_USER, T0, Run, proven_chain, status_change, timer

CHANGE_AT = T0 + timedelta(minutes=30)
DELIVERED = CHANGE_AT + timedelta(minutes=1)  # everything is delivered inside the grace window
DEADLINE = CHANGE_AT + timedelta(seconds=600)


def scenario() -> list[Event]:
    return [
        status_change(T0 - timedelta(minutes=1), "Submitted"),
        *proven_chain(),
        status_change(CHANGE_AT, actor=FLOW_USER),
    ]


def settle(events: list[Event], set_status: bool) -> Run:
    from tests.plugin.rules.support import settings as rule_settings

    run = Run(rule_settings(set_status=set_status)).apply(events, now=DELIVERED)
    return run.apply([timer(DEADLINE)], now=DEADLINE)


def _corrupt(event: Event, how: str) -> Event:
    data: dict[str, Any] = dict(event.data)
    if event.kind == "form.submitted":
        data["form_id"] = "some-other-form"
        return dataclasses.replace(event, data=data)
    if how == "reject":
        data["approver_response"] = "Reject"
        return dataclasses.replace(event, data=data)
    if how == "outsider":
        return dataclasses.replace(event, actor="mallory@contoso.com", data=data | {"responder": {}})
    data["stage_name"] = "procurement"  # a stage the policy does not have
    return dataclasses.replace(event, data=data)


@settings(max_examples=150, deadline=None)
@given(order=st.permutations(range(5)), set_status=st.booleans())
def test_any_order_of_a_proven_chain_is_verified(order: list[int], set_status: bool) -> None:
    events = scenario()
    run = settle([events[i] for i in order], set_status)
    assert run.verdict == "Verified"
    assert run.record_fields()["OnRecord_Approval__c"] == "Verified"
    assert not any(not retracted for retracted in run.facts("off_system_approval").values())


@settings(max_examples=150, deadline=None)
@given(
    order=st.permutations(range(4)),
    victim=st.integers(min_value=1, max_value=3),
    how=st.sampled_from(["drop", "reject", "outsider", "stage"]),
    set_status=st.booleans(),
)
def test_dropping_or_corrupting_any_chain_event_blocks(
    order: list[int], victim: int, how: str, set_status: bool
) -> None:
    events = scenario()
    kept = (
        [e for i, e in enumerate(events) if i != victim]
        if how == "drop"
        else [_corrupt(e, how) if i == victim else e for i, e in enumerate(events)]
    )
    shuffled = [kept[i] for i in order if i < len(kept)] + ([kept[4]] if len(kept) == 5 else [])
    run = settle(shuffled, set_status)
    assert run.verdict == "Blocked"
    assert run.record_fields()["Status__c"] == "Submitted"
    assert list(run.facts("off_system_approval").values()) == [False]


@settings(max_examples=100, deadline=None)
@given(
    order=st.permutations(range(10)), drop=st.integers(min_value=-1, max_value=4), set_status=st.booleans()
)
def test_delivering_everything_twice_changes_nothing(order: list[int], drop: int, set_status: bool) -> None:
    events = [e for i, e in enumerate(scenario()) if i != drop]  # drop -1: the whole chain
    doubled = [events[i % len(events)] for i in order if i < 2 * len(events)]
    first: dict[str, Event] = {}
    for event in doubled:
        first.setdefault(event.delivery_id, event)
    once = list(first.values())  # each event at its first arrival
    single, double = settle(once, set_status), settle(doubled, set_status)
    assert single.record == double.record
    assert single.record_fields() == double.record_fields()
    assert single.facts("off_system_approval") == double.facts("off_system_approval")
