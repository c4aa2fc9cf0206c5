"""What OnRecord writes into a CRM, defined once and CRM-neutrally; each CRM's provisioner renders it.

Three things: the fields OnRecord adds to every governed object (provenance and the approval
verdict), the violation object (an approval given off-system) and the leader-signal object (one
record per leader and period). The upserted objects carry a unique key field OnRecord writes by,
so a retry never duplicates a record.

Names: each field and object has one canonical name, the one rules write (`OnRecord_Approval__c`);
the outbox stores writes under it. Salesforce uses it as its API name. Other CRMs render it by
`physical_name` (Dataverse: the publisher prefix and the stem in lower case, `onr_approval`), so
rules, the outbox and the dry run are the same whatever the CRM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from plugin.config import ProvenanceConfig

FieldKind = Literal["text", "long_text", "number", "datetime", "date", "checkbox", "choice", "user"]

LEADER_SIGNAL = "OnRecord_Leader_Signal__c"
VIOLATION = "OnRecord_Violation__c"
KEY_FIELD = "OnRecord_Key__c"
CHANNELS = ("Form", "Flow", "UI", "API", "Import", "Unknown")
APPROVAL_STATES = ("Verified", "Pending", "Blocked")
LONG_TEXT = 32768

_CANONICAL = re.compile(r"^OnRecord_(?P<stem>[A-Za-z0-9_]+?)__c$")


@dataclass(frozen=True)
class ModelField:
    """One field OnRecord writes."""

    name: str  # canonical name (see the module docstring)
    label: str
    kind: FieldKind
    description: str
    length: int = 0  # text: maximum characters
    precision: int = 9  # number: total digits ...
    scale: int = 0  # ... of which after the point
    choices: tuple[str, ...] = ()  # choice: the allowed values, in order
    default: bool = False  # checkbox
    key: bool = False  # the unique key OnRecord upserts by (text, case-insensitive)


@dataclass(frozen=True)
class ModelObject:
    """An object (table) OnRecord creates and writes."""

    name: str
    label: str
    plural: str
    description: str
    fields: tuple[ModelField, ...]

    @property
    def key_field(self) -> ModelField:
        """The field OnRecord upserts by."""
        return next(f for f in self.fields if f.key)


def stem(canonical: str) -> str | None:
    """`Approval_Note` for `OnRecord_Approval_Note__c`; None for a name that is not OnRecord's."""
    match = _CANONICAL.match(canonical)
    return match.group("stem") if match else None


def physical_name(canonical: str, prefix: str) -> str:
    """A canonical name as a CRM with lower-case, publisher-prefixed names (Dataverse) spells it:
    `onr_approval_note`; names that are not OnRecord's (the governed object's own) unchanged."""
    found = stem(canonical)
    return f"{prefix}_{found.lower()}" if found else canonical


def _text(name: str, label: str, length: int, description: str, *, key: bool = False) -> ModelField:
    return ModelField(name, label, "text", description, length=length, key=key)


def _long_text(name: str, label: str, description: str) -> ModelField:
    return ModelField(name, label, "long_text", description, length=LONG_TEXT)


def _number(name: str, label: str, description: str, precision: int = 9, scale: int = 0) -> ModelField:
    return ModelField(name, label, "number", description, precision=precision, scale=scale)


def governed_fields(names: ProvenanceConfig | None = None) -> tuple[ModelField, ...]:
    """The provenance and approval fields OnRecord writes on each governed object (the provenance
    ones under the names configured in [provenance], so what is provisioned and written agree)."""
    names = names or ProvenanceConfig()
    return (
        ModelField(
            names.channel_field,
            "OnRecord Channel",
            "choice",
            "How the governed values were recorded.",
            choices=CHANNELS,
        ),
        _text(
            names.source_field, "OnRecord Source", 255, "The form response or flow run the values came from."
        ),
        ModelField(
            names.recorded_at_field, "OnRecord Recorded At", "datetime", "When OnRecord recorded the values."
        ),
        _text(names.digest_field, "OnRecord Digest", 100, "SHA-256 digest of the recorded values."),
        _long_text(
            names.signature_field, "OnRecord Signature", "OnRecord's signature over the digest (Ed25519)."
        ),
        ModelField(
            "OnRecord_Approval__c",
            "OnRecord Approval",
            "choice",
            "Whether the approval went through the form.",
            choices=APPROVAL_STATES,
        ),
        _long_text(
            "OnRecord_Approval_Note__c",
            "OnRecord Approval Note",
            "Why the approval is verified, pending or blocked.",
        ),
    )


