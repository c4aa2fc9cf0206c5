"""The Salesforce metadata OnRecord needs, as a Metadata API package (mdapi format), and its deploy.

    package.xml
    objects/<Governed>.object                    the OnRecord_* fields (+ the approval rule)
    objects/OnRecord_Leader_Signal__c.object     per leader and period: counts, score, champion
    objects/OnRecord_Violation__c.object         approvals given off-system, and what was done
    objects/OnRecord_Config_Status__c.object     what OnRecord made of each custom metadata record
    objects/OnRecord_Governed__mdt.object        custom metadata types: admins configure OnRecord
    objects/OnRecord_Approval_Stage__mdt.object    in Setup (governed objects, their approval
    objects/OnRecord_Leader__mdt.object            stages, leaders, the score's settings), read
    objects/OnRecord_Setting__mdt.object           with [crm_config] enabled
    permissionsets/OnRecord_Integration.permissionset   edit access for the integration user
    permissionsets/OnRecord_Viewer.permissionset        read access for everyone else
    reportTypes/OnRecord_Leader_Signals.reportType      a custom report type over the leader signals
    reports/OnRecord-meta.xml                           the report folder (ReportFolder)
    reports/OnRecord/OnRecord_Leader_Buy_In.report      score and counts per period and leader
    dashboards/OnRecord-meta.xml                        the dashboard folder (DashboardFolder)
    dashboards/OnRecord/OnRecord_Leader_Buy_In.dashboard  "Leader Buy-In": the report's scores, charted

Element names and their order follow the Metadata API schema (CustomObject, CustomField,
ValidationRule, PermissionSet, ReportType, Report, Dashboard, ReportFolder, DashboardFolder,
Package in http://soap.sforce.com/2006/04/metadata); a governed standard or custom object is
extended field by field (package.xml lists CustomField and ValidationRule members), the new
objects are whole CustomObjects, and so are the custom metadata types (CustomObjects named __mdt,
visibility Public, no name field or sharing). Reports and dashboards live in folders: package.xml lists the
folder and the folder/name under Report and Dashboard. The zip has package.xml at its root, as
simple-salesforce's deploy (singlePackage) sends it.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lxml import etree

from connectors.salesforce.auth import jwt_audience
from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.ids import is_salesforce_id, to_18
from plugin.config import SIGNAL_KINDS, Config, GovernedObject, ProvenanceConfig

NS = "http://soap.sforce.com/2006/04/metadata"
LEADER_SIGNAL = "OnRecord_Leader_Signal__c"
VIOLATION = "OnRecord_Violation__c"
KEY_FIELD = "OnRecord_Key__c"
APPROVAL_RULE = "OnRecord_Approval_Only_Through_OnRecord"
REPORT_TYPE = "OnRecord_Leader_Signals"
ANALYTICS_FOLDER = "OnRecord"  # the report folder and the dashboard folder
BUY_IN = "OnRecord_Leader_Buy_In"  # the report and the dashboard, each in its folder
INTEGRATION_PERMISSION_SET = "OnRecord_Integration"
VIEWER_PERMISSION_SET = "OnRecord_Viewer"
# Custom metadata types: admins configure OnRecord in Setup (not read by OnRecord yet).
GOVERNED_MDT = "OnRecord_Governed__mdt"
APPROVAL_STAGE_MDT = "OnRecord_Approval_Stage__mdt"
LEADER_MDT = "OnRecord_Leader__mdt"
SETTING_MDT = "OnRecord_Setting__mdt"
METADATA_TYPES = (GOVERNED_MDT, APPROVAL_STAGE_MDT, LEADER_MDT, SETTING_MDT)
CONFIG_STATUS = "OnRecord_Config_Status__c"  # data: what OnRecord made of each metadata record
CONFIG_STATES = ("OK", "Problem")
PERIODS = ("week", "day")
CHANNELS = ("Form", "Flow", "UI", "API", "Import", "Unknown")
APPROVAL_STATES = ("Verified", "Pending", "Blocked")
LONG_TEXT = 32768

# The order of CustomField's elements in the Metadata API schema (fullName, from Metadata, first).
_FIELD_ORDER = (
    "fullName",
    "caseSensitive",
    "defaultValue",
    "deleteConstraint",
    "description",
    "displayFormat",
    "externalId",
    "fieldManageability",
    "inlineHelpText",
    "label",
    "length",
    "precision",
    "referenceTo",
    "relationshipLabel",
    "relationshipName",
    "required",
    "scale",
    "type",
    "unique",
    "valueSet",
    "visibleLines",
)


class PackageError(ValueError):
    """The configuration cannot make a package (names the key to fix)."""


def _el(tag: str, text: str | None = None, *children: etree._Element) -> etree._Element:
    element = etree.Element(f"{{{NS}}}{tag}", nsmap={None: NS})
    if text is not None:
        element.text = text
    element.extend(children)
    return element


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class FieldDef:
    """One custom field: its API name and its CustomField properties."""

    name: str
    props: Mapping[str, Any]
    picklist: Sequence[str] = ()

    def element(self, tag: str = "fields") -> etree._Element:
        values: dict[str, Any] = {"fullName": self.name, "required": False, **self.props}
        if self.props.get("type") in ("Checkbox", "AutoNumber"):
            values.pop("required")
        if self.name == "Name":
            values.pop("fullName")
        unknown = set(values) - set(_FIELD_ORDER)
        if unknown:
            raise ValueError(f"no CustomField element(s) {sorted(unknown)}")
        out = _el(tag)
        for key in _FIELD_ORDER:
            if key == "valueSet" and self.picklist:
                out.append(_value_set(self.picklist))
            elif key in values:
                out.append(_el(key, _text(values[key])))
        return out


def _value_set(values: Sequence[str]) -> etree._Element:
    definition = _el("valueSetDefinition", None, _el("sorted", "false"))
    for value in values:
        definition.append(
            _el("value", None, _el("fullName", value), _el("default", "false"), _el("label", value))
        )
    return _el("valueSet", None, _el("restricted", "true"), definition)


def _text_field(name: str, label: str, length: int, description: str, **more: Any) -> FieldDef:
    return FieldDef(
        name, {"description": description, "label": label, "length": length, "type": "Text", **more}
    )


def _long_text(name: str, label: str, description: str) -> FieldDef:
    props = {"description": description, "label": label, "length": LONG_TEXT, "type": "LongTextArea"}
    return FieldDef(name, {**props, "visibleLines": 3})


def _number(name: str, label: str, description: str, precision: int = 9, scale: int = 0) -> FieldDef:
    props = {"description": description, "label": label, "precision": precision, "scale": scale}
    return FieldDef(name, {**props, "type": "Number"})


def _user_lookup(name: str, label: str, description: str, relationship: str) -> FieldDef:
    props = {"deleteConstraint": "SetNull", "description": description, "label": label}
    props |= {"referenceTo": "User", "relationshipLabel": relationship.replace("_", " ")}
    return FieldDef(name, {**props, "relationshipName": relationship, "type": "Lookup"})


def _key_field(description: str) -> FieldDef:
    return _text_field(
        KEY_FIELD, "OnRecord Key", 100, description, caseSensitive=False, externalId=True, unique=True
    )


def governed_fields(names: ProvenanceConfig | None = None) -> list[FieldDef]:
    """The provenance and approval fields OnRecord writes on each governed object (the provenance
    ones under the API names configured in [provenance], so the package and the writes agree)."""
    names = names or ProvenanceConfig()
    return [
        FieldDef(
            names.channel_field,
            {
                "description": "How the governed values were recorded.",
                "label": "OnRecord Channel",
                "type": "Picklist",
            },
            CHANNELS,
        ),
        _text_field(
            names.source_field,
            "OnRecord Source",
            255,
            "The form response or flow run the values came from.",
        ),
        FieldDef(
            names.recorded_at_field,
            {
                "description": "When OnRecord recorded the values.",
                "label": "OnRecord Recorded At",
                "type": "DateTime",
            },
        ),
        _text_field(names.digest_field, "OnRecord Digest", 100, "SHA-256 digest of the recorded values."),
        _long_text(
            names.signature_field, "OnRecord Signature", "OnRecord's signature over the digest (Ed25519)."
        ),
        FieldDef(
            "OnRecord_Approval__c",
            {
                "description": "Whether the approval went through the form.",
                "label": "OnRecord Approval",
                "type": "Picklist",
            },
            APPROVAL_STATES,
        ),
        _long_text(
            "OnRecord_Approval_Note__c",
            "OnRecord Approval Note",
            "Why the approval is verified, pending or blocked.",
        ),
    ]


def _custom_object(
    label: str, plural: str, description: str, name_format: str, fields: list[FieldDef]
) -> bytes:
    obj = _el("CustomObject")
    for tag, value in (
        ("deploymentStatus", "Deployed"),
        ("description", description),
        ("enableActivities", False),
        ("enableBulkApi", True),
        ("enableFeeds", False),
        ("enableHistory", False),
        ("enableReports", True),
        ("enableSearch", True),
        ("enableSharing", True),
        ("enableStreamingApi", True),
    ):
        obj.append(_el(tag, _text(value)))
    obj.extend(f.element() for f in sorted(fields, key=lambda f: f.name))
    obj.append(_el("label", label))
    name_field = FieldDef(
        "Name", {"displayFormat": name_format, "label": f"{label} Number", "type": "AutoNumber"}
    )
    obj.append(name_field.element("nameField"))
    obj.append(_el("pluralLabel", plural))
    obj.append(_el("sharingModel", "Read"))  # everyone reads; only OnRecord (edit access) writes
    obj.append(_el("visibility", "Public"))
    return _document(obj)


def leader_signal_fields() -> list[FieldDef]:
    """Per leader and period: one count per signal kind, the score, the champion flag, the key."""
    counts = [
        ("OnRecord_Logins__c", "Interactive Logins", "Interactive logins in the period."),
        ("OnRecord_Form_Approvals__c", "Form Approvals", "Approvals given through the official form."),
        ("OnRecord_Records_Touched__c", "Records Touched", "Governed records the leader changed."),
        ("OnRecord_Trainings__c", "Trainings Attended", "Trainings attended in the period."),
        ("OnRecord_Citations__c", "CRM Citations", "CRM figures cited in meetings."),
        ("OnRecord_Off_System_Approvals__c", "Off-System Approvals", "Approvals attempted outside the form."),
        ("OnRecord_Report_Views__c", "Report Views", "CRM reports the leader opened in the period."),
        ("OnRecord_Dashboard_Views__c", "Dashboard Views", "CRM dashboards the leader opened in the period."),
    ]
    return [
        _user_lookup(
            "OnRecord_Leader__c", "Leader", "The leader these signals are about.", "OnRecord_Leader_Signals"
        ),
        _text_field("OnRecord_Period__c", "Period", 20, "The period, e.g. 2025-03 or 2025-W11."),
        FieldDef(
            "OnRecord_Period_Start__c",
            {"description": "First day of the period.", "label": "Period Start", "type": "Date"},
        ),
        *(_number(name, label, description) for name, label, description in counts),
        _number("OnRecord_Score__c", "Score", "The published buy-in score (0-100).", precision=5, scale=1),
        _number(
            "OnRecord_Trend__c",
            "Trend",
            "The score's change since the period before.",
            precision=6,
            scale=1,
        ),
        _text_field(
            "OnRecord_Weights_Version__c", "Weights Version", 40, "The weights the score was computed with."
        ),
        FieldDef(
            "OnRecord_Champion_Candidate__c",
            {
                "defaultValue": False,
                "description": "A system champion candidate.",
                "label": "Champion Candidate",
                "type": "Checkbox",
            },
        ),
        _key_field("Leader user id and period: OnRecord upserts by it."),
    ]


def violation_fields() -> list[FieldDef]:
    """An approval given outside the form: which record, who, which rule, what was done, when."""
    return [
        _text_field("OnRecord_Object__c", "Object", 80, "API name of the record's object."),
        _text_field("OnRecord_Record_Id__c", "Record Id", 18, "Id of the record the violation is about."),
        _user_lookup("OnRecord_Actor__c", "Actor", "The user who gave the approval.", "OnRecord_Violations"),
        _text_field("OnRecord_Rule__c", "Rule Broken", 255, "The rule the approval broke."),
        _text_field("OnRecord_Action__c", "Action Taken", 255, "What OnRecord did (reverted, flagged, ...)."),
        FieldDef(
            "OnRecord_Occurred_At__c",
            {"description": "When it happened.", "label": "Occurred At", "type": "DateTime"},
        ),
        _long_text("OnRecord_Detail__c", "Detail", "The evidence and the reason, in words."),
        _text_field(
            "OnRecord_Actor_Name__c",
            "Actor Name",
            255,
            "Who gave the approval, in words (the actor may not be a CRM user).",
        ),
        _text_field("OnRecord_Verdict__c", "Verdict", 20, "OnRecord's verdict on the approval."),
        _key_field("Unique per violation: OnRecord upserts by it, so a retry never duplicates one."),
    ]


# --- configuring OnRecord in Setup: custom metadata types and the config status object ---------


def _help(field_def: FieldDef, help_text: str) -> FieldDef:
    """The field with help text an admin sees next to it in Setup (inlineHelpText)."""
    return FieldDef(field_def.name, {**field_def.props, "inlineHelpText": help_text}, field_def.picklist)


def _setup(field_def: FieldDef, help_text: str) -> FieldDef:
    """A custom metadata type field whose values admins edit in Setup (SubscriberControlled)."""
    with_help = _help(field_def, help_text)
    return FieldDef(
        with_help.name, {**with_help.props, "fieldManageability": "SubscriberControlled"}, with_help.picklist
    )


def _checkbox(name: str, label: str, description: str, default: bool) -> FieldDef:
    props = {"defaultValue": default, "description": description, "label": label}
    return FieldDef(name, {**props, "type": "Checkbox"})


def _picklist(name: str, label: str, description: str, values: Sequence[str]) -> FieldDef:
    return FieldDef(name, {"description": description, "label": label, "type": "Picklist"}, values)


def governed_type_fields() -> list[FieldDef]:
    """OnRecord_Governed__mdt: one record per object OnRecord governs (a [[governed]] entry)."""
    return [
        _setup(
            _text_field("Object__c", "Object", 80, "API name of the governed object."),
            "API name of the object OnRecord governs, e.g. Opportunity or Budget_Request__c.",
        ),
        _setup(
            _long_text("Tracked_Fields__c", "Tracked Fields", "API names of the fields OnRecord records."),
            "API names of the fields whose changes OnRecord records and signs, one per line.",
        ),
        _setup(
            _text_field("Approval_Field__c", "Approval Field", 80, "API name of the approval status field."),
            "API name of the status field that says a record is approved (leave empty if the "
            "object needs no approval).",
        ),
        _setup(
            _long_text(
                "Approved_Values__c", "Approved Values", "Values of the approval field meaning approved."
            ),
            "The values of the approval field that mean approved, one per line (empty for a checkbox).",
        ),
        _setup(
            _text_field("Form_Id__c", "Form Id", 200, "The official form approvals must come through."),
            "The id of the official form people submit to ask for approval.",
        ),
        _setup(
            _text_field(
                "Revert_To__c", "Revert To", 255, "The status an off-system approval is put back to."
            ),
            "The status OnRecord puts back when someone approves outside the form, e.g. Submitted.",
        ),
        _setup(
            _checkbox("Set_Status__c", "Set Status", "OnRecord sets the approved status itself.", True),
            "Checked: OnRecord sets the approved status once every stage has approved. Unchecked: "
            "your approval flow sets it.",
        ),
        _setup(
            _long_text("Status_Writers__c", "Status Writers", "Users also allowed to set the status."),
            "Users (user ids or usernames, one per line) also allowed to set the approved status, "
            "e.g. your approval flow's user.",
        ),
        _setup(
            _number(
                "Grace_Seconds__c", "Grace Seconds", "How long to wait for late flow events.", precision=6
            ),
            "How many seconds OnRecord waits for late approval events before judging a change (default 600).",
        ),
        _setup(
            _number(
                "Max_Chain_Age_Days__c",
                "Max Chain Age (Days)",
                "The oldest approval chain OnRecord accepts.",
                4,
            ),
            "How many days an approval stays valid: older approvals no longer count (default 30).",
        ),
        _setup(
            _checkbox("Active__c", "Active", "OnRecord governs this object.", True),
            "Unchecked: OnRecord ignores this record, as if it did not exist.",
        ),
    ]


def approval_stage_type_fields() -> list[FieldDef]:
    """OnRecord_Approval_Stage__mdt: one record per approval stage of a governed object."""
    governed = FieldDef(
        "Governed__c",
        {
            "description": "The governed object this stage belongs to.",
            "label": "Governed Object",
            "referenceTo": GOVERNED_MDT,
            "relationshipLabel": "Approval Stages",
            "relationshipName": "Approval_Stages",
            "required": True,
            "type": "MetadataRelationship",
        },
    )
    return [
        _setup(governed, "The OnRecord Governed record (the object) whose approvals this stage is part of."),
        _setup(
            _number("Order__c", "Order", "The stage's place in the chain.", precision=3),
            "Where this stage comes in the chain: 1 first, then 2, and so on.",
        ),
        _setup(
            _text_field("Stage_Name__c", "Stage Name", 80, "The stage's name."),
            "The stage's name as people see it in messages, e.g. finance.",
        ),
        _setup(
            _long_text("Approvers__c", "Approvers", "Who may approve at this stage."),
            "Who may approve at this stage: e-mail addresses or approver group names, one per line.",
        ),
    ]


def leader_type_fields() -> list[FieldDef]:
    """OnRecord_Leader__mdt: a leader whose system use OnRecord counts, or a role of leaders."""
    return [
        _setup(
            _text_field(
                "Email_Or_Username__c", "E-mail or Username", 255, "The leader's e-mail or username."
            ),
            "The leader's e-mail address or Salesforce username (leave empty when naming a role).",
        ),
        _setup(
            _text_field("Display_Name__c", "Display Name", 255, "The leader's name as reports show it."),
            "The leader's name as OnRecord's reports and dashboards show it.",
        ),
        _setup(
            _text_field("Role_Name__c", "Role Name", 255, "A role whose members all count as leaders."),
            "A Salesforce role name: everyone in that role counts as a leader (instead of one person).",
        ),
    ]


def setting_type_fields() -> list[FieldDef]:
    """OnRecord_Setting__mdt: the buy-in score's weights, the champion threshold and the period."""
    weights = [
        _setup(
            _number(
                f"{kind.title()}_Weight__c",
                f"{kind.replace('_', ' ').title()} Weight",
                f"What one {kind.replace('_', ' ')} is worth in the buy-in score.",
                precision=6,
                scale=2,
            ),
            f"Points one {kind.replace('_', ' ')} adds to a leader's buy-in score"
            + (" (zero or less: it is a penalty)." if kind == "off_system_approval" else "."),
        )
        for kind in SIGNAL_KINDS
    ]
    return [
        *weights,
        _setup(
            _text_field("Weights_Version__c", "Weights Version", 40, "Names the weights a score used."),
            "Change this whenever you change a weight, e.g. 2026.2: each score names the weights it used.",
        ),
        _setup(
            _number("Champion_Threshold__c", "Champion Threshold", "The score a champion beats.", 6, 1),
            "A leader scoring over this (with no off-system approval lately) is a champion candidate.",
        ),
        _setup(
            _picklist("Period__c", "Period", "How leader signals are grouped.", PERIODS),
            "How OnRecord groups leader signals into periods: by ISO week or by day.",
        ),
    ]


