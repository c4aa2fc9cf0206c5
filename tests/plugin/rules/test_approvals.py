"""The form-only approvals rule, without a database: one scenario per way an approval can go."""

from __future__ import annotations

from datetime import timedelta

import pytest

from plugin.rules.approvals import violation_key
from tests.plugin.rules.support import (
    ALEX_ID,
    FLOW_USER,
    INTEGRATION_USER,
    JANE_ID,
    OBJ,
    RECORD,
    T0,
    Run,
    decision,
    form,
    proven_chain,
    settings,
    status_change,
    timer,
)

AFTER = T0 + timedelta(minutes=30)  # the status change, ten minutes after finance approved
LATER = AFTER + timedelta(hours=1)  # well past every grace window


def test_a_proven_chain_makes_onrecord_set_the_approved_value_itself() -> None:
    run = Run().apply(proven_chain(), now=T0 + timedelta(minutes=21))
    fields = run.record_fields()
    assert fields["Status__c"] == "Approved"
    assert fields["OnRecord_Approval__c"] == "Verified"
    assert fields["OnRecord_Approval_Note__c"] == (
        "Form 'Budget Request' by Alex Requester on 26 Nov; business strategy: approved by Vera "
        "Strategy 09:05; finance: approved by Casey Finance 09:20 (UTC). Status set by OnRecord."
    )
    assert run.verdict == "Verified"
    assert run.notifications("approval.verified") and not run.notifications("approval.blocked")
    # the status change its own write causes is never judged
    run.apply([status_change(AFTER, actor=INTEGRATION_USER)], now=AFTER)
    assert run.writes()[-1]["Status__c"] == "Approved" and len(run.writes()) == 1


def test_the_flow_user_setting_approved_after_a_proven_chain_is_verified() -> None:
    run = Run(settings(set_status=False)).apply(proven_chain(), now=T0 + timedelta(minutes=21))
    assert run.writes() == []  # set_status off: OnRecord leaves setting it to the flow
    run.apply([status_change(AFTER, actor=FLOW_USER)], now=AFTER)
    assert run.verdict == "Verified"
    fields = run.record_fields()
    assert fields["OnRecord_Approval__c"] == "Verified" and "Status__c" not in fields


def test_a_hallway_approval_is_blocked_reverted_flagged_and_counted_against_its_actor() -> None:
    run = Run().apply([status_change(T0, "Submitted")], now=T0)
    run.apply([status_change(AFTER, delivery="04l-hallway")], now=LATER)
    assert run.verdict == "Blocked"
    fields = run.record_fields()
    assert fields["Status__c"] == "Submitted"  # reverted
    assert fields["OnRecord_Approval__c"] == "Blocked"
    assert fields["OnRecord_Approval_Note__c"] == (
        "set to Approved by Jane Doe in the CRM on 26 Nov 09:30, not through form "
        "'budget-request-form'; the form has no response for this record. (UTC)"
    )
    [violation] = [w for o in run.outcomes for w in o.writes if w.object == "OnRecord_Violation__c"]
    assert violation.external_id == violation_key(OBJ, RECORD, "04l-hallway")
    assert violation.fields["OnRecord_Actor__c"] == JANE_ID
    assert violation.fields["OnRecord_Action__c"] == "Reverted to Submitted"
    assert run.facts("off_system_approval") == {violation_key(OBJ, RECORD, "04l-hallway"): False}
    [blocked] = run.notifications("approval.blocked")
    assert blocked["actor_name"] == "Jane Doe" and blocked["verdict"] == "Blocked"


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        pytest.param(proven_chain()[:2], "stage 'finance' has no decision", id="missing stage"),
        pytest.param(
            [
                form(T0),
                decision(T0 + timedelta(minutes=5), "finance", "casey@contoso.com"),
                decision(T0 + timedelta(minutes=9), "business strategy", "vera@contoso.com"),
            ],
            "stage 'finance' was approved before stage 'business strategy' (wrong order)",
            id="wrong order",
        ),
        pytest.param(
            [
                form(T0),
                decision(T0 + timedelta(minutes=5), "business strategy", "vera@contoso.com"),
                decision(T0 + timedelta(minutes=9), "finance", "jane@contoso.com"),
            ],
            "stage 'finance' has no decision (Jane Doe is not an approver of this stage)",
            id="approver outside the stage's group",
        ),
        pytest.param(
            [
                form(T0, responder="vera@contoso.com"),
                decision(T0 + timedelta(minutes=5), "business strategy", "vera@contoso.com"),
                decision(T0 + timedelta(minutes=9), "finance", "casey@contoso.com"),
            ],
            "stage 'business strategy' has no decision (Vera Strategy approved their own request)",
            id="self-approval",
        ),
        pytest.param(
            [
                form(T0),
                decision(T0 + timedelta(minutes=5), "business strategy", "vera@contoso.com"),
                decision(T0 + timedelta(minutes=9), "finance", "casey@contoso.com", response="Reject"),
            ],
            "stage 'finance' was rejected (Casey Finance answered 'Reject')",
            id="rejected",
        ),
        pytest.param(
            [
                form(T0 - timedelta(days=40)),
                decision(T0 - timedelta(days=39), "business strategy", "vera@contoso.com"),
                decision(T0 - timedelta(days=38), "finance", "casey@contoso.com"),
            ],
            "the form response is older than 30 days",
            id="stale chain",
        ),
    ],
)
def test_an_unproven_chain_blocks_the_change(events: list, reason: str) -> None:
    run = Run(settings(set_status=False)).apply(events, now=T0)
    run.apply([status_change(AFTER)], now=LATER)
    assert run.verdict == "Blocked"
    assert run.record["changes"][-1]["reason"] == reason
    assert run.record_fields()["Status__c"] == "Submitted"


