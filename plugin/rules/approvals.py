"""The form-only approvals rule: an approval counts only through the official form and its stages.

Pure: (event, state, now) -> Outcome; people are compared through a directory snapshot the worker
supplies. Per approval-governed record it keeps the facts (form responses, stage decisions), the
last status it saw, and every status change it judged (state key `approvals:<Object>/<Id>`).

- **Enforce at the door** (`set_status`): when a fact completes a proven chain for the record's
  latest form response, OnRecord sets the approved value itself, with `OnRecord_Approval__c` =
  Verified and the chain in words, and leaves a marker the provenance rule signs into the
  record's chain (`set_marker_key`).
- **Detect and revert** (always on): a change *to* an approved value that OnRecord did not make is
  judged by the chain as of that change: **Verified** when proven; **Pending** while incomplete and
  inside `grace_seconds` of the change (re-judged on every related event, and at the deadline by a
  timer); **Blocked** otherwise: the field is reverted to `revert_to` if it still holds that value
  as far as OnRecord knows, the record says why, an `OnRecord_Violation__c` is upserted by a key
  derived from the change (a replay never duplicates it), subscribers hear `approval.blocked`,
  and an `off_system_approval` fact about the actor is kept for the leader signals. A blocked
  change whose chain is proven late (delayed flow events) becomes Verified: the violation is
  marked withdrawn and the fact retracted.
- A change by OnRecord's integration user is never judged; neither is a change that leaves the
  status approved (an edit of another field), nor a record first seen already approved with no
  form or decision on record (approved before OnRecord governed it: taken as the baseline).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from plugin import metrics, registry
from plugin.config import Config, GovernedObject
from plugin.directory import Directory
from plugin.events import CrmWrite, Event, Fact, Notification, Outcome, Timer
from plugin.provenance.channels import is_one_of
from plugin.provenance.statement import iso
from plugin.rules import Rule, StateReader
from plugin.rules.chain import (
    ChainResult,
    decision_from_json,
    evaluate,
    submission_from_json,
)
from plugin.rules.notes import blocked_note, pending_note, verified_note

RULE = "approvals"
KINDS = frozenset({"record.changed", "form.submitted", "approval.decided", "timer.fired"})
MAX_SUBMISSIONS = 20
MAX_DECISIONS = 200
MAX_CHANGES = 20
STATUS_FIELD = "OnRecord_Approval__c"
NOTE_FIELD = "OnRecord_Approval_Note__c"
VIOLATION_OBJECT = "OnRecord_Violation__c"
KEY_FIELD = "OnRecord_Key__c"
ONRECORD = "onrecord"  # who set a status, when OnRecord did


def state_key(obj: str, record_id: str) -> str:
    """State: the record's approval facts, status and judged changes."""
    return f"approvals:{obj}/{record_id}"


def set_marker_key(obj: str, record_id: str) -> str:
    """State: the last approved value OnRecord set, for the provenance rule to sign."""
    return f"approvals:set:{obj}/{record_id}"


@dataclass(frozen=True)
class Settings:
    """What the rule needs from the configuration."""

    policies: Mapping[str, GovernedObject]  # object -> its approval policy
    integration_user: str = ""
    own_users: tuple[str, ...] = ()  # every CRM's integration / application user
    # The configuration version from the CRM the policies came from ("" : the file's): each
    # verdict names it, so "under which policy was this blocked?" has an answer on record.
    config_version: str = ""

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """The approval-governed objects of a configuration."""
        return cls(
            policies={g.object: g for g in config.governed if g.approval_field and g.stages},
            integration_user=registry.primary_own_user(config),
            own_users=registry.own_users(config),
            config_version=config.crm_version,
        )


def approvals_rule(settings: Settings, directory: Callable[[], Directory]) -> Rule:
    """The rule; `directory` gives the current snapshot of people."""

    def apply(event: Event, state: StateReader, now: datetime) -> Outcome:
        verdicts: list[tuple[str, str, float | None]] = []
        outcome = judge_event(event, state, now, settings, directory(), verdicts)
        for verdict, how, seconds in verdicts:  # observation only: the outcome is the same without
            metrics.APPROVAL_VERDICTS.labels(verdict, how).inc()
            if seconds is not None:
                metrics.APPROVAL_VERDICT_SECONDS.labels(verdict).observe(max(seconds, 0.0))
        return outcome

    def state_keys(event: Event) -> list[str]:
        governed = governed_record(event, settings)
        return [] if governed is None else [state_key(*governed)]

    return Rule(name=RULE, kinds=KINDS, apply=apply, state_keys=state_keys)


