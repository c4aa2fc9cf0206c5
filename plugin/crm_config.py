"""Configuration from the CRM: custom metadata records composed into the file's shapes, validated once.

Pure: no database, no network. A CRM connector reads the records (`CrmSide.read_config`:
connectors/salesforce/crm_config.py) as `ConfigRecord`s; here they become

- `governed`: one entry per active OnRecord_Governed__mdt record, its `stages` the
  OnRecord_Approval_Stage__mdt records whose metadata relationship points at it, by Order__c;
- `leaders`: `users` and `roles` from OnRecord_Leader__mdt, and the weights, weights version,
  champion threshold and period from OnRecord_Setting__mdt (a field left empty keeps the file's);

and `apply(base, composed)` puts them in place of those sections of the file's configuration and
validates the result with `plugin.config.revalidate`: the code that validates the file, so a
mistake made in Setup gets the message the same mistake gets in the TOML file, attributed to the
record and field it came from (`RecordProblem`). Any problem refuses the whole version: OnRecord
keeps the last good one (a bad record never stops OnRecord).

`version(records)`: the digest of the records' canonical JSON (RFC 8785), whatever their order.
It names the content: who saved a record and when (LastModifiedBy, SystemModstamp) are carried
beside it for the provenance log, but saving a record unchanged does not make a new version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin.config import SIGNAL_KINDS, Config, ConfigError, revalidate
from plugin.provenance.canonical import canonical_json, sha256_hex

GOVERNED = "OnRecord_Governed__mdt"
STAGE = "OnRecord_Approval_Stage__mdt"
LEADER = "OnRecord_Leader__mdt"
SETTING = "OnRecord_Setting__mdt"
TYPES = (GOVERNED, STAGE, LEADER, SETTING)

# API field -> the configuration key it sets (connectors/salesforce/provision.py defines them).
GOVERNED_FIELDS: dict[str, str] = {
    "Object__c": "object",
    "Tracked_Fields__c": "fields",
    "Approval_Field__c": "approval_field",
    "Approved_Values__c": "approved_values",
    "Form_Id__c": "form_id",
    "Revert_To__c": "revert_to",
    "Set_Status__c": "set_status",
    "Status_Writers__c": "status_writers",
    "Grace_Seconds__c": "grace_seconds",
    "Max_Chain_Age_Days__c": "max_chain_age_days",
    "Active__c": "",  # not a key: an inactive record is ignored
}
STAGE_FIELDS: dict[str, str] = {
    "Governed__c": "",  # the metadata relationship: which governed record
    "Order__c": "",  # where the stage comes in the list
    "Stage_Name__c": "name",
    "Approvers__c": "approvers",
}
LEADER_FIELDS: dict[str, str] = {
    "Email_Or_Username__c": "email",
    "Display_Name__c": "name",
    "Role_Name__c": "",  # a role: leaders.roles
}
SETTING_FIELDS: dict[str, str] = {
    **{f"{kind.title()}_Weight__c": f"weights.{kind}" for kind in SIGNAL_KINDS},
    "Weights_Version__c": "weights_version",
    "Champion_Threshold__c": "champion_threshold",
    "Period__c": "period",
}
FIELDS: dict[str, dict[str, str]] = {
    GOVERNED: GOVERNED_FIELDS,
    STAGE: STAGE_FIELDS,
    LEADER: LEADER_FIELDS,
    SETTING: SETTING_FIELDS,
}
# Fields every custom metadata record has besides its type's own (Salesforce's standard fields).
STANDARD_FIELDS = frozenset(
    {"Id", "DeveloperName", "MasterLabel", "Label", "Language", "NamespacePrefix", "QualifiedApiName"}
)
# Governed fields holding lists: one item per line (long text areas in Setup).
_LIST_KEYS = frozenset({"fields", "approved_values", "status_writers"})


@dataclass(frozen=True)
class ConfigRecord:
    """One custom metadata record as the CRM holds it: field values by API name."""

    type: str  # the custom metadata type, e.g. OnRecord_Governed__mdt
    developer_name: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    modified_by_id: str = ""
    modified_by_name: str = ""
    modstamp: str = ""  # SystemModstamp, as the CRM wrote it

    @property
    def key(self) -> str:
        """Its status record's key: type and developer name (unique in an org)."""
        return f"{self.type}.{self.developer_name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "developer_name": self.developer_name,
            "fields": dict(self.fields),
            "modified_by_id": self.modified_by_id,
            "modified_by_name": self.modified_by_name,
            "modstamp": self.modstamp,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ConfigRecord:
        return cls(
            type=str(value["type"]),
            developer_name=str(value["developer_name"]),
            fields=dict(value.get("fields") or {}),
            modified_by_id=str(value.get("modified_by_id") or ""),
            modified_by_name=str(value.get("modified_by_name") or ""),
            modstamp=str(value.get("modstamp") or ""),
        )