def config_status_fields() -> list[FieldDef]:
    """OnRecord_Config_Status__c: per custom metadata record, what OnRecord made of it."""
    return [
        _help(
            _text_field("OnRecord_Metadata_Type__c", "Metadata Type", 80, "The custom metadata type."),
            "The custom metadata type of the record, e.g. OnRecord_Governed__mdt.",
        ),
        _help(
            _text_field("OnRecord_Developer_Name__c", "Record Name", 80, "The record's developer name."),
            "The developer name (API name) of the custom metadata record.",
        ),
        _help(
            _picklist("OnRecord_Status__c", "Status", "OK, or Problem.", CONFIG_STATES),
            "OK: OnRecord uses the record as it is. Problem: OnRecord could not use it; see Problem.",
        ),
        _help(
            _long_text("OnRecord_Problem__c", "Problem", "What is wrong with the record."),
            "What is wrong with the record and how to fix it (empty when the status is OK).",
        ),
        _help(
            FieldDef(
                "OnRecord_Applied_At__c",
                {
                    "description": "When OnRecord last read the record.",
                    "label": "Applied At",
                    "type": "DateTime",
                },
            ),
            "When OnRecord last read the record and applied it (or found the problem).",
        ),
        _help(
            _text_field(
                "OnRecord_Config_Version__c", "Config Version", 80, "The configuration version applied."
            ),
            "The version of the whole configuration this status belongs to.",
        ),
        _help(
            _key_field("Metadata type and developer name: OnRecord upserts by it."),
            "Set by OnRecord: the metadata type and the record's name, so each record has one status.",
        ),
    ]