def governed_record(event: Event, settings: Settings) -> tuple[str, str] | None:
    """The approval-governed record an event is about (a timer names it in its data), or None."""
    obj, record_id = event.object, event.record_id
    if event.kind == "timer.fired":
        obj, record_id = event.data.get("object"), event.data.get("record_id")
    if not obj or not record_id or obj not in settings.policies:
        return None
    return str(obj), str(record_id)


def is_approved(policy: GovernedObject, value: Any) -> bool:
    """Whether a status value is one of the policy's approved values."""
    if policy.approval_field_type == "checkbox":
        return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))
    return isinstance(value, str) and value in policy.approved_values


def approved_value(policy: GovernedObject) -> Any:
    """The value OnRecord sets when a chain is proven."""
    return True if policy.approval_field_type == "checkbox" else policy.approved_values[0]


def revert_value(policy: GovernedObject) -> Any:
    """The value an unproven approval falls back to."""
    return False if policy.approval_field_type == "checkbox" else policy.revert_to


def judge_event(
    event: Event,
    state: StateReader,
    now: datetime,
    settings: Settings,
    directory: Directory,
    verdicts: list[tuple[str, str, float | None]] | None = None,
) -> Outcome:
    """Everything the rule does for one event; `verdicts` collects (verdict, how, seconds) given."""
    governed = governed_record(event, settings)
    if governed is None:
        return Outcome()
    obj, record_id = governed
    policy = settings.policies[obj]
    key = state_key(obj, record_id)
    record = _Record(obj, record_id, policy, dict(state.get(key) or {}), directory, now)
    record.config_version = settings.config_version
    record.verdicts = verdicts if verdicts is not None else []
    if event.kind == "form.submitted":
        record.add_submission(event)
    elif event.kind == "approval.decided":
        record.add_decision(event)
    elif event.kind == "record.changed":
        own = [u for u in (settings.integration_user, *settings.own_users) if u]
        if event.actor and is_one_of(event.actor, own):
            return Outcome()  # OnRecord's own write: never judged
        if not record.saw_change(event):
            return record.outcome(key)
    record.rejudge()
    if event.kind in ("form.submitted", "approval.decided"):
        record.try_set_status(event)
    return record.outcome(key)


