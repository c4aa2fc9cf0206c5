"""The provenance rule: each governed record change becomes a signed, chained statement.

Pure: (event, state, now) -> Outcome, with the signing key given at construction. Ed25519
signatures are deterministic (RFC 8032), so the rule stays a function of its inputs and is tested
without a database; the worker needs no change to sign. The rule

- remembers, per record, recent form responses and flow runs (`form.submitted`,
  `approval.decided`) to attribute later changes (see `channels`);
- for a `record.changed` of a governed object whose tracked values changed: classifies it, builds
  the in-toto statement, signs it into a DSSE envelope, chains it to the record's previous one,
  leaves it for the log (state key `provenance:pending:...`, sequenced by `log.integrate`), and
  writes channel, source, time, digest and envelope back to the record through the outbox;
  a change a person made (not an import, not an API or import user) is also a `record_touched`
  leader signal (a fact about the actor, one per change).

It ignores OnRecord's own writes: changes by the integration user, changes in which no tracked
field is present (only OnRecord_* fields, say), changes that leave the tracked values as they were,
and a change older than the one last recorded (an out-of-order re-delivery).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from plugin import json_codec, registry
from plugin.config import Config
from plugin.directory import Directory
from plugin.events import CrmWrite, Event, Fact, Outcome
from plugin.provenance.canonical import tracked_values, values_digest
from plugin.provenance.channels import Attribution, FormRef, classify, is_one_of
from plugin.provenance.dsse import sign_envelope
from plugin.provenance.keys import KeyStore, SigningKey
from plugin.provenance.statement import iso, payload_of, record_statement, statement_digest
from plugin.rules import Rule, StateReader
from plugin.rules.signals import fact_key

KINDS = frozenset({"record.changed", "form.submitted", "approval.decided"})
MAX_CONTEXT = 20  # form responses and flow runs remembered per record


def head_key(obj: str, record_id: str) -> str:
    """State: the record's last statement (sequence, digest, values, name, time)."""
    return f"provenance:head:{obj}/{record_id}"


def context_key(obj: str, record_id: str) -> str:
    """State: the record's recent form responses and flow runs."""
    return f"provenance:context:{obj}/{record_id}"


PENDING_PREFIX = "provenance:pending:"


def pending_key(obj: str, record_id: str, sequence: int) -> str:
    """State: a signed statement waiting to be sequenced into the log."""
    return f"{PENDING_PREFIX}{obj}/{record_id}:{sequence:010d}"


@dataclass(frozen=True)
class WriteFields:
    """The API names of the fields written on each governed record."""

    channel: str = "OnRecord_Channel__c"
    source: str = "OnRecord_Source__c"
    recorded_at: str = "OnRecord_Recorded_At__c"
    digest: str = "OnRecord_Digest__c"
    signature: str = "OnRecord_Signature__c"

    def names(self) -> frozenset[str]:
        """All of them."""
        return frozenset({self.channel, self.source, self.recorded_at, self.digest, self.signature})


@dataclass(frozen=True)
class Settings:
    """What the rule needs from the configuration."""

    governed: Mapping[str, tuple[str, ...]]  # object -> tracked fields
    integration_user: str = ""
    own_users: tuple[str, ...] = ()  # every CRM's integration / application user
    api_users: tuple[str, ...] = ()
    import_users: tuple[str, ...] = ()
    window: timedelta = timedelta(minutes=10)
    fields: WriteFields = WriteFields()

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """The settings of a configuration."""
        p = config.provenance
        fields = WriteFields(
            p.channel_field, p.source_field, p.recorded_at_field, p.digest_field, p.signature_field
        )
        own = fields.names()
        return cls(
            governed={
                g.object: tuple(f for f in g.fields if f not in own and not f.startswith("OnRecord_"))
                for g in config.governed
            },
            integration_user=registry.primary_own_user(config),
            own_users=registry.own_users(config),
            api_users=tuple(p.api_user_ids),
            import_users=tuple(p.import_user_ids),
            window=timedelta(seconds=p.form_window_seconds),
            fields=fields,
        )


def key_store(config: Config) -> KeyStore:
    """The configured key directory."""
    directory = config.provenance.key_dir or f"{config.var_dir}/keys"
    return KeyStore(directory, config.provenance.key_passphrase)


