"""The leader-signals rule: what a person did that counts, as facts, one per source event.

Pure: (event, state, now) -> Outcome. It only produces facts (the worker stores each once per
kind and key, so a re-delivery never counts twice); aggregation into buy-in scores reads them.

- `login`: a `user.activity` (activity `login`) of the LoginHistory poller; person = the CRM
  user id.
- `report_view`, `dashboard_view`: a `user.activity` with that activity, from the Power Automate
  signals hook (person = the e-mail/UPN it names) or from Real-Time Event Monitoring through
  the events hook (person = the CRM user id).
- `training`: a `training.attended` (Power Automate signals hook; person = the e-mail/UPN); or a
  `record.changed` of a `CampaignMember` whose `CampaignId` is one of
  `leaders.training_campaigns` (15/18-character ids alike) and whose `Status` is "Attended"
  (person = the member's `Email`, else its `ContactId`, else its `LeadId`).
- `citation`: a `citation.made` (`POST /api/citations`, Power Automate); person = the leader's
  e-mail.

The key of a fact is the stable id of what produced it: `<source>:<delivery id>` (a re-delivery
carries the same delivery id), or a digest of it past the column's 255 characters. A campaign
member is the exception: its key is `CampaignMember:<18-character id>`, because one attendance
arrives as many changes (every later edit of the member, by outbound message and callout alike)
and must count once. A member whose status moves away from "Attended" (a correction) has its fact
retracted; state `signals:member:<id>` remembers what was counted and the latest change seen, so a
late older change never undoes a newer one.

Logins count only as the poller emits them (successful interactive logins: see
`connectors.salesforce.logins`); the rule checks the source and the login type again. No fact is
ever about OnRecord's integration user.

A campaign member is named by the e-mail address Salesforce keeps on it (or the Contact/Lead id):
it counts for a leader only if the people directory knows that e-mail (or id) as the leader's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from plugin import registry
from plugin.config import Config
from plugin.events import Event, Fact, Outcome
from plugin.identity import canonical_record_id
from plugin.provenance.channels import is_one_of
from plugin.rules import Rule, StateReader

RULE = "signals"
KINDS = frozenset({"user.activity", "training.attended", "citation.made", "record.changed"})
ACTIVITIES = frozenset({"login", "report_view", "dashboard_view"})  # user.activity data.activity
CAMPAIGN_MEMBER = "CampaignMember"
ATTENDED = "Attended"
MAX_KEY = 255  # facts.fact_key
MAX_PERSON = 255  # facts.person


def member_state_key(member_id: str) -> str:
    """State: what was counted for a training campaign member, and the latest change seen."""
    return f"signals:member:{member_id}"


@dataclass(frozen=True)
class Settings:
    """What the rule needs from the configuration."""

    integration_user: str = ""
    training_campaigns: tuple[str, ...] = ()
    own_users: tuple[str, ...] = ()  # every CRM's integration / application user
    # user.activity sources whose login_type values are a person's interactive login (per CRM)
    login_types: Mapping[str, frozenset[str]] = field(default_factory=registry.login_types)

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """The settings of a configuration."""
        return cls(
            training_campaigns=tuple(config.leaders.training_campaigns),
            integration_user=registry.primary_own_user(config),
            own_users=registry.own_users(config),
        )


def signals_rule(config: Config) -> Rule:
    """The rule for a configuration."""
    return signals_rule_for(Settings.from_config(config))


def signals_rule_for(settings: Settings) -> Rule:
    """The rule with explicit settings."""

    def apply(event: Event, state: StateReader, now: datetime) -> Outcome:
        return signal_facts(event, state, settings)

    def state_keys(event: Event) -> list[str]:
        if event.kind != "record.changed" or event.object != CAMPAIGN_MEMBER or not event.record_id:
            return []  # only a campaign member's attendance reads state
        return [member_state_key(canonical_record_id(event.record_id))]

    return Rule(name=RULE, kinds=KINDS, apply=apply, state_keys=state_keys)


def fact_key(source: str, delivery_id: str) -> str:
    """`<source>:<delivery id>`, or a stable digest of it when it would not fit the column."""
    key = f"{source}:{delivery_id}"
    if len(key) <= MAX_KEY:
        return key
    return f"{source[:64]}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def is_training_campaign(campaign_id: Any, campaigns: tuple[str, ...] | list[str]) -> bool:
    """Whether a CampaignMember's CampaignId is one of the training campaigns (15/18 characters)."""
    if not isinstance(campaign_id, str):
        return False
    key = registry.id_match_key(campaign_id)
    return key is not None and any(registry.id_match_key(c) == key for c in campaigns)