@dataclass(frozen=True)
class RecordProblem:
    """What is wrong with one record: the field (API name, "" for the record as a whole) and why."""

    type: str
    developer_name: str
    field: str
    message: str

    @property
    def key(self) -> str:
        return f"{self.type}.{self.developer_name}"

    def describe(self) -> str:
        """The problem as an admin reads it on the status record."""
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_json(self) -> dict[str, str]:
        return {
            "type": self.type,
            "developer_name": self.developer_name,
            "field": self.field,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RecordProblem:
        return cls(
            str(value["type"]), str(value["developer_name"]), str(value["field"]), str(value["message"])
        )


@dataclass(frozen=True)
class Composed:
    """The records in the file's shapes, where each entry came from, and what could not be used."""

    governed: list[dict[str, Any]] = field(default_factory=list)
    leaders: dict[str, Any] = field(default_factory=dict)  # keys of [leaders] the records set
    crm: str = "salesforce"  # the CRM the records came from (their governed objects live there)
    version: str = ""  # version(records): what a verdict names
    problems: list[RecordProblem] = field(default_factory=list)
    # Where each configuration key came from: "governed.0" -> (type, developer name), ...
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What the job stores (JSON) and the worker applies."""
        return {
            "governed": self.governed,
            "leaders": self.leaders,
            "crm": self.crm,
            "version": self.version,
            "problems": [p.to_json() for p in self.problems],
            "origins": {k: list(v) for k, v in self.origins.items()},
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Composed:
        return cls(
            governed=[dict(g) for g in value.get("governed") or []],
            leaders=dict(value.get("leaders") or {}),
            crm=str(value.get("crm") or "salesforce"),
            version=str(value.get("version") or ""),
            problems=[RecordProblem.from_json(p) for p in value.get("problems") or []],
            origins={k: (str(v[0]), str(v[1])) for k, v in (value.get("origins") or {}).items()},
        )


class CrmConfigError(ValueError):
    """The records make no valid configuration; `problems` says which record and field."""

    def __init__(self, problems: Sequence[RecordProblem]) -> None:
        super().__init__("; ".join(f"{p.key}: {p.describe()}" for p in problems))
        self.problems = list(problems)


def version(records: Iterable[ConfigRecord]) -> str:
    """The configuration version: sha256 of the canonical JSON of the records, in a fixed order."""
    content = sorted(
        ({"type": r.type, "developer_name": r.developer_name, "fields": dict(r.fields)} for r in records),
        key=lambda r: (r["type"], r["developer_name"]),
    )
    return sha256_hex(canonical_json(content))


def _lines(value: Any) -> list[str]:
    """A long text area's items: one per line (commas also accepted), blanks dropped."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [item.strip() for item in re.split(r"[\r\n,;]+", str(value)) if item.strip()]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def compose(records: Iterable[ConfigRecord], crm: str = "salesforce") -> Composed:
    """The records in the file's shapes; problems found on the way (unknown fields, a stage whose
    governed record does not exist) are attributed to their record and field."""
    records = list(records)
    by_type: dict[str, list[ConfigRecord]] = {t: [] for t in TYPES}
    problems: list[RecordProblem] = []
    for record in sorted(records, key=lambda r: (r.type, r.developer_name)):
        if record.type not in by_type:
            problems.append(RecordProblem(record.type, record.developer_name, "", "not an OnRecord type"))
            continue
        known = FIELDS[record.type]
        for name, value in sorted(record.fields.items()):
            if name not in known and name not in STANDARD_FIELDS and _present(value):
                allowed = ", ".join(sorted(known))
                problems.append(
                    RecordProblem(
                        record.type,
                        record.developer_name,
                        name,
                        f"unknown field: OnRecord does not read it (its fields: {allowed})",
                    )
                )
        by_type[record.type].append(record)
    origins: dict[str, tuple[str, str]] = {}

    governed: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}  # governed developer name -> its index
    inactive: set[str] = set()
    for record in by_type[GOVERNED]:
        if record.fields.get("Active__c") is False:
            inactive.add(record.developer_name.lower())
            continue
        entry: dict[str, Any] = {"crm": crm}
        for api, key in GOVERNED_FIELDS.items():
            value = record.fields.get(api)
            if not key or value is None:
                continue  # unset: the configuration's default, as an absent key in the file
            entry[key] = _lines(value) if key in _LIST_KEYS else value
        entry["stages"] = []
        index_of[record.developer_name.lower()] = len(governed)
        origins[f"governed.{len(governed)}"] = (GOVERNED, record.developer_name)
        governed.append(entry)

    stages: dict[int, list[tuple[float, str, ConfigRecord]]] = {}
    for record in by_type[STAGE]:
        parent = _text(record.fields.get("Governed__c"))
        if parent.lower() in inactive:
            continue  # its governed record is switched off, and the stage with it
        if parent.lower() not in index_of:
            names = ", ".join(sorted(r.developer_name for r in by_type[GOVERNED])) or "none"
            message = (
                f"no OnRecord Governed record {parent!r} (the records: {names})"
                if parent
                else "is required: the OnRecord Governed record this stage belongs to"
            )
            problems.append(RecordProblem(STAGE, record.developer_name, "Governed__c", message))
            continue
        order = record.fields.get("Order__c")
        try:
            position = float(order) if order is not None else float("inf")
        except (TypeError, ValueError):
            problems.append(
                RecordProblem(STAGE, record.developer_name, "Order__c", f"must be a number (got {order!r})")
            )
            continue
        stages.setdefault(index_of[parent.lower()], []).append((position, record.developer_name, record))
    for index, found in stages.items():
        for j, (_, name, record) in enumerate(sorted(found, key=lambda s: (s[0], s[1].lower()))):
            governed[index]["stages"].append(
                {
                    "name": _text(record.fields.get("Stage_Name__c")) or name,
                    "approvers": _lines(record.fields.get("Approvers__c")),
                }
            )
            origins[f"governed.{index}.stages.{j}"] = (STAGE, name)

    leaders: dict[str, Any] = {"users": [], "roles": []}
    for record in by_type[LEADER]:
        person, role = (
            _text(record.fields.get("Email_Or_Username__c")),
            _text(record.fields.get("Role_Name__c")),
        )
        if not person and not role:
            problems.append(
                RecordProblem(
                    LEADER,
                    record.developer_name,
                    "Email_Or_Username__c",
                    "is required, or Role_Name__c: a leader is a person or a role",
                )
            )
            continue
        if person:
            origins[f"leaders.users.{len(leaders['users'])}"] = (LEADER, record.developer_name)
            user = {"email": person}
            if _text(record.fields.get("Display_Name__c")):
                user["name"] = _text(record.fields.get("Display_Name__c"))
            leaders["users"].append(user)
        if role:
            origins[f"leaders.roles.{len(leaders['roles'])}"] = (LEADER, record.developer_name)
            leaders["roles"].append(role)

    setters: dict[str, str] = {}  # setting key -> the record that set it
    for record in by_type[SETTING]:
        for api, key in SETTING_FIELDS.items():
            value = record.fields.get(api)
            if not _present(value):
                continue  # empty: the file's value stays
            if key in setters:
                problems.append(
                    RecordProblem(
                        SETTING,
                        record.developer_name,
                        api,
                        f"is also set by {setters[key]}: set it in one record",
                    )
                )
                continue
            setters[key] = record.developer_name
            origins[f"leaders.{key}"] = (SETTING, record.developer_name)
            if key.startswith("weights."):
                leaders.setdefault("weights", {})[key.removeprefix("weights.")] = value
            else:
                leaders[key] = value
    return Composed(
        governed=governed,
        leaders=leaders,
        crm=crm,
        version=version(records),
        problems=problems,
        origins=origins,
    )