def _metadata_type(label: str, plural: str, description: str, fields: list[FieldDef]) -> bytes:
    """A custom metadata type (a CustomObject named ...__mdt): no sharing, no name field."""
    obj = _el("CustomObject", None, _el("description", description))
    obj.extend(f.element() for f in sorted(fields, key=lambda f: f.name))
    obj.append(_el("label", label))
    obj.append(_el("pluralLabel", plural))
    obj.append(_el("visibility", "Public"))
    return _document(obj)


def metadata_types() -> list[tuple[str, str, str, str, list[FieldDef]]]:
    """(name, label, plural label, description, fields) of each custom metadata type."""
    return [
        (
            GOVERNED_MDT,
            "OnRecord Governed Object",
            "OnRecord Governed Objects",
            "An object OnRecord governs: which fields it records and how approvals must go.",
            governed_type_fields(),
        ),
        (
            APPROVAL_STAGE_MDT,
            "OnRecord Approval Stage",
            "OnRecord Approval Stages",
            "One stage of a governed object's approval chain, and who approves at it.",
            approval_stage_type_fields(),
        ),
        (
            LEADER_MDT,
            "OnRecord Leader",
            "OnRecord Leaders",
            "A leader (or a role of leaders) whose use of the system OnRecord counts.",
            leader_type_fields(),
        ),
        (
            SETTING_MDT,
            "OnRecord Setting",
            "OnRecord Settings",
            "The buy-in score's weights, the champion threshold and the period.",
            setting_type_fields(),
        ),
    ]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _status_writer(writer: str) -> tuple[str, str]:
    """("id", the 18-character user id) or ("username", the username) for one status writer."""
    writer = writer.strip()
    if "@" in writer:
        return "username", writer.lower()  # Salesforce keeps usernames in lower case
    if is_salesforce_id(writer) and writer.startswith("005"):
        return "id", to_18(writer)
    raise PackageError(
        f"status_writers: {writer!r} is neither a Salesforce user id (005..., 15 or 18 characters) "
        "nor a username"
    )


