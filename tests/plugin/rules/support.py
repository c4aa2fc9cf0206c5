"""Building blocks for approval-rule tests: a policy, a directory, and events as the connectors
produce them (the Power Automate forms/approvals parsers and the Salesforce change receivers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.salesforce.ids import to_18
from plugin.config import GovernedObject
from plugin.directory import Directory, Person
from plugin.events import Event, Outcome
from plugin.rules import DictState
from plugin.rules.approvals import Settings, judge_event, state_key

OBJ = "Budget_Request__c"
RECORD = to_18("a0B5g000003XyZa")
INTEGRATION_USER = to_18("0055g00000OnRec")
FLOW_USER = to_18("0055g00000FlowU")  # the approval flow's connection user (a status writer)
FORM_ID = "budget-request-form"
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

ALEX_ID = to_18("0055g00000AlexR")
JANE_ID = to_18("0055g00000JaneD")
ALEX = Person(ALEX_ID, "Alex Requester", ("alex@contoso.com",), (ALEX_ID,))
VERA = Person("vera", "Vera Strategy", ("vera@contoso.com",), (), ("Strategy Board",))
SAM = Person("sam", "Sam Strategy", ("sam@contoso.com",), (), ("Strategy Board",))
CASEY = Person("casey", "Casey Finance", ("casey@contoso.com",), (), ("Finance Approvers",))
JANE = Person(JANE_ID, "Jane Doe", ("jane@contoso.com",), (JANE_ID,))
DIRECTORY = Directory((ALEX, VERA, SAM, CASEY, JANE))


def policy(**overrides: Any) -> GovernedObject:
    values: dict[str, Any] = {
        "object": OBJ,
        "fields": ["Amount__c", "Status__c"],
        "approval_field": "Status__c",
        "approved_values": ["Approved"],
        "form_id": FORM_ID,
        "stages": [
            {"name": "business strategy", "approvers": ["Strategy Board"]},
            {"name": "finance", "approvers": ["Finance Approvers"]},
        ],
        "revert_to": "Submitted",
        "status_writers": [FLOW_USER],
        "grace_seconds": 600,
    }
    values.update(overrides)
    return GovernedObject.model_validate(values)


def settings(**overrides: Any) -> Settings:
    return Settings(policies={OBJ: policy(**overrides)}, integration_user=INTEGRATION_USER)


def form(
    at: datetime, *, responder: str = "alex@contoso.com", response_id: int = 1, record: str = RECORD
) -> Event:
    return Event(
        source="power_automate.forms",
        delivery_id=f"form:{FORM_ID}:{response_id}",
        kind="form.submitted",
        occurred_at=at,
        object=OBJ,
        record_id=record,
        actor=responder,
        data={
            "form_id": FORM_ID,
            "form_name": "Budget Request",
            "response_id": str(response_id),
            "responder": responder,
            "submitted_at": at.isoformat(),
            "answers": {},
        },
    )


def decision(
    at: datetime,
    stage: str,
    who: str,
    *,
    response: str = "Approve",
    approval: str = "0f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f",
    name: str | None = None,
    stage_number: int | None = None,
) -> Event:
    return Event(
        source="power_automate.approvals",
        delivery_id=f"approval:{approval}:{stage}:{who}",
        kind="approval.decided",
        occurred_at=at,
        object=OBJ,
        record_id=RECORD,
        actor=who,
        data={
            "stage": stage_number,
            "stage_name": stage,
            "outcome": response,
            "approver_response": response,
            "approval_name": approval,
            "responder": {"id": who, "display_name": name, "email": who, "upn": who},
        },
    )


def status_change(
    at: datetime, value: str = "Approved", *, actor: str = JANE.crm_ids[0], delivery: str | None = None
) -> Event:
    return Event(
        source="salesforce.outbound",
        delivery_id=delivery or f"04l5g0000{int(at.timestamp()) % 10**9:09d}",
        kind="record.changed",
        occurred_at=at,
        object=OBJ,
        record_id=RECORD,
        actor=actor,
        data={"fields": {"Id": RECORD, "Status__c": value, "LastModifiedById": actor}},
    )


def timer(at: datetime) -> Event:
    return Event(
        source="timer",
        delivery_id=f"t{at.timestamp()}",
        kind="timer.fired",
        occurred_at=at,
        data={"rule": "approvals", "object": OBJ, "record_id": RECORD},
        key=f"{OBJ}/{RECORD}",
    )


def proven_chain(start: datetime = T0) -> list[Event]:
    """A form, business strategy then finance approving: everything a proven chain needs."""
    return [
        form(start),
        decision(start + timedelta(minutes=5), "business strategy", "vera@contoso.com", name="Vera Strategy"),
        decision(start + timedelta(minutes=20), "finance", "casey@contoso.com", name="Casey Finance"),
    ]


class Run:
    """Applies events to the rule one at a time, like the worker, keeping state and outcomes."""

    def __init__(self, rule_settings: Settings | None = None, directory: Directory = DIRECTORY) -> None:
        self.settings = rule_settings or settings()
        self.directory = directory
        self.state = DictState()
        self.outcomes: list[Outcome] = []

    def apply(self, events: Iterable[Event], now: datetime) -> Run:
        for event in events:
            outcome = judge_event(event, self.state, now, self.settings, self.directory)
            self.state.values.update(outcome.state)
            self.outcomes.append(outcome)
        return self

    @property
    def record(self) -> dict[str, Any]:
        value: dict[str, Any] = self.state.get(state_key(OBJ, RECORD)) or {}
        return value

    @property
    def verdict(self) -> str | None:
        last = self.record.get("last")
        return None if last is None else str(last["verdict"])

    def writes(self, obj: str = OBJ) -> list[dict[str, Any]]:
        return [dict(w.fields) for o in self.outcomes for w in o.writes if w.object == obj]

    def record_fields(self) -> dict[str, Any]:
        """What the record would show after every write, in order."""
        merged: dict[str, Any] = {}
        for fields in self.writes():
            merged.update(fields)
        return merged

    def notifications(self, topic: str) -> list[dict[str, Any]]:
        return [dict(n.data) for o in self.outcomes for n in o.notifications if n.topic == topic]

    def facts(self, kind: str) -> dict[str, bool]:
        """kind's facts by key -> retracted, the last word on each."""
        found: dict[str, bool] = {}
        for o in self.outcomes:
            for f in o.facts:
                if f.kind == kind:
                    found[f.key] = f.retracted
        return found


def verdicts_of(changes: Sequence[dict[str, Any]]) -> list[str]:
    return [c["verdict"] for c in changes]