def test_the_requester_cannot_approve_a_stage_even_by_another_of_their_identifiers() -> None:
    # Alex submits with his e-mail; his approval arrives under his CRM user id: the same person.
    run = Run(settings(set_status=False, stages=[{"name": "finance", "approvers": ["alex@contoso.com"]}]))
    run.apply([form(T0), decision(T0 + timedelta(minutes=1), "finance", ALEX_ID)], now=T0)
    run.apply([status_change(AFTER)], now=LATER)
    assert run.verdict == "Blocked"


def test_everyone_must_approve_needs_every_approver_and_one_rejection_ends_it() -> None:
    everyone = settings(
        stages=[
            {"name": "business strategy", "approvers": ["Strategy Board"], "require": "everyone"},
            {"name": "finance", "approvers": ["Finance Approvers"]},
        ]
    )
    both = [
        form(T0),
        decision(T0 + timedelta(minutes=3), "business strategy", "vera@contoso.com"),
        decision(T0 + timedelta(minutes=4), "business strategy", "sam@contoso.com"),
        decision(T0 + timedelta(minutes=9), "finance", "casey@contoso.com"),
    ]
    assert Run(everyone).apply(both, now=T0 + timedelta(minutes=10)).verdict == "Verified"
    one_only = [e for e in both if e.actor != "sam@contoso.com"]
    run = Run(everyone).apply(one_only, now=T0 + timedelta(minutes=10))
    assert run.verdict is None  # not proven: nothing set
    run.apply([status_change(AFTER)], now=LATER)
    assert run.record["changes"][-1]["reason"] == (
        "stage 'business strategy' has no decision (waiting for Sam Strategy)"
    )
    rejects = [
        *one_only,
        decision(T0 + timedelta(minutes=4), "business strategy", "sam@contoso.com", response="Reject"),
    ]
    run = Run(everyone).apply(rejects, now=T0 + timedelta(minutes=10))
    run.apply([status_change(AFTER)], now=AFTER)  # a rejection is final: no grace wait
    assert run.verdict == "Blocked"


def test_a_custom_response_counts_only_when_the_policy_names_it() -> None:
    custom = [
        form(T0),
        decision(
            T0 + timedelta(minutes=5),
            "business strategy",
            "vera@contoso.com",
            response="Approve with conditions",
        ),
        decision(T0 + timedelta(minutes=9), "finance", "casey@contoso.com"),
    ]
    stages = [
        {
            "name": "business strategy",
            "approvers": ["Strategy Board"],
            "approve_responses": ["Approve with conditions"],
        },
        {"name": "finance", "approvers": ["Finance Approvers"]},
    ]
    assert Run(settings(stages=stages)).apply(custom, now=T0 + timedelta(minutes=10)).verdict == "Verified"
    run = Run(settings()).apply(custom, now=T0 + timedelta(minutes=10))
    run.apply([status_change(AFTER)], now=AFTER)
    assert run.verdict == "Blocked"  # not a yes under the default ["Approve"]: a no, final


def test_rejection_then_resubmission_starts_a_new_chain() -> None:
    first = [
        form(T0, response_id=1),
        decision(T0 + timedelta(minutes=5), "business strategy", "vera@contoso.com", approval="a1"),
        decision(T0 + timedelta(minutes=9), "finance", "casey@contoso.com", response="Reject", approval="a2"),
    ]
    run = Run().apply(first, now=T0 + timedelta(minutes=10))
    assert run.writes() == []
    again = T0 + timedelta(hours=2)
    second = [
        form(again, response_id=2),
        decision(again + timedelta(minutes=5), "business strategy", "vera@contoso.com", approval="b1"),
        decision(again + timedelta(minutes=9), "finance", "casey@contoso.com", approval="b2"),
    ]
    run.apply(second, now=again + timedelta(minutes=10))
    assert run.verdict == "Verified" and run.record_fields()["Status__c"] == "Approved"