def approval_formula(governed: GovernedObject, integration_user_id: str) -> str:
    """True (the save is refused) when someone other than the integration user and the policy's
    status writers sets an approved status — on the configured field (on create, or when the
    field changes), or OnRecord's own OnRecord_Approval__c = Verified."""
    f = governed.approval_field
    if governed.approval_field_type == "checkbox":
        approved = f
    else:
        tests = [
            f"{f} = {_quote(v)}" if governed.approval_field_type == "text" else f"ISPICKVAL({f}, {_quote(v)})"
            for v in governed.approved_values
        ]
        approved = tests[0] if len(tests) == 1 else f"OR({', '.join(tests)})"
    ids = [to_18(integration_user_id)]
    usernames: list[str] = []
    for writer in governed.status_writers:
        kind, value = _status_writer(writer)
        target = ids if kind == "id" else usernames
        if value not in target:
            target.append(value)
    exempt = [f"  CASESAFEID($User.Id) <> {_quote(i)}," for i in ids]
    exempt += [f"  $User.Username <> {_quote(u)}," for u in usernames]
    verified = (
        'AND(OR(ISNEW(), ISCHANGED(OnRecord_Approval__c)), ISPICKVAL(OnRecord_Approval__c, "Verified"))'
    )
    lines = [
        "AND(",
        *exempt,
        "  OR(",
        f"    AND(OR(ISNEW(), ISCHANGED({f})), {approved}),",
        f"    {verified}",
        "  )",
        ")",
    ]
    return "\n".join(lines)


