"""A rule with a visible effect, for pipeline tests: it counts what it was applied to."""

from __future__ import annotations

from datetime import datetime

from plugin.config import Config
from plugin.events import CrmWrite, Event, Outcome
from plugin.rules import Rule, StateReader


def count_changes(event: Event, state: StateReader, now: datetime) -> Outcome:
    """Per record: how many changes were applied, which deliveries, in which order."""
    key = f"count:{event.ordering_key}"
    current = state.get(key) or {"n": 0, "deliveries": [], "occurred": []}
    if event.data.get("fields", {}).get("Explode__c"):
        raise RuntimeError("this event makes the rule fail")
    n = current["n"] + 1
    new = {
        "n": n,
        "deliveries": [*current["deliveries"], event.delivery_id],
        "occurred": [*current["occurred"], event.occurred_at.isoformat()],
    }
    write = CrmWrite(
        object=event.object or "Unknown",
        record_id=event.record_id,
        fields={"Count__c": n, "Last_Delivery__c": event.delivery_id},
    )
    return Outcome(state={key: new}, writes=[write])


def counting_rules(config: Config) -> list[Rule]:
    """The test rule set."""
    return [Rule(name="count", kinds=frozenset({"record.changed"}), apply=count_changes)]
