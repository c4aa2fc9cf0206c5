"""Normalised events and the values rules produce: the vocabulary shared by every part."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The normalised event kinds (docs/architecture.md). `timer.fired` is internal: a rule asked to be woken.
KINDS = frozenset(
    {
        "record.changed",
        "form.submitted",
        "approval.decided",
        "user.activity",
        "training.attended",
        "citation.made",
        "timer.fired",
    }
)


@dataclass(frozen=True)
class Event:
    """One normalised event, as a connector produces it and as the inbox stores it."""

    source: str  # the connector that received it: "salesforce.events", "salesforce.outbound", ...
    delivery_id: str  # unique per source: a re-delivery carries the same id
    kind: str  # one of KINDS
    occurred_at: datetime  # when it happened at the source (timezone-aware, UTC)
    object: str | None = None  # CRM object the event is about, if any
    record_id: str | None = None
    actor: str | None = None  # who caused it (CRM user id, e-mail, ...)
    data: Mapping[str, Any] = field(default_factory=dict)  # the kind's payload, JSON-serialisable
    sender: str = ""  # authenticated sender identity (org id, token name, app id)
    raw_digest: str = ""  # sha256 hex of the request body that carried it (evidence)
    inbox_id: int | None = None  # set once stored
    key: str | None = None  # explicit ordering key (timers); otherwise derived below

    @property
    def ordering_key(self) -> str:
        """Events with the same key are applied one at a time, in the order they occurred."""
        if self.key:
            return self.key
        if self.object and self.record_id:
            return f"{self.object}/{self.record_id}"
        if self.actor:
            return f"actor/{self.actor}"
        return f"{self.source}/{self.delivery_id}"

    def with_inbox_id(self, inbox_id: int) -> Event:
        """This event, as read back from the inbox."""
        return dataclasses.replace(self, inbox_id=inbox_id)


@dataclass(frozen=True)
class CrmWrite:
    """Set some fields on one CRM record: by record id (update) or by external id (upsert)."""

    object: str
    fields: Mapping[str, Any]
    record_id: str | None = None  # update by CRM id
    external_id_field: str | None = None  # upsert by this field ...
    external_id: str | None = None  # ... with this value
    # The CRM it goes to (an outbox row's target); None: the governed object's CRM, else crm.primary
    crm: str | None = None

    def __post_init__(self) -> None:
        by_id = self.record_id is not None
        by_ext = self.external_id_field is not None and self.external_id is not None
        if by_id == by_ext:
            raise ValueError("CrmWrite needs exactly one of record_id or external_id_field+external_id")

    @property
    def record_key(self) -> str:
        """What identifies the target record within its object."""
        if self.record_id is not None:
            return self.record_id
        return f"{self.external_id_field}={self.external_id}"


@dataclass(frozen=True)
class Notification:
    """Something subscribers (Power Automate webhook triggers) are told about."""

    topic: str  # "approval.blocked", "approval.verified", "leader.champion"
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Timer:
    """Wake the rule that asked, with `data`, at `due_at` (as a `timer.fired` event)."""

    key: str  # ordering key the timer event belongs to
    due_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fact:
    """Something a person did that counts (a leader signal): stored once per (kind, key).

    Rules only emit facts; aggregation reads them later. A fact emitted again with the same
    kind and key replaces the stored one (so a rule can retract it), never adds a second."""

    kind: str  # "off_system_approval", "form_approval", "login", ...
    key: str  # unique within the kind: what produced it (a change's delivery id, a response id)
    person: str  # who: an identifier the directory resolves (CRM user id, e-mail)
    occurred_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    retracted: bool = False  # the fact was withdrawn (e.g. a blocked approval proven late)


@dataclass
class Outcome:
    """What a rule decided for one event. State values of None delete the key."""

    state: dict[str, Any] = field(default_factory=dict)
    writes: list[CrmWrite] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        """Fold another rule's outcome for the same event into this one."""
        self.state.update(other.state)
        self.writes.extend(other.writes)
        self.notifications.extend(other.notifications)
        self.timers.extend(other.timers)
        self.facts.extend(other.facts)