# Salesforce's limits: a validation rule's error message, and its formula.
ERROR_MESSAGE_MAX = 255
FORMULA_MAX = 3900


def _stage_list(names: Sequence[str]) -> str:
    return ", then ".join(names)


def approval_message(governed: GovernedObject) -> str:
    """The rule's error message: what to do instead, naming the form and its stages, within
    Salesforce's 255 characters (long names give way: first the stage names, then the form id)."""
    who = "OnRecord sets" if governed.set_status else "the approval flow sets"
    after = f" Submit the form; {who} the status once every stage has approved."
    stages = [s.name for s in governed.stages]
    count = f"{len(stages)} approval stage" + ("s" if len(stages) != 1 else "")
    form = governed.form_id.strip()
    for middle in (f"its approval stages ({_stage_list(stages)})", f"its {count}"):
        message = f"Approvals count only through the official form ({form}) and {middle}.{after}"
        if len(message) <= ERROR_MESSAGE_MAX:
            return message
    room = ERROR_MESSAGE_MAX - len(message) + len(form) - 1
    return message.replace(f"({form})", f"({form[:room]}\u2026)", 1)


def approval_rule(governed: GovernedObject, integration_user_id: str) -> etree._Element:
    """The ValidationRule element (inside the object's file)."""
    formula = approval_formula(governed, integration_user_id)
    if len(formula) > FORMULA_MAX:
        raise PackageError(
            f"governed {governed.object}: the approval rule's formula would be {len(formula)} characters, "
            f"over Salesforce's {FORMULA_MAX}; list fewer status_writers or approved_values"
        )
    return _el(
        "validationRules",
        None,
        _el("fullName", APPROVAL_RULE),
        _el("active", "true"),
        _el("description", "OnRecord: approvals count only through the official form and its approval flow."),
        _el("errorConditionFormula", formula),
        _el("errorDisplayField", governed.approval_field),
        _el("errorMessage", approval_message(governed)),
    )