LEADER_COUNTS: tuple[tuple[str, str, str], ...] = (
    ("OnRecord_Logins__c", "Interactive Logins", "Interactive logins in the period."),
    ("OnRecord_Form_Approvals__c", "Form Approvals", "Approvals given through the official form."),
    ("OnRecord_Records_Touched__c", "Records Touched", "Governed records the leader changed."),
    ("OnRecord_Trainings__c", "Trainings Attended", "Trainings attended in the period."),
    ("OnRecord_Citations__c", "CRM Citations", "CRM figures cited in meetings."),
    ("OnRecord_Off_System_Approvals__c", "Off-System Approvals", "Approvals attempted outside the form."),
    ("OnRecord_Report_Views__c", "Report Views", "CRM reports the leader opened in the period."),
    ("OnRecord_Dashboard_Views__c", "Dashboard Views", "CRM dashboards the leader opened in the period."),
)


def leader_signal_object() -> ModelObject:
    """Per leader and period: one count per signal kind, the score, the champion flag, the key."""
    return ModelObject(
        LEADER_SIGNAL,
        "Leader Signal",
        "Leader Signals",
        "How much a leader used the CRM in one period, and the published buy-in score.",
        (
            ModelField("OnRecord_Leader__c", "Leader", "user", "The leader these signals are about."),
            _text("OnRecord_Period__c", "Period", 20, "The period, e.g. 2025-03 or 2025-W11."),
            ModelField("OnRecord_Period_Start__c", "Period Start", "date", "First day of the period."),
            *(_number(name, label, description) for name, label, description in LEADER_COUNTS),
            _number(
                "OnRecord_Score__c", "Score", "The published buy-in score (0-100).", precision=5, scale=1
            ),
            _number(
                "OnRecord_Trend__c",
                "Trend",
                "The score's change since the period before.",
                precision=6,
                scale=1,
            ),
            _text(
                "OnRecord_Weights_Version__c",
                "Weights Version",
                40,
                "The weights the score was computed with.",
            ),
            ModelField(
                "OnRecord_Champion_Candidate__c",
                "Champion Candidate",
                "checkbox",
                "A system champion candidate.",
            ),
            _text(
                KEY_FIELD, "OnRecord Key", 100, "Leader user id and period: OnRecord upserts by it.", key=True
            ),
        ),
    )


def violation_object() -> ModelObject:
    """An approval given outside the form: which record, who, which rule, what was done, when."""
    return ModelObject(
        VIOLATION,
        "Violation",
        "Violations",
        "An approval given outside the official form, and what OnRecord did about it.",
        (
            _text("OnRecord_Object__c", "Object", 80, "API name of the record's object."),
            # 36: a Dataverse GUID; Salesforce ids are 18
            _text("OnRecord_Record_Id__c", "Record Id", 36, "Id of the record the violation is about."),
            ModelField("OnRecord_Actor__c", "Actor", "user", "The user who gave the approval."),
            _text("OnRecord_Rule__c", "Rule Broken", 255, "The rule the approval broke."),
            _text("OnRecord_Action__c", "Action Taken", 255, "What OnRecord did (reverted, flagged, ...)."),
            ModelField("OnRecord_Occurred_At__c", "Occurred At", "datetime", "When it happened."),
            _long_text("OnRecord_Detail__c", "Detail", "The evidence and the reason, in words."),
            _text(
                "OnRecord_Actor_Name__c",
                "Actor Name",
                255,
                "Who gave the approval, in words (the actor may not be a CRM user).",
            ),
            _text("OnRecord_Verdict__c", "Verdict", 20, "OnRecord's verdict on the approval."),
            _text(
                KEY_FIELD,
                "OnRecord Key",
                100,
                "Unique per violation: OnRecord upserts by it, so a retry never duplicates one.",
                key=True,
            ),
        ),
    )


def objects() -> tuple[ModelObject, ...]:
    """The objects OnRecord creates in every CRM."""
    return (violation_object(), leader_signal_object())


def field(obj: str, name: str, provenance: ProvenanceConfig | None = None) -> ModelField | None:
    """The model's definition of a field OnRecord writes on `obj` (a governed object when it is
    not one of OnRecord's own objects); None when OnRecord does not define it."""
    own = {o.name: o.fields for o in objects()}
    for candidate in own.get(obj, governed_fields(provenance)):
        if candidate.name == name:
            return candidate
    return None