def apply(base: Config, composed: Composed) -> Config:
    """`base` with its governed objects (those in the records' CRM) and leaders replaced by the
    records', validated as the file is. Raises CrmConfigError naming each record and field."""
    if composed.problems:
        raise CrmConfigError(composed.problems)
    # Always from the file's configuration: a key the records stop setting falls back to the
    # file's value, not to the previous version's.
    base = file_config(base)
    # Objects governed in another CRM stay as the file has them (the records configure their own
    # CRM); the records' entries come first so a message's index names the record.
    others = [g.model_dump() for g in base.governed if g.crm != composed.crm]
    leaders = base.leaders.model_dump()
    weights = {**leaders["weights"], **composed.leaders.get("weights", {})}
    leaders.update({k: v for k, v in composed.leaders.items() if k != "weights"}, weights=weights)
    try:
        config = revalidate(base, {"governed": [*composed.governed, *others], "leaders": leaders})
    except ConfigError as exc:
        raise CrmConfigError(_attribute(str(exc), composed)) from exc
    config._crm_version = composed.version  # what the rules name in verdicts
    config._crm_base = base
    return config


def file_config(config: Config) -> Config:
    """The file's configuration a configuration in force was made from (itself if it is one)."""
    return config._crm_base or config


_REVERSE: dict[str, dict[str, str]] = {
    t: {key: api for api, key in fields.items() if key} for t, fields in FIELDS.items()
}