def _permission_set(
    label: str,
    description: str,
    fields: list[str],
    objects: list[str],
    edit: bool,
    metadata_types: Sequence[str] = (),
) -> bytes:
    ps = _el("PermissionSet")
    for name in sorted(metadata_types):  # read access to the custom metadata types' records
        ps.append(_el("customMetadataTypeAccesses", None, _el("enabled", "true"), _el("name", name)))
    ps.append(_el("description", description))
    for name in sorted(fields):
        ps.append(
            _el(
                "fieldPermissions",
                None,
                _el("editable", _text(edit)),
                _el("field", name),
                _el("readable", "true"),
            )
        )
    ps.append(_el("hasActivationRequired", "false"))
    ps.append(_el("label", label))
    for obj in sorted(objects):
        ps.append(
            _el(
                "objectPermissions",
                None,
                _el("allowCreate", _text(edit)),
                _el("allowDelete", "false"),
                _el("allowEdit", _text(edit)),
                _el("allowRead", "true"),
                _el("modifyAllRecords", "false"),
                _el("object", obj),
                _el("viewAllRecords", "false"),
            )
        )
    return _document(ps)


# --- the Leader Buy-In report and dashboard ------------------------------------------------------


def _column(field_name: str) -> str:
    """A field as a report on the custom report type names it (object$field)."""
    return f"{LEADER_SIGNAL}${field_name}"


def leader_report_type(fields: Sequence[FieldDef]) -> bytes:
    """The custom report type over OnRecord_Leader_Signal__c: every field but the upsert key."""
    section = _el("sections")
    for name in ["Name", *(f.name for f in fields if f.name != KEY_FIELD)]:
        section.append(
            _el(
                "columns",
                None,
                _el("checkedByDefault", "true"),
                _el("field", name),
                _el("table", LEADER_SIGNAL),
            )
        )
    section.append(_el("masterLabel", "Leader Signals"))
    report_type = _el(
        "ReportType",
        None,
        _el("baseObject", LEADER_SIGNAL),
        _el("category", "other"),
        _el("deployed", "true"),
        _el("description", "OnRecord's leader signals: per leader and period, the counts and the score."),
        _el("label", "OnRecord Leader Signals"),
        section,
    )
    return _document(report_type)


# The report's columns: the score and each count, summed per period and leader (one record each).
BUY_IN_COLUMNS = (
    "OnRecord_Score__c",
    "OnRecord_Logins__c",
    "OnRecord_Records_Touched__c",
    "OnRecord_Form_Approvals__c",
    "OnRecord_Off_System_Approvals__c",
    "OnRecord_Trainings__c",
    "OnRecord_Citations__c",
    "OnRecord_Report_Views__c",
    "OnRecord_Dashboard_Views__c",
)


def buy_in_report() -> bytes:
    """ "Leader Buy-In": a summary report by period, then leader, over the last 90 days."""
    report = _el("Report")
    for name in BUY_IN_COLUMNS:
        report.append(_el("columns", None, _el("aggregateTypes", "Sum"), _el("field", _column(name))))
    for name in ("OnRecord_Trend__c", "OnRecord_Champion_Candidate__c", "OnRecord_Weights_Version__c"):
        report.append(_el("columns", None, _el("field", _column(name))))
    report.append(
        _el("description", "Each leader's buy-in score and signals per period, as OnRecord counted them.")
    )
    report.append(_el("format", "Summary"))
    for name in ("OnRecord_Period__c", "OnRecord_Leader__c"):
        report.append(_el("groupingsDown", None, _el("field", _column(name)), _el("sortOrder", "Asc")))
    report.append(_el("name", "Leader Buy-In"))
    report.append(_el("reportType", f"{REPORT_TYPE}__c"))  # a custom report type: its name + __c
    report.append(_el("scope", "organization"))
    report.append(_el("showDetails", "false"))
    report.append(
        _el(
            "timeFrameFilter",
            None,
            _el("dateColumn", _column("OnRecord_Period_Start__c")),
            _el("interval", "INTERVAL_LAST90"),
        )
    )
    return _document(report)