def provenance_rule(
    settings: Settings, key: SigningKey, directory: Callable[[], Directory] = Directory
) -> Rule:
    """The rule, signing with `key`; people are named through `directory`."""

    def apply(event: Event, state: StateReader, now: datetime) -> Outcome:
        people = directory()
        if event.kind == "record.changed":
            return record_changed(event, state, now, settings, key, people)
        outcome = remember_context(event, state, settings)
        if event.object and event.record_id and event.object in settings.governed:
            merged = _Overlay(state, outcome.state)
            signed = approval_set(event, merged, now, settings, key, people)
            if signed is None and event.kind == "form.submitted":
                signed = reattribute(event, merged, now, settings, key, people)
            if signed is not None:
                outcome.merge(signed)
        return outcome

    def state_keys(event: Event) -> list[str]:
        from plugin.rules.approvals import set_marker_key

        obj, record_id = event.object, event.record_id
        if not obj or not record_id or obj not in settings.governed:
            return []
        keys = [head_key(obj, record_id), context_key(obj, record_id)]
        if event.kind != "record.changed":
            keys.append(set_marker_key(obj, record_id))
        return keys

    return Rule(name="provenance", kinds=KINDS, apply=apply, state_keys=state_keys)


def provenance_rule_for(config: Config, directory: Callable[[], Directory] = Directory) -> Rule:
    """The rule for a configuration, with its active signing key (KeyStoreError if none)."""
    return provenance_rule(Settings.from_config(config), key_store(config).signing_key(), directory)


class _Overlay(StateReader):
    def __init__(self, base: StateReader, changes: Mapping[str, Any]) -> None:
        self._base, self._changes = base, changes

    def get(self, key: str) -> Any | None:
        return self._changes[key] if key in self._changes else self._base.get(key)


def remember_context(event: Event, state: StateReader, settings: Settings) -> Outcome:
    """Keep a governed record's form responses and flow runs, for attributing its changes."""
    if event.object is None or event.object not in settings.governed or not event.record_id:
        return Outcome()
    key = context_key(event.object, event.record_id)
    context = state.get(key) or {"forms": [], "flows": []}
    forms, flows = list(context["forms"]), list(context["flows"])
    run = event.data.get("flow_run_id")
    if event.kind == "form.submitted":
        forms.append(
            {
                "form_id": event.data.get("form_id"),
                "form_name": event.data.get("form_name"),
                "response_id": event.data.get("response_id"),
                "responder": event.data.get("responder"),
                "flow_run_id": run,
                "at": iso(event.occurred_at),
            }
        )
    if run:
        flows.append({"flow_run_id": run, "actor": event.actor, "at": iso(event.occurred_at)})
    return Outcome(state={key: {"forms": forms[-MAX_CONTEXT:], "flows": flows[-MAX_CONTEXT:]}})


def record_changed(
    event: Event,
    state: StateReader,
    now: datetime,
    settings: Settings,
    key: SigningKey,
    people: Directory | None = None,
) -> Outcome:
    """Sign, chain and write back one change of a governed record (or nothing, see the module)."""
    people = people or Directory()
    obj, record_id = event.object, event.record_id
    if obj is None or record_id is None or obj not in settings.governed:
        return Outcome()
    own = [u for u in (settings.integration_user, *settings.own_users) if u]
    if event.actor and is_one_of(event.actor, own):
        return Outcome()
    fields: Mapping[str, Any] = event.data.get("fields") or {}
    present = tracked_values(fields, list(settings.governed[obj]))
    if not present:
        return Outcome()
    head: dict[str, Any] | None = state.get(head_key(obj, record_id))
    if head is not None and event.occurred_at < datetime.fromisoformat(head["changed_at"]):
        return Outcome()
    values = {**(head["values"] if head else {}), **present}
    if head is not None and values == head["values"]:
        return Outcome()
    name = fields.get("Name") if isinstance(fields.get("Name"), str) else (head or {}).get("name")
    attribution = classify(
        event.occurred_at,
        event.actor,
        *_context(state, obj, record_id),
        api_users=settings.api_users,
        import_users=settings.import_users,
        window=settings.window,
    ).named(people.known_name)
    signed = _sign(
        obj,
        record_id,
        name,
        values,
        attribution,
        event.occurred_at,
        now,
        {"source": event.source, "deliveryId": event.delivery_id, "rawDigest": event.raw_digest},
        head,
        settings,
        key,
    )
    touched = record_touched(event, attribution, settings)
    if touched is not None:
        signed.facts.append(touched)
    return signed


def record_touched(event: Event, attribution: Attribution, settings: Settings) -> Fact | None:
    """The `record_touched` leader signal of a signed change a person made (about `event.actor`).

    Not for a change with no actor, an import (channel Import) or an integration (an actor among
    the API or import users, whatever the channel: a flow's connection user writing a form's
    values is no person); OnRecord's integration user never gets this far. One per change: keyed
    by the change's source and delivery id (a replay of the same values is not signed again)."""
    actor = event.actor
    if not actor or attribution.channel in ("Import", "Unknown"):
        return None
    if is_one_of(actor, settings.api_users) or is_one_of(actor, settings.import_users):
        return None
    return Fact(
        kind="record_touched",
        key=fact_key(event.source, event.delivery_id),
        person=actor,
        occurred_at=event.occurred_at,
        data={"object": event.object, "record_id": event.record_id, "channel": attribution.channel},
    )