def test_chain_events_late_inside_the_grace_window_turn_pending_into_verified() -> None:
    run = Run(settings(set_status=False)).apply(proven_chain()[:2], now=T0 + timedelta(minutes=6))
    run.apply([status_change(AFTER, actor=FLOW_USER)], now=AFTER)
    assert run.verdict == "Pending"
    assert run.record_fields()["OnRecord_Approval__c"] == "Pending"
    assert run.record_fields()["OnRecord_Approval_Note__c"] == (
        "set to Approved by 0055g00000FlowUAAR in the CRM on 26 Nov 09:30; waiting until 26 Nov "
        "09:40:00 UTC: stage 'finance' has no decision"
    )
    [timer_set] = [t for o in run.outcomes for t in o.timers]
    assert timer_set.due_at == AFTER + timedelta(seconds=600)
    run.apply(proven_chain()[2:], now=AFTER + timedelta(minutes=3))  # finance arrives late
    assert run.verdict == "Verified"
    run.apply([timer(timer_set.due_at)], now=timer_set.due_at)  # the deadline passes: nothing more
    assert run.verdict == "Verified" and "Status__c" not in run.record_fields()


def test_chain_events_after_the_grace_window_come_too_late_then_withdraw_the_violation() -> None:
    run = Run(settings(set_status=True)).apply(proven_chain()[:2], now=T0 + timedelta(minutes=6))
    run.apply([status_change(AFTER, actor=FLOW_USER, delivery="04l-flow")], now=AFTER)
    deadline = AFTER + timedelta(seconds=600)
    run.apply([timer(deadline)], now=deadline)
    assert run.verdict == "Blocked" and run.record_fields()["Status__c"] == "Submitted"
    key = violation_key(OBJ, RECORD, "04l-flow")
    assert run.facts("off_system_approval") == {key: False}
    # the finance decision (given before the change) is delivered an hour late: the chain is proven
    run.apply(proven_chain()[2:], now=LATER)
    assert run.verdict == "Verified"
    assert run.record_fields()["Status__c"] == "Approved"  # put back
    assert run.facts("off_system_approval") == {key: True}  # retracted
    last_violation = [w for o in run.outcomes for w in o.writes if w.object == "OnRecord_Violation__c"][-1]
    assert last_violation.fields["OnRecord_Verdict__c"] == "Withdrawn"


def test_a_15_character_id_and_its_18_character_form_are_one_requester() -> None:
    run = Run(settings(set_status=False, stages=[{"name": "finance", "approvers": [ALEX_ID[:15]]}]))
    run.apply(
        [form(T0, responder="casey@contoso.com"), decision(T0 + timedelta(minutes=1), "finance", ALEX_ID)],
        now=T0,
    )
    run.apply([status_change(AFTER)], now=LATER)
    assert run.verdict == "Verified"


def test_a_later_legitimate_change_is_not_overwritten_by_the_revert() -> None:
    run = Run().apply([status_change(T0, "Submitted")], now=T0)
    run.apply([status_change(AFTER)], now=AFTER)  # pending: inside the grace window
    run.apply([status_change(AFTER + timedelta(minutes=1), "Withdrawn")], now=AFTER + timedelta(minutes=1))
    deadline = AFTER + timedelta(seconds=600)
    run.apply([timer(deadline)], now=deadline)
    assert run.verdict == "Blocked"
    blocked = run.writes()[-1]
    assert "Status__c" not in blocked  # "Withdrawn" stands
    assert run.record["changes"][-1]["reverted"] is False


def test_replays_change_nothing() -> None:
    events = [status_change(T0, "Submitted"), *proven_chain(), status_change(AFTER, actor=FLOW_USER)]
    once = Run().apply(events, now=LATER)
    twice = Run().apply(events + events, now=LATER)
    assert once.record == twice.record
    assert once.record_fields() == twice.record_fields()


def test_a_record_first_seen_already_approved_is_the_baseline_not_a_violation() -> None:
    run = Run().apply([status_change(AFTER)], now=LATER)
    assert run.writes() == [] and run.verdict is None
    assert run.record["changes"][-1]["verdict"] == "Baseline"


def test_an_edit_of_another_field_of_an_approved_record_is_not_judged_again() -> None:
    run = Run().apply([status_change(T0, "Submitted"), *proven_chain()], now=T0 + timedelta(minutes=21))
    writes = len(run.writes())
    run.apply([status_change(AFTER, actor=JANE_ID)], now=LATER)  # Status__c still Approved
    assert len(run.writes()) == writes