def buy_in_dashboard() -> bytes:
    """ "Leader Buy-In": the report's score per period, one line per leader. It runs as the user
    who deploys it (every user reads the leader signals: the object's sharing is Read)."""
    component = _el(
        "dashboardComponent",
        None,
        _el("autoselectColumnsFromReport", "false"),
        _el("chartAxisRange", "Auto"),
        _el(
            "chartSummary",
            None,
            _el("aggregate", "Sum"),
            _el("axisBinding", "y"),
            _el("column", _column("OnRecord_Score__c")),
        ),
        _el("componentType", "LineGrouped"),
        _el("displayUnits", "Auto"),
        _el("groupingColumn", _column("OnRecord_Period__c")),
        _el("groupingColumn", _column("OnRecord_Leader__c")),
        _el("header", "Buy-in score per period"),
        _el("legendPosition", "Bottom"),
        _el("report", f"{ANALYTICS_FOLDER}/{BUY_IN}"),
        _el("showValues", "false"),
        _el("title", "One line per leader"),
        _el("useReportChart", "false"),
    )
    grid = _el(
        "dashboardGridLayout",
        None,
        _el(
            "dashboardGridComponents",
            None,
            _el("colSpan", "12"),
            _el("columnIndex", "0"),
            component,
            _el("rowIndex", "0"),
            _el("rowSpan", "8"),
        ),
        _el("numberOfColumns", "12"),
        _el("rowHeight", "36"),
    )
    dashboard = _el(
        "Dashboard",
        None,
        _el("backgroundEndColor", "#FFFFFF"),
        _el("backgroundFadeDirection", "Diagonal"),
        _el("backgroundStartColor", "#FFFFFF"),
        grid,
        _el("description", "How much leaders use the system, per period, as OnRecord counted it."),
        _el("isGridLayout", "true"),
        _el("textColor", "#000000"),
        _el("title", "Leader Buy-In"),
        _el("titleColor", "#000000"),
        _el("titleSize", "12"),
    )
    return _document(dashboard)


def analytics_folder(kind: str) -> bytes:
    """The ReportFolder or DashboardFolder "OnRecord", shared read-only with every internal user."""
    share = _el(
        "folderShares",
        None,
        _el("accessLevel", "View"),
        _el("sharedTo", "AllInternalUsers"),
        _el("sharedToType", "Organization"),
    )
    return _document(_el(kind, None, share, _el("name", "OnRecord")))


def _document(root: etree._Element) -> bytes:
    etree.indent(root, space="    ")
    body: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return (
        body.replace(b"<?xml version='1.0' encoding='UTF-8'?>", b'<?xml version="1.0" encoding="UTF-8"?>', 1)
        + b"\n"
    )


def _package_xml(members: Mapping[str, Sequence[str]], api_version: str) -> bytes:
    package = _el("Package")
    for type_name in sorted(members):
        types = _el("types")
        types.extend(_el("members", m) for m in sorted(set(members[type_name])))
        types.append(_el("name", type_name))
        package.append(types)
    package.append(_el("version", api_version))
    return _document(package)


def build_package(config: Config) -> dict[str, bytes]:
    """Every file of the package, by its path inside the package."""
    own_user = sf_settings(config).integration_user_id
    approval_governed = [g for g in config.governed if g.approval_field and g.crm == "salesforce"]
    if approval_governed and not is_salesforce_id(own_user):
        raise PackageError(
            "salesforce.integration_user_id must be OnRecord's integration user id: the approval "
            f"validation rule on {', '.join(g.object for g in approval_governed)} names it"
        )
    files: dict[str, bytes] = {}
    members: dict[str, list[str]] = {
        "CustomField": [],
        "CustomObject": [],
        "PermissionSet": [],
        "ValidationRule": [],
    }
    all_fields: list[str] = []
    for governed in (g for g in config.governed if g.crm == "salesforce"):
        if governed.object in (LEADER_SIGNAL, VIOLATION, CONFIG_STATUS):
            raise PackageError(f"governed: {governed.object} is OnRecord's own object, not one it governs")
        obj = _el("CustomObject")
        fields = governed_fields(config.provenance)
        obj.extend(f.element() for f in fields)
        if governed.approval_field:
            obj.append(approval_rule(governed, own_user))
            members["ValidationRule"].append(f"{governed.object}.{APPROVAL_RULE}")
        files[f"objects/{governed.object}.object"] = _document(obj)
        names = [f"{governed.object}.{f.name}" for f in fields]
        members["CustomField"] += names
        all_fields += names
    for name, label, plural, description, name_format, fields in (
        (
            LEADER_SIGNAL,
            "OnRecord Leader Signal",
            "OnRecord Leader Signals",
            "How much a leader used the system in a period, as OnRecord counted it.",
            "LS-{000000}",
            leader_signal_fields(),
        ),
        (
            VIOLATION,
            "OnRecord Violation",
            "OnRecord Violations",
            "An approval given outside the official form, and what OnRecord did about it.",
            "V-{000000}",
            violation_fields(),
        ),
        (
            CONFIG_STATUS,
            "OnRecord Config Status",
            "OnRecord Config Statuses",
            "What OnRecord made of each of its custom metadata records: OK, or the problem.",
            "CS-{000000}",
            config_status_fields(),
        ),
    ):
        files[f"objects/{name}.object"] = _custom_object(label, plural, description, name_format, fields)
        members["CustomObject"].append(name)
        names = [f"{name}.{f.name}" for f in fields]
        members["CustomField"] += names
        all_fields += names
    for name, label, plural, description, fields in metadata_types():
        files[f"objects/{name}.object"] = _metadata_type(label, plural, description, fields)
        members["CustomObject"].append(name)
        members["CustomField"] += [f"{name}.{f.name}" for f in fields]  # no field permissions
    own_objects = [LEADER_SIGNAL, VIOLATION, CONFIG_STATUS]
    files[f"permissionsets/{INTEGRATION_PERMISSION_SET}.permissionset"] = _permission_set(
        "OnRecord Integration",
        "For OnRecord's integration user: writes the OnRecord fields and objects.",
        all_fields,
        own_objects,
        edit=True,
        metadata_types=METADATA_TYPES,
    )
    files[f"permissionsets/{VIEWER_PERMISSION_SET}.permissionset"] = _permission_set(
        "OnRecord Viewer",
        "Read OnRecord's provenance, approvals and leader signals.",
        all_fields,
        own_objects,
        edit=False,
    )
    members["PermissionSet"] += [INTEGRATION_PERMISSION_SET, VIEWER_PERMISSION_SET]
    files[f"reportTypes/{REPORT_TYPE}.reportType"] = leader_report_type(leader_signal_fields())
    files[f"reports/{ANALYTICS_FOLDER}-meta.xml"] = analytics_folder("ReportFolder")
    files[f"reports/{ANALYTICS_FOLDER}/{BUY_IN}.report"] = buy_in_report()
    files[f"dashboards/{ANALYTICS_FOLDER}-meta.xml"] = analytics_folder("DashboardFolder")
    files[f"dashboards/{ANALYTICS_FOLDER}/{BUY_IN}.dashboard"] = buy_in_dashboard()
    members["ReportType"] = [REPORT_TYPE]
    members["Report"] = [ANALYTICS_FOLDER, f"{ANALYTICS_FOLDER}/{BUY_IN}"]
    members["Dashboard"] = [ANALYTICS_FOLDER, f"{ANALYTICS_FOLDER}/{BUY_IN}"]
    files["package.xml"] = _package_xml(members, sf_settings(config).api_version)
    return files