class _Record:
    """One record's approval state while one event is applied to it."""

    def __init__(
        self,
        obj: str,
        record_id: str,
        policy: GovernedObject,
        value: dict[str, Any],
        directory: Directory,
        now: datetime,
    ) -> None:
        self.obj, self.record_id, self.policy = obj, record_id, policy
        self.directory, self.now = directory, now
        self.submissions: list[dict[str, Any]] = list(value.get("submissions", []))
        self.decisions: list[dict[str, Any]] = list(value.get("decisions", []))
        self.status: dict[str, Any] | None = value.get("status")
        self.changes: list[dict[str, Any]] = [dict(c) for c in value.get("changes", [])]
        self.applied: str | None = value.get("applied")
        self.last: dict[str, Any] | None = value.get("last")
        self.result = Outcome()
        self.marker: dict[str, Any] | None = None
        self.verdicts: list[tuple[str, str, float | None]] = []
        self.config_version = ""

    # -- facts -------------------------------------------------------------------------------

    def add_submission(self, event: Event) -> None:
        data = event.data
        entry = {
            "response_id": str(data.get("response_id")),
            "form_id": str(data.get("form_id")),
            "form_name": data.get("form_name"),
            "responder": data.get("responder") or event.actor,
            "at": event.occurred_at.isoformat(),
            "flow_run_id": data.get("flow_run_id"),
        }
        same = (entry["form_id"], entry["response_id"])
        if any((s["form_id"], s["response_id"]) == same for s in self.submissions):
            return
        self.submissions = sorted([*self.submissions, entry], key=lambda s: s["at"])[-MAX_SUBMISSIONS:]

    def add_decision(self, event: Event) -> None:
        data = event.data
        if any(d["id"] == event.delivery_id for d in self.decisions):
            return
        responder = data.get("responder") or {}
        entry = {
            "id": event.delivery_id,
            "stage_number": data.get("stage"),
            "stage_name": data.get("stage_name"),
            "responder": event.actor or responder.get("email") or responder.get("upn"),
            "responder_name": responder.get("display_name"),
            "response": data.get("approver_response"),
            "at": event.occurred_at.isoformat(),
            "approval": data.get("approval_name"),
        }
        self.decisions = sorted([*self.decisions, entry], key=lambda d: (d["at"], d["id"]))[-MAX_DECISIONS:]
        # Deciding a stage through the form is using the system, whatever the answer: a leader
        # signal (`form_approval`), counted once per response.
        self.result.facts.append(
            Fact(
                kind="form_approval",
                key=event.delivery_id,
                person=str(entry["responder"]),
                occurred_at=event.occurred_at,
                data={
                    "object": self.obj,
                    "record_id": self.record_id,
                    "stage": entry["stage_name"],
                    "response": entry["response"],
                },
            )
        )

    def saw_change(self, event: Event) -> bool:
        """Track the status; True when this change is one to judge (a new change to approved)."""
        fields: Mapping[str, Any] = event.data.get("fields") or {}
        field = self.policy.approval_field
        if field not in fields:
            return False
        value = fields[field]
        previous = self.status
        if previous is not None and event.occurred_at < datetime.fromisoformat(previous["at"]):
            # An older change, delivered late: the newer status stands; but a status that was not
            # approved before a baseline shows that baseline was a change to approved after all.
            if not is_approved(self.policy, value):
                self._unbaseline(lambda c: datetime.fromisoformat(c["at"]) > event.occurred_at)
            return False
        if any(c["id"] == event.delivery_id for c in self.changes):
            return False  # a replay
        self.status = {"value": value, "at": event.occurred_at.isoformat(), "by": event.actor}
        if not is_approved(self.policy, value):
            return False
        if previous is not None and is_approved(self.policy, previous["value"]):
            return False  # still approved: another field changed
        if previous is None and not self.submissions and not self.decisions:
            self._remember_change(event, value, "Baseline", "approved before OnRecord saw the record")
            return False
        self._remember_change(event, value, "New", "")
        return True

    def _remember_change(self, event: Event, value: Any, verdict: str, reason: str) -> None:
        change = {
            "id": event.delivery_id,
            "at": event.occurred_at.isoformat(),
            "actor": event.actor,
            "value": value,
            "verdict": verdict,
            "reason": reason,
            "deadline": (event.occurred_at + timedelta(seconds=self.policy.grace_seconds)).isoformat(),
            "received_at": self.now.isoformat(),
            "judged_at": None,
        }
        self.changes = [*self.changes, change][-MAX_CHANGES:]

    # -- judging -----------------------------------------------------------------------------

    def chain(self, at: datetime) -> ChainResult:
        return evaluate(
            self.policy,
            [submission_from_json(s) for s in self.submissions],
            [decision_from_json(d) for d in self.decisions],
            self.directory,
            at,
        )

    def _unbaseline(self, applies: Callable[[dict[str, Any]], bool]) -> None:
        """Baseline changes that turn out to be changes to approved become ones to judge."""
        for change in self.changes:
            if change["verdict"] == "Baseline" and applies(change):
                change.update(verdict="New", reason="")

    def rejudge(self) -> None:
        """Judge every change that is new, still pending, or blocked for want of a decision."""
        # A form response or decision from before a baseline change puts the record in the
        # approval process at that time: the change was an approval, to be judged.
        facts_at = [s["at"] for s in self.submissions] + [d["at"] for d in self.decisions]
        if facts_at:
            first = min(datetime.fromisoformat(a) for a in facts_at)
            self._unbaseline(lambda c: datetime.fromisoformat(c["at"]) >= first)
        for change in self.changes:
            if change["verdict"] in ("New", "Pending") or (
                change["verdict"] == "Blocked" and change.get("open", False)
            ):
                self._judge(change)

    def _judge(self, change: dict[str, Any]) -> None:
        at = datetime.fromisoformat(change["at"])
        deadline = datetime.fromisoformat(change["deadline"])
        result = self.chain(at)
        before = change["verdict"]
        if result.proven:
            self._verified(change, result, upgraded=before == "Blocked")
        elif result.status == "incomplete" and self.now < deadline:
            if before != "Pending":
                self._pending(change, result, deadline)
        elif before != "Blocked":
            self._blocked(change, result)

    def _pending(self, change: dict[str, Any], result: ChainResult, deadline: datetime) -> None:
        at = datetime.fromisoformat(change["at"])
        note = self._named(
            pending_note(change["value"], change["actor"], at, deadline, result, self.directory)
        )
        change.update(verdict="Pending", reason="; ".join(result.reasons), judged_at=self.now.isoformat())
        self._write_record({STATUS_FIELD: "Pending", NOTE_FIELD: note})
        self._settled("Pending", note, change)
        self.result.timers.append(
            Timer(
                key=f"{self.obj}/{self.record_id}",
                due_at=deadline,
                data={"object": self.obj, "record_id": self.record_id, "change": change["id"]},
            )
        )

    def _verified(self, change: dict[str, Any], result: ChainResult, *, upgraded: bool) -> None:
        note = self._named(verified_note(result, self.directory, set_by_onrecord=False))
        change.update(verdict="Verified", reason="", judged_at=self.now.isoformat(), open=False)
        fields: dict[str, Any] = {STATUS_FIELD: "Verified", NOTE_FIELD: note}
        if upgraded and change.get("reverted") and self.policy.set_status:
            fields[self.policy.approval_field] = change["value"]  # put back what was wrongly reverted
            self.status = {"value": change["value"], "at": self.now.isoformat(), "by": ONRECORD}
        self._write_record(fields)
        self._settled("Verified", note, change)
        if result.submission is not None:
            self.applied = result.submission.response_id
        if upgraded:
            self._violation(change, "Withdrawn: the approval chain arrived late and is proven", note)
            self.result.facts.append(self._off_system_fact(change, retracted=True))
        self.result.notifications.append(Notification("approval.verified", self._summary(change, note)))

    def _blocked(self, change: dict[str, Any], result: ChainResult) -> None:
        at = datetime.fromisoformat(change["at"])
        note = blocked_note(change["value"], change["actor"], at, self.policy.form_id, result, self.directory)
        if result.submission is not None:
            note = note.replace(f"form '{self.policy.form_id}'", f"form '{result.submission.form_name}'", 1)
        note = self._named(note)
        fields: dict[str, Any] = {STATUS_FIELD: "Blocked", NOTE_FIELD: note}
        still_there = self.status is not None and self.status.get("at") == change["at"]
        if still_there:
            fields[self.policy.approval_field] = revert_value(self.policy)
            self.status = {"value": revert_value(self.policy), "at": self.now.isoformat(), "by": ONRECORD}
        action = (
            f"Reverted to {revert_value(self.policy)}"
            if still_there
            else "Flagged (a later change already replaced the value)"
        )
        change.update(
            verdict="Blocked",
            reason="; ".join(result.reasons),
            judged_at=self.now.isoformat(),
            reverted=still_there,
            # a chain still missing decisions may be proven by late flow events: keep listening
            open=result.status == "incomplete",
        )
        self._write_record(fields)
        self._settled("Blocked", note, change)
        self._violation(change, action, note)
        self.result.facts.append(self._off_system_fact(change, retracted=False))
        self.result.notifications.append(Notification("approval.blocked", self._summary(change, note)))

    def try_set_status(self, event: Event) -> None:
        """Set the approved value when the latest form response's chain has just been proven."""
        result = self.chain(self.now)
        if not result.proven or result.submission is None or self.applied == result.submission.response_id:
            return
        self.applied = result.submission.response_id
        if self.status is not None and is_approved(self.policy, self.status["value"]):
            return  # already approved (a status writer set it and was judged above)
        if not self.policy.set_status:
            return
        value = approved_value(self.policy)
        note = self._named(verified_note(result, self.directory, set_by_onrecord=True))
        self.status = {"value": value, "at": self.now.isoformat(), "by": ONRECORD}
        self._write_record({self.policy.approval_field: value, STATUS_FIELD: "Verified", NOTE_FIELD: note})
        self._settled("Verified", note, None)
        self.marker = {
            "delivery_id": event.delivery_id,
            "field": self.policy.approval_field,
            "value": value,
            "chain": chain_json(result),
            "at": self.now.isoformat(),
        }
        self.result.notifications.append(
            Notification(
                "approval.verified",
                {"object": self.obj, "record_id": self.record_id, "verdict": "Verified", "note": note},
            )
        )

    def _named(self, note: str) -> str:
        """A note naming the CRM configuration version it was judged under (none: the file's)."""
        return f"{note} Policy version {self.config_version[:12]}." if self.config_version else note

    def _settled(self, verdict: str, note: str, change: dict[str, Any] | None) -> None:
        """Remember the record's current verdict, and observe it."""
        self.last = {
            "verdict": verdict,
            "note": note,
            "at": self.now.isoformat(),
            "change": None if change is None else change["id"],
        }
        if self.config_version:  # the policy version this verdict applied
            self.last["config_version"] = self.config_version
            if change is not None:
                change["config_version"] = self.config_version
        if change is None:
            self.verdicts.append((verdict, "set", None))
        else:
            waited = (self.now - datetime.fromisoformat(change["received_at"])).total_seconds()
            self.verdicts.append((verdict, "judged", None if verdict == "Pending" else waited))

    # -- outputs -----------------------------------------------------------------------------

    def _write_record(self, fields: dict[str, Any]) -> None:
        self.result.writes.append(CrmWrite(object=self.obj, record_id=self.record_id, fields=fields))

    def _violation(self, change: dict[str, Any], action: str, note: str) -> None:
        actor = change.get("actor")
        person = self.directory.find(actor)
        fields: dict[str, Any] = {
            "OnRecord_Object__c": self.obj,
            "OnRecord_Record_Id__c": self.record_id,
            "OnRecord_Actor_Name__c": self.directory.name_of(actor)[:255],
            "OnRecord_Rule__c": "Form-only approval"[:255],
            "OnRecord_Action__c": action[:255],
            "OnRecord_Occurred_At__c": iso(datetime.fromisoformat(change["at"])),
            "OnRecord_Detail__c": note,
            "OnRecord_Verdict__c": "Withdrawn" if action.startswith("Withdrawn") else "Blocked",
        }
        # a user id of the CRM the violation is written to (a person may be known in two CRMs)
        crm_id = registry.crm_user_id(self.policy.crm, list(person.crm_ids) if person else [str(actor or "")])
        if crm_id:
            fields["OnRecord_Actor__c"] = crm_id
        self.result.writes.append(
            CrmWrite(
                object=VIOLATION_OBJECT,
                fields=fields,
                external_id_field=KEY_FIELD,
                external_id=violation_key(self.obj, self.record_id, change["id"]),
                crm=self.policy.crm,  # the violation lives beside the record it is about
            )
        )

    def _off_system_fact(self, change: dict[str, Any], *, retracted: bool) -> Fact:
        return Fact(
            kind="off_system_approval",
            key=violation_key(self.obj, self.record_id, change["id"]),
            person=str(change.get("actor") or "unknown"),
            occurred_at=datetime.fromisoformat(change["at"]),
            data={"object": self.obj, "record_id": self.record_id, "reason": change.get("reason", "")},
            retracted=retracted,
        )

    def _summary(self, change: dict[str, Any], note: str) -> dict[str, Any]:
        return {
            "object": self.obj,
            "record_id": self.record_id,
            "verdict": change["verdict"],
            "actor": change.get("actor"),
            "actor_name": self.directory.name_of(change.get("actor")),
            "changed_at": change["at"],
            "value": change["value"],
            "reason": change.get("reason", ""),
            "note": note,
        }

    def outcome(self, key: str) -> Outcome:
        self.result.state[key] = {
            "submissions": self.submissions,
            "decisions": self.decisions,
            "status": self.status,
            "changes": self.changes,
            "applied": self.applied,
            "last": self.last,
        }
        if self.marker is not None:
            self.result.state[set_marker_key(self.obj, self.record_id)] = self.marker
        return self.result


def violation_key(obj: str, record_id: str, change_id: str) -> str:
    """The violation's external key: one per judged change, stable across replays (≤ 100 chars)."""
    digest = hashlib.sha256(f"{obj}/{record_id}/{change_id}".encode()).hexdigest()[:32]
    return f"{record_id[:40]}-{digest}"


def chain_json(result: ChainResult) -> dict[str, Any]:
    """A chain as JSON: for the API, the CLI and the provenance statement."""
    sub = result.submission
    return {
        "status": result.status,
        "reasons": list(result.reasons),
        "submission": None
        if sub is None
        else {
            "form_id": sub.form_id,
            "form_name": sub.form_name,
            "response_id": sub.response_id,
            "responder": sub.responder,
            "submitted_at": iso(sub.at),
        },
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "approved_at": iso(s.approved_at) if s.approved_at else None,
                "approvers": list(s.approvers),
                "problems": list(s.problems),
            }
            for s in result.stages
        ],
    }