def _attribute(message: str, composed: Composed) -> list[RecordProblem]:
    """The validation's lines ("governed.0.stages.1.approvers: List should have ...") as problems
    of the record and field each key came from."""
    problems: list[RecordProblem] = []
    for line in message.splitlines():
        loc, sep, text = line.partition(": ")
        if not sep:
            loc, text = "", line
        parts = loc.split(".")
        origin, rest = _origin(parts, composed)
        if origin is None:
            problems.append(RecordProblem("", "", loc, text))  # not from a record (cannot happen)
            continue
        type_, name = origin
        # a setting's key is the [leaders] key itself ("weights.login", "period")
        key = ".".join(parts[1:] if type_ == SETTING else rest)
        model_level = re.match(r"Value error, (\w+):", text)  # a model validator names its key
        if not key and model_level:
            key = model_level.group(1)
        if type_ == SETTING and key == "weights":
            # the weights validator names the kind in its words (before the input it echoes)
            said = text.split(" (got ", 1)[0]
            kind = next((k for k in SIGNAL_KINDS if k in said), "")
            if kind:
                key = f"weights.{kind}"
                type_, name = composed.origins.get(f"leaders.{key}", (type_, name))
        problems.append(RecordProblem(type_, name, _REVERSE[type_].get(key, ""), text))
    return problems


def _origin(parts: list[str], composed: Composed) -> tuple[tuple[str, str] | None, list[str]]:
    """The record a configuration key came from (the longest known prefix), and the key's rest."""
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in composed.origins:
            return composed.origins[prefix], parts[cut:]
    if parts[:1] == ["leaders"] and len(parts) > 1:
        # a weights message names "leaders.weights": the record that set any weight
        for key, origin in composed.origins.items():
            if key.startswith(f"leaders.{parts[1]}"):
                return origin, parts[1:]
    return None, parts


__all__ = [
    "FIELDS",
    "GOVERNED",
    "LEADER",
    "SETTING",
    "STAGE",
    "TYPES",
    "Composed",
    "ConfigRecord",
    "CrmConfigError",
    "RecordProblem",
    "apply",
    "compose",
    "file_config",
    "version",
]