def write_package(files: Mapping[str, bytes], out_dir: Path) -> list[Path]:
    """Write the files under `out_dir` (created if needed); return their paths."""
    written = []
    for name, content in sorted(files.items()):
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def package_zip(files: Mapping[str, bytes]) -> bytes:
    """The package as the Metadata API deploys it: a zip with package.xml at its root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(files.items()):
            archive.writestr(name, content)
    return buffer.getvalue()


def is_sandbox(login_url: str) -> bool:
    """Whether the login URL is a sandbox's (test.salesforce.com or *.sandbox.my.salesforce.com)."""
    return jwt_audience(login_url) == "https://test.salesforce.com"


# --- deploy ----------------------------------------------------------------------------------


class MetadataDeployer(Protocol):
    """What deploying needs from the Salesforce client (SalesforceWriter has it)."""

    def deploy(self, package_zip: bytes, *, sandbox: bool, check_only: bool = False) -> str: ...

    def deploy_status(self, async_id: str) -> Mapping[str, Any]: ...


DONE_STATES = frozenset({"Succeeded", "SucceededPartial", "Failed", "Canceled"})


@dataclass(frozen=True)
class DeployOutcome:
    """How a deploy ended (or where it stood when we stopped waiting)."""

    id: str
    status: str
    components_total: int = 0
    components_deployed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "Succeeded"


def _count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def deploy_package(
    deployer: MetadataDeployer,
    files: Mapping[str, bytes],
    *,
    sandbox: bool,
    check_only: bool = False,
    wait_seconds: float = 600.0,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DeployOutcome:
    """Deploy the package and follow it (checkDeployStatus) until it is done or time is up."""
    async_id = deployer.deploy(package_zip(files), sandbox=sandbox, check_only=check_only)
    deadline = clock() + wait_seconds
    while True:
        status = deployer.deploy_status(async_id)
        state = str(status.get("state") or "Pending")
        if state in DONE_STATES or clock() >= deadline:
            break
        sleep(poll_seconds)
    detail = status.get("deployment_detail") or {}
    errors = []
    for problem in detail.get("errors") or []:
        where = problem.get("file") or problem.get("type") or "package"
        errors.append(f"{where}: {problem.get('status') or 'Error'}: {problem.get('message')}")
    return DeployOutcome(
        id=async_id,
        status=state,
        components_total=_count(detail.get("total_count")),
        components_deployed=_count(detail.get("deployed_count")),
        errors=errors,
    )


__all__ = [
    "ANALYTICS_FOLDER",
    "APPROVAL_RULE",
    "BUY_IN",
    "CONFIG_STATUS",
    "LEADER_SIGNAL",
    "METADATA_TYPES",
    "NS",
    "REPORT_TYPE",
    "VIOLATION",
    "DeployOutcome",
    "PackageError",
    "approval_formula",
    "approval_message",
    "approval_stage_type_fields",
    "build_package",
    "config_status_fields",
    "deploy_package",
    "governed_fields",
    "governed_type_fields",
    "is_sandbox",
    "leader_type_fields",
    "metadata_types",
    "package_zip",
    "setting_type_fields",
    "write_package",
]