def _context(
    state: StateReader, obj: str, record_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    context = state.get(context_key(obj, record_id)) or {"forms": [], "flows": []}
    return (
        [f | {"at": datetime.fromisoformat(f["at"])} for f in context["forms"]],
        [f | {"at": datetime.fromisoformat(f["at"])} for f in context["flows"]],
    )


def approval_set(
    event: Event, state: StateReader, now: datetime, settings: Settings, key: SigningKey, people: Directory
) -> Outcome | None:
    """Sign the approved value the approvals rule set for this event, with its proven chain."""
    from plugin.rules.approvals import set_marker_key

    obj, record_id = str(event.object), str(event.record_id)
    marker = state.get(set_marker_key(obj, record_id))
    if not marker or marker.get("delivery_id") != event.delivery_id:
        return None
    head: dict[str, Any] | None = state.get(head_key(obj, record_id))
    values = {**(head["values"] if head else {}), marker["field"]: marker["value"]}
    chain = marker["chain"]
    submission = chain.get("submission") or {}
    form = FormRef(
        str(submission.get("form_id")),
        str(submission.get("form_name")),
        str(submission.get("response_id")),
        submission.get("responder"),
    )
    attribution = Attribution(
        "Form",
        settings.integration_user or "OnRecord",
        form.responder,
        form,
        on_behalf_of_name=people.known_name(form.responder),
        actor_name="OnRecord",
    )
    return _sign(
        obj,
        record_id,
        (head or {}).get("name"),
        values,
        attribution,
        datetime.fromisoformat(marker["at"]),
        now,
        {"source": event.source, "deliveryId": event.delivery_id, "rawDigest": event.raw_digest},
        head,
        settings,
        key,
        approval=chain,
    )


def reattribute(
    event: Event, state: StateReader, now: datetime, settings: Settings, key: SigningKey, people: Directory
) -> Outcome | None:
    """A form response that arrives after the change it explains: the record's latest statement,
    signed as UI, API or Unknown, is superseded by one attributed to the form (same values)."""
    obj, record_id = str(event.object), str(event.record_id)
    head: dict[str, Any] | None = state.get(head_key(obj, record_id))
    if head is None or head.get("channel") not in ("UI", "API", "Unknown"):
        return None
    changed_at = datetime.fromisoformat(head["changed_at"])
    attribution = classify(
        changed_at,
        head.get("actor"),
        *_context(state, obj, record_id),
        api_users=settings.api_users,
        import_users=settings.import_users,
        window=settings.window,
    ).named(people.known_name)
    if attribution.channel != "Form":
        return None
    return _sign(
        obj,
        record_id,
        head.get("name"),
        head["values"],
        attribution,
        changed_at,
        now,
        {"source": event.source, "deliveryId": event.delivery_id, "rawDigest": event.raw_digest},
        head,
        settings,
        key,
        reattributed=True,
    )


def _sign(
    obj: str,
    record_id: str,
    name: str | None,
    values: dict[str, Any],
    attribution: Attribution,
    changed_at: datetime,
    now: datetime,
    source: dict[str, str],
    head: Mapping[str, Any] | None,
    settings: Settings,
    key: SigningKey,
    *,
    approval: Mapping[str, Any] | None = None,
    reattributed: bool = False,
) -> Outcome:
    """The signed statement of the record's values, chained to its head, and its write-back."""
    sequence = head["sequence"] + 1 if head else 1
    digest_of_values = values_digest(values)
    statement = record_statement(
        obj=obj,
        record_id=record_id,
        name=name,
        values=values,
        values_digest=digest_of_values,
        attribution=attribution,
        changed_at=changed_at,
        recorded_at=now,
        source=source,
        sequence=sequence,
        previous=head["digest"] if head else None,
        approval=approval,
        reattributed=reattributed,
    )
    payload = payload_of(statement)
    envelope = sign_envelope(payload, key)
    digest = statement_digest(payload)
    new_head = {
        "sequence": sequence,
        "digest": digest,
        "values": values,
        "name": name,
        "changed_at": changed_at.isoformat(),
        "channel": attribution.channel,
        "actor": attribution.actor,
    }
    pending = {
        "object": obj,
        "record_id": record_id,
        "sequence": sequence,
        "digest": digest,
        "envelope": envelope,
    }
    f = settings.fields
    write = CrmWrite(
        object=obj,
        record_id=record_id,
        fields={
            f.channel: attribution.channel,
            f.source: attribution.source_text(),
            f.recorded_at: iso(now),
            f.digest: f"sha256:{digest_of_values}",
            f.signature: json_codec.dumps(envelope),
        },
    )
    return Outcome(
        state={head_key(obj, record_id): new_head, pending_key(obj, record_id, sequence): pending},
        writes=[write],
    )