def signal_facts(event: Event, state: StateReader, settings: Settings) -> Outcome:
    """The facts one event gives (none for an event that is no signal)."""
    if event.kind == "record.changed":
        return _campaign_member(event, state, settings)
    found = _signal(event, settings)
    if found is None:
        return Outcome()
    kind, who, data = found
    person = _person(who)
    if person is None or _is_integration_user(person, settings):
        return Outcome()
    fact = Fact(
        kind=kind,
        key=fact_key(event.source, event.delivery_id),
        person=person,
        occurred_at=event.occurred_at,
        data={"source": event.source, **{k: v for k, v in data.items() if v is not None}},
    )
    return Outcome(facts=[fact])


def _signal(event: Event, settings: Settings) -> tuple[str, Any, dict[str, Any]] | None:
    """(fact kind, who, data) of an activity, training or citation event; None for anything else."""
    data = event.data
    if event.kind == "training.attended":
        return "training", event.actor, {"object": event.object, "record_id": event.record_id}
    if event.kind == "citation.made":
        who = data.get("leader") or event.actor
        details = {k: data.get(k) for k in ("citation", "field", "verified")}
        return "citation", who, {"object": event.object, "record_id": event.record_id, **details}
    if event.kind != "user.activity":
        return None
    activity = data.get("activity")
    if activity not in ACTIVITIES:
        return None
    if activity == "login":
        # Only the poller's logins, which are successful interactive ones; checked again here.
        if data.get("login_type") not in settings.login_types.get(event.source, ()):
            return None
        return (
            "login",
            event.actor,
            {"login_type": data.get("login_type"), "application": data.get("application")},
        )
    details = {k: data.get(k) for k in ("report_id", "dashboard_id", "event_identifier")}
    return str(activity), event.actor, {"object": event.object, "record_id": event.record_id, **details}


def _campaign_member(event: Event, state: StateReader, settings: Settings) -> Outcome:
    """A training campaign's member set to "Attended" counts once; set back, it is retracted."""
    if event.object != CAMPAIGN_MEMBER or not event.record_id or not settings.training_campaigns:
        return Outcome()
    fields: Mapping[str, Any] = event.data.get("fields") or {}
    campaign = fields.get("CampaignId")
    if not is_training_campaign(campaign, settings.training_campaigns) or "Status" not in fields:
        return Outcome()
    member = canonical_record_id(event.record_id)
    key = member_state_key(member)
    seen: dict[str, Any] = dict(state.get(key) or {})
    if seen and event.occurred_at < datetime.fromisoformat(seen["at"]):
        return Outcome()  # an older change, delivered late: the newer one stands
    attended = fields.get("Status") == ATTENDED
    counted = bool(seen.get("counted"))
    now_seen = {**seen, "at": event.occurred_at.isoformat()}
    outcome = Outcome()
    if attended and not counted:
        person = _member_person(fields)
        if person is None:
            return Outcome()
        now_seen.update(counted=True, person=person, counted_at=event.occurred_at.isoformat())
        outcome.facts.append(_training_fact(member, person, event.occurred_at, str(campaign), False))
    elif not attended and counted:
        now_seen["counted"] = False
        outcome.facts.append(
            _training_fact(
                member, seen["person"], datetime.fromisoformat(seen["counted_at"]), str(campaign), True
            )
        )
    elif not seen and not attended:
        return Outcome()  # nothing counted, nothing to remember
    outcome.state[key] = now_seen
    return outcome


def _training_fact(member: str, person: str, at: datetime, campaign: str, retracted: bool) -> Fact:
    return Fact(
        kind="training",
        key=f"{CAMPAIGN_MEMBER}:{member}",
        person=person,
        occurred_at=at,
        data={"source": "campaign_member", "campaign_id": campaign, "campaign_member_id": member},
        retracted=retracted,
    )


def _member_person(fields: Mapping[str, Any]) -> str | None:
    """The member's e-mail address, else its Contact or Lead id."""
    for name in ("Email", "ContactId", "LeadId"):
        person = _person(fields.get(name))
        if person is not None:
            return person
    return None


def _person(value: Any) -> str | None:
    """An identifier the directory resolves: e-mails in lower case, CRM ids in 18 characters."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if registry.canonical_id(value) is not None:
        value = canonical_record_id(value)
    elif "@" in value:
        value = value.lower()
    return value if len(value) <= MAX_PERSON else None


def _is_integration_user(person: str, settings: Settings) -> bool:
    return is_one_of(person, [u for u in (settings.integration_user, *settings.own_users) if u])


__all__ = [
    "KINDS",
    "RULE",
    "Settings",
    "fact_key",
    "is_training_campaign",
    "member_state_key",
    "signal_facts",
    "signals_rule",
    "signals_rule_for",
]
