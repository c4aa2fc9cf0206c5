"""The Dataverse tables and columns OnRecord needs, as Web API metadata requests, and their deploy.

`python -m plugin provision --crm dataverse --out DIR` writes `plan(config)` with `write_plan`
(one JSON request per file, numbered, and a README.txt); `--deploy` runs `deploy(config, client)`,
which reads what the environment has and creates only what is missing.

What is created (the CRM-neutral model of `plugin.crm_model`, named by `physical_name`: the
publisher prefix and the stem in lower case, `onr_approval`):
- on every governed table (each `[[governed]]` object whose crm is Dataverse), the provenance and
  approval columns of `governed_fields(config.provenance)`;
- the two tables of `objects()` (violation, leader signal), organisation-owned, each with an
  autonumber primary name column, their columns, a lookup to systemuser for each `user` field
  (a one-to-many relationship), and an alternate key on the key field, which OnRecord upserts by.

The requests, in the order they must run (a column needs its table, a key its column):

    POST EntityDefinitions                                   EntityMetadata + primary name column
    POST EntityDefinitions(LogicalName='<table>')/Attributes  one column
    POST RelationshipDefinitions                             OneToManyRelationshipMetadata + Lookup
    POST EntityDefinitions(LogicalName='<table>')/Keys        EntityKeyMetadata

Sources (Microsoft Learn):
- Tables: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api
  (the body must hold the primary name StringAttributeMetadata with IsPrimaryName; SchemaName
  carries the publisher's customization prefix; `MSCRM.SolutionUniqueName` puts the component in
  that solution; labels are Label objects with LocalizedLabels, LanguageCode 1033).
- Columns: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-column-definitions-using-web-api
  (String/Memo/Decimal/DateTime/Boolean AttributeMetadata bodies; a Decimal's Precision is its
  digits after the point, with MinValue/MaxValue).
- Lookups: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-relationships-using-web-api
  (the lookup column is created with its OneToManyRelationshipMetadata, by deep insert).
- Alternate keys: https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity
  (EntityKeyMetadata with KeyAttributes; the key's index is built asynchronously, its
  EntityKeyIndexStatus going Pending → Active, and upserts by the key work once it is Active).
- Autonumber: https://learn.microsoft.com/power-apps/developer/data-platform/create-auto-number-attributes
- Date and time behaviour: https://learn.microsoft.com/power-apps/developer/data-platform/behavior-format-date-time-attribute

Choices of rendering (and why):
- choice → a single line of text as long as the longest choice: OnRecord's writer writes the
  choice's text ("Verified"), the same value on every CRM; a Dataverse choice column would need
  each environment's option values mapped back and forth, and a report or flow reads text as well.
- long_text → Memo (TextArea), 32,768 characters, like Salesforce's long text area.
- number → Integer (Whole Number) when it has no decimals (the counts), else Decimal with the
  model's scale as Precision; MaxValue the largest value its precision allows, MinValue its
  negative (the trend can fall).
- datetime → DateTime, Format DateAndTime, DateTimeBehavior UserLocal: OnRecord writes instants in
  UTC; UserLocal stores UTC and shows each user the instant in their own time zone, and the Web API
  reads and writes it in UTC. TimeZoneIndependent would store the UTC wall clock and show everyone
  those digits as if they were local time. (UserLocal can later be changed to another behaviour;
  the other behaviours cannot be changed back.)
- date → DateTime, Format DateOnly, behaviour DateOnly: a period's first day is a calendar day.
- checkbox → Boolean with Yes (1) / No (0) labels and the model's default.
- user → a lookup to systemuser; deleting the user removes the link (RemoveLink), the record stays.
- tables are OrganizationOwned: a leader signal or a violation belongs to no user; who reads them
  is a matter of security roles, and only OnRecord's application user writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

from connectors.dataverse.users import dataverse_settings
from plugin.config import Config
from plugin.crm import CrmError
from plugin.crm_model import ModelField, ModelObject, governed_fields, objects, physical_name, stem

LANGUAGE = 1033  # English labels (the LCID Microsoft's examples use)
SOLUTION_HEADER = "MSCRM.SolutionUniqueName"
PRIMARY_NAME = "Name"  # stem of each table's primary name column: <prefix>_name
PRIMARY_NAME_LENGTH = 100
NAME_FORMATS = {  # autonumber formats of the primary name, as Salesforce's auto-number Name
    "OnRecord_Violation__c": "V-{SEQNUM:6}",
    "OnRecord_Leader_Signal__c": "LS-{SEQNUM:6}",
}
DECIMAL_LIMIT = Decimal(100_000_000_000)  # a Decimal column's MaxValue / -MinValue can be at most this

RequestKind = Literal["table", "column", "relationship", "key"]


class PlanError(ValueError):
    """The configuration cannot be rendered for Dataverse (names what to fix)."""


@dataclass(frozen=True)
class MetadataRequest:
    """One Web API metadata request: what it creates, where, and its body."""

    kind: RequestKind
    table: str  # logical name of the table the request is about
    name: str  # logical name of what it creates (the table, column, relationship or key)
    path: str  # relative to [Organization URI]/api/data/v9.x/
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    attribute_type: str = ""  # columns and lookups: the AttributeType it makes

    def describe(self) -> str:
        """`column onr_approval on opportunity`, `table onr_violation`, ..."""
        if self.kind == "table":
            return f"table {self.name}"
        if self.kind == "relationship":
            return f"lookup {self.attribute_name} on {self.table} (relationship {self.name})"
        return f"{self.kind} {self.name} on {self.table}"

    @property
    def attribute_name(self) -> str:
        """A column's (or a relationship's lookup column's) logical name."""
        if self.kind == "relationship":
            return str(self.body["Lookup"]["SchemaName"]).lower()
        return self.name

    def to_json(self) -> dict[str, Any]:
        """The request as written to a plan file."""
        headers = {"Content-Type": "application/json; charset=utf-8", "OData-Version": "4.0"}
        return {
            "description": self.describe(),
            "method": self.method,
            "path": self.path,
            "headers": {**headers, **self.headers},
            "body": self.body,
        }


def label(text: str) -> dict[str, Any]:
    """A Label: one LocalizedLabel, English."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": LANGUAGE}
        ],
    }


def _required_none() -> dict[str, Any]:
    # Optional for people: OnRecord fills the columns; a form or import must not be forced to.
    return {
        "Value": "None",
        "CanBeChanged": True,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
    }


def schema_name(canonical: str, prefix: str) -> str:
    """The SchemaName of an OnRecord name: `onr_Approval_Note` for `OnRecord_Approval_Note__c`
    (its lower case is the logical name, `physical_name`)."""
    found = stem(canonical)
    if found is None:
        raise PlanError(
            f"{canonical!r} is not an OnRecord name (OnRecord_<Name>__c), so it has no Dataverse "
            "column name; set [provenance] field names of that form"
        )
    return f"{prefix}_{found}"


def _common(f: ModelField, prefix: str) -> dict[str, Any]:
    return {
        "SchemaName": schema_name(f.name, prefix),
        "DisplayName": label(f.label),
        "Description": label(f.description),
        "RequiredLevel": _required_none(),
    }


def _string(f: ModelField, prefix: str, length: int) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "AttributeType": "String",
        "AttributeTypeName": {"Value": "StringType"},
        **_common(f, prefix),
        "FormatName": {"Value": "Text"},
        "MaxLength": length,
    }


def _decimal_limit(precision: int, scale: int) -> float:
    """The largest value `precision` digits with `scale` after the point hold (9.9 for 2, 1)."""
    largest = Decimal(10) ** (precision - scale) - Decimal(10) ** -scale
    return float(min(largest, DECIMAL_LIMIT))


def column_body(f: ModelField, prefix: str) -> dict[str, Any]:
    """The AttributeMetadata body of one model field (not `user`: see `lookup_request`)."""
    if f.kind == "text":
        return _string(f, prefix, f.length)
    if f.kind == "choice":
        # Text, not a choice column: the writer writes the choice's text (module docstring).
        return _string(f, prefix, max(len(c) for c in f.choices))
    if f.kind == "long_text":
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
            "AttributeType": "Memo",
            "AttributeTypeName": {"Value": "MemoType"},
            **_common(f, prefix),
            "Format": "TextArea",
            "MaxLength": f.length,
        }
    if f.kind == "number" and f.scale == 0:
        # A whole number (the counts): Integer, as a Whole Number column shows and sums it.
        limit = _decimal_limit(f.precision, 0)
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
            "AttributeType": "Integer",
            "AttributeTypeName": {"Value": "IntegerType"},
            **_common(f, prefix),
            "Format": "None",
            "MinValue": -int(limit),
            "MaxValue": int(limit),
        }
    if f.kind == "number":
        limit = _decimal_limit(f.precision, f.scale)
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.DecimalAttributeMetadata",
            "AttributeType": "Decimal",
            "AttributeTypeName": {"Value": "DecimalType"},
            **_common(f, prefix),
            "Precision": f.scale,
            "MinValue": -limit,
            "MaxValue": limit,
        }
    if f.kind in ("datetime", "date"):
        date_only = f.kind == "date"
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
            "AttributeType": "DateTime",
            "AttributeTypeName": {"Value": "DateTimeType"},
            **_common(f, prefix),
            "Format": "DateOnly" if date_only else "DateAndTime",
            # UTC instants: UserLocal (module docstring); a calendar day: DateOnly.
            "DateTimeBehavior": {"Value": "DateOnly" if date_only else "UserLocal"},
        }
    if f.kind == "checkbox":
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
            "AttributeType": "Boolean",
            "AttributeTypeName": {"Value": "BooleanType"},
            **_common(f, prefix),
            "DefaultValue": f.default,
            "OptionSet": {
                "TrueOption": {"Value": 1, "Label": label("Yes")},
                "FalseOption": {"Value": 0, "Label": label("No")},
                "OptionSetType": "Boolean",
            },
        }
    raise PlanError(f"{f.name}: no Dataverse column for kind {f.kind!r}")


def _attributes_path(table: str) -> str:
    return f"EntityDefinitions(LogicalName='{table}')/Attributes"


def column_request(table: str, f: ModelField, prefix: str, headers: Mapping[str, str]) -> MetadataRequest:
    """Create one column on a table."""
    body = column_body(f, prefix)
    return MetadataRequest(
        kind="column",
        table=table,
        name=physical_name(f.name, prefix),
        path=_attributes_path(table),
        body=body,
        headers=headers,
        attribute_type=str(body["AttributeType"]),
    )


def lookup_request(table: str, f: ModelField, prefix: str, headers: Mapping[str, str]) -> MetadataRequest:
    """A lookup to systemuser: a one-to-many relationship whose Lookup is the new column."""
    column = physical_name(f.name, prefix)
    relationship = f"{prefix}_systemuser_{column}_{table}"
    lookup = {
        "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
        "AttributeType": "Lookup",
        "AttributeTypeName": {"Value": "LookupType"},
        **_common(f, prefix),
    }
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": relationship,
        "ReferencedEntity": "systemuser",
        "ReferencedAttribute": "systemuserid",
        "ReferencingEntity": table,
        "AssociatedMenuConfiguration": {
            "Behavior": "UseCollectionName",
            "Group": "Details",
            "Label": label(f.label),
            "Order": 10000,
        },
        # Users are disabled rather than deleted; if one is deleted, the record keeps its row and
        # loses the link (Salesforce's SetNull), and nothing else follows the user.
        "CascadeConfiguration": {
            "Assign": "NoCascade",
            "Delete": "RemoveLink",
            "Merge": "NoCascade",
            "Reparent": "NoCascade",
            "Share": "NoCascade",
            "Unshare": "NoCascade",
        },
        "Lookup": lookup,
    }
    return MetadataRequest(
        kind="relationship",
        table=table,
        name=relationship,
        path="RelationshipDefinitions",
        body=body,
        headers=headers,
        attribute_type="Lookup",
    )


def table_request(obj: ModelObject, prefix: str, headers: Mapping[str, str]) -> MetadataRequest:
    """Create one of OnRecord's tables, with its primary name column (an autonumber)."""
    table = physical_name(obj.name, prefix)
    primary = {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "AttributeType": "String",
        "AttributeTypeName": {"Value": "StringType"},
        "SchemaName": f"{prefix}_{PRIMARY_NAME}",
        "DisplayName": label(f"{obj.label} Number"),
        "Description": label("Assigned by Dataverse when the record is created."),
        "RequiredLevel": _required_none(),
        "IsPrimaryName": True,
        "FormatName": {"Value": "Text"},
        "MaxLength": PRIMARY_NAME_LENGTH,
        "AutoNumberFormat": NAME_FORMATS.get(obj.name, "{SEQNUM:6}"),
    }
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": schema_name(obj.name, prefix),
        "DisplayName": label(f"OnRecord {obj.label}"),
        "DisplayCollectionName": label(f"OnRecord {obj.plural}"),
        "Description": label(obj.description),
        "OwnershipType": "OrganizationOwned",
        "IsActivity": False,
        "HasActivities": False,
        "HasNotes": False,
        "Attributes": [primary],
    }
    return MetadataRequest(
        kind="table", table=table, name=table, path="EntityDefinitions", body=body, headers=headers
    )


def key_request(obj: ModelObject, prefix: str, headers: Mapping[str, str]) -> MetadataRequest:
    """The alternate key on the table's key field (what OnRecord upserts by)."""
    table = physical_name(obj.name, prefix)
    key = f"{schema_name(obj.name, prefix)}_Key"
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
        "SchemaName": key,
        "DisplayName": label(f"{obj.key_field.label}"),
        "KeyAttributes": [physical_name(obj.key_field.name, prefix)],
    }
    return MetadataRequest(
        kind="key",
        table=table,
        name=key.lower(),
        path=f"EntityDefinitions(LogicalName='{table}')/Keys",
        body=body,
        headers=headers,
    )


def governed_tables(config: Config) -> list[str]:
    """The logical names of the governed tables that live in Dataverse (in configuration order)."""
    found: list[str] = []
    for governed in config.governed:
        if getattr(governed, "crm", "dataverse") != "dataverse":
            continue
        # Dataverse logical names are lower case; the configured name may be written otherwise.
        table = governed.object.lower()
        if table not in found:
            found.append(table)
    return found


def plan(config: Config, *, solution: str = "") -> list[MetadataRequest]:
    """Every request OnRecord's Dataverse metadata needs, in the order they must run. `solution`:
    the unique name of an unmanaged solution to put the new components in (its publisher's
    prefix must be `dataverse.publisher_prefix`); empty: the environment's default solution."""
    prefix = dataverse_settings(config).publisher_prefix
    headers = {SOLUTION_HEADER: solution} if solution else {}
    requests: list[MetadataRequest] = []
    fields = governed_fields(config.provenance)
    for table in governed_tables(config):
        requests.extend(column_request(table, f, prefix, headers) for f in fields)
    for obj in objects():
        table = physical_name(obj.name, prefix)
        requests.append(table_request(obj, prefix, headers))
        for f in obj.fields:
            if f.kind == "user":
                requests.append(lookup_request(table, f, prefix, headers))
            else:
                requests.append(column_request(table, f, prefix, headers))
        requests.append(key_request(obj, prefix, headers))
    return requests


README = """\
OnRecord's Dataverse metadata: {count} Web API requests, one a file, to run in their numbered order
(a column needs its table, a lookup's relationship its table, a key its column).

Each file holds the request's method, path, headers and JSON body. The path is relative to the
environment's Web API: [Organization URI]/api/data/v9.2/<path>. Send each with a bearer token of a
user or application user with the System Customizer or System Administrator role, e.g.:

    curl -X POST "https://contoso.crm.dynamics.com/api/data/v9.2/EntityDefinitions" \\
         -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json; charset=utf-8" \\
         -H "OData-Version: 4.0" --data @<file's "body">

Or let OnRecord do it: `python -m plugin provision --crm dataverse --deploy` reads what the
environment already has and creates only what is missing (running it twice creates nothing the
second time).

After applying:
- The alternate keys' indexes are built in the background (EntityKeyIndexStatus Pending, then
  Active); OnRecord's upserts by key work once they are Active.
- Give OnRecord's application user a security role that can create, read and write the OnRecord
  tables and the OnRecord columns of the governed tables, and give readers a role that can read them.

Requests:
{lines}
"""


def _file_name(number: int, request: MetadataRequest) -> str:
    what = request.table if request.kind == "table" else f"{request.table}-{request.attribute_name}"
    if request.kind == "key":
        what = f"{request.table}-{request.name}"
    return f"{number:03d}-{request.kind}-{what}.json"


def write_plan(requests: Sequence[MetadataRequest], out_dir: Path) -> list[Path]:
    """Write one JSON file per request (numbered in order) and a README.txt under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lines = []
    for number, request in enumerate(requests, start=1):
        path = out_dir / _file_name(number, request)
        path.write_text(json.dumps(request.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
        lines.append(f"  {path.name}: {request.method} {request.path} ({request.describe()})")
    readme = out_dir / "README.txt"
    readme.write_text(README.format(count=len(requests), lines="\n".join(lines)), encoding="utf-8")
    written.append(readme)
    return written


class MetadataClient(Protocol):
    """What deploy needs of the Web API client (`connectors.dataverse.webapi`)."""

    def get_all(self, path: str, params: Mapping[str, str] | None = None) -> Iterable[Mapping[str, Any]]:
        """Every row of a collection, following @odata.nextLink."""
        ...

    def post(self, path: str, json: Any, *, headers: Mapping[str, str] | None = None) -> Any:
        """POST a JSON body."""
        ...


class DeployError(RuntimeError):
    """A request Dataverse refused; `report` says what was done before it."""

    def __init__(self, message: str, report: list[str]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _Existing:
    """What the environment has, read once per table."""

    client: MetadataClient
    tables: set[str]
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> type
    keys: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # table -> key -> columns

    def columns(self, table: str) -> dict[str, str]:
        if table not in self.attributes:
            rows = self.client.get_all(_attributes_path(table), {"$select": "LogicalName,AttributeType"})
            self.attributes[table] = {
                str(r.get("LogicalName") or "").lower(): str(r.get("AttributeType") or "") for r in rows
            }
        return self.attributes[table]

    def table_keys(self, table: str) -> dict[str, list[str]]:
        if table not in self.keys:
            rows = self.client.get_all(
                f"EntityDefinitions(LogicalName='{table}')/Keys", {"$select": "LogicalName,KeyAttributes"}
            )
            self.keys[table] = {
                str(r.get("LogicalName") or "").lower(): [
                    str(a).lower() for a in r.get("KeyAttributes") or []
                ]
                for r in rows
            }
        return self.keys[table]


def deploy(config: Config, client: MetadataClient, *, solution: str = "", dry_run: bool = False) -> list[str]:
    """Create what `plan(config)` needs and the environment lacks; return what was done, one line
    a request ("created ...", "exists ...", and "conflict ..." for a column of that name and another
    type, left alone). A governed table that does not exist is reported and its columns skipped.
    Idempotent: a second run reports everything as existing. Raises DeployError (carrying the
    report so far) when Dataverse refuses a request. `dry_run`: read only, and report "would
    create ..." for what is missing."""
    requests = plan(config, solution=solution)
    tables = {
        str(r.get("LogicalName") or "").lower()
        for r in client.get_all("EntityDefinitions", {"$select": "LogicalName"})
    }
    existing = _Existing(client, tables)
    report: list[str] = []
    missing_tables: set[str] = set()
    own_tables = {r.table for r in requests if r.kind == "table"}
    for request in requests:
        table = request.table
        if table in missing_tables:
            continue
        if request.kind == "table":
            if table in existing.tables:
                report.append(f"exists {request.describe()}")
                continue
        elif table not in existing.tables and table not in own_tables:
            missing_tables.add(table)
            report.append(
                f"missing table {table}: it is governed but does not exist in this environment "
                "(check [[governed]] object); its columns were not created"
            )
            continue
        else:
            found = _found(request, existing)
            if found is not None:
                report.append(found)
                continue
        if dry_run:
            report.append(f"would create {request.describe()}")
            _remember(request, existing)
            continue
        try:
            client.post(request.path, request.body, headers=request.headers or None)
        except CrmError as exc:  # DataverseError: Dataverse's code and message
            raise DeployError(f"{request.describe()}: {exc}", report) from exc
        report.append(f"created {request.describe()}")
        _remember(request, existing)
    return report


def _found(request: MetadataRequest, existing: _Existing) -> str | None:
    """The report line when what the request creates is already there, else None."""
    table = request.table
    if request.kind == "key":
        columns = list(request.body["KeyAttributes"])
        for name, attributes in existing.table_keys(table).items():
            if name == request.name or attributes == columns:
                return f"exists {request.describe()}"
        return None
    column = request.attribute_name
    have = existing.columns(table).get(column)
    if have is None:
        return None
    if have.lower() != request.attribute_type.lower():
        return f"conflict {request.describe()}: it exists as {have}, OnRecord needs {request.attribute_type}"
    return f"exists {request.describe()}"


def _remember(request: MetadataRequest, existing: _Existing) -> None:
    """Record what a request created, so later requests see it without reading again."""
    table = request.table
    if request.kind == "table":
        existing.tables.add(table)
        primary = request.body["Attributes"][0]
        existing.attributes[table] = {str(primary["SchemaName"]).lower(): "String"}
        existing.keys[table] = {}
    elif request.kind == "key":
        existing.table_keys(table)[request.name] = list(request.body["KeyAttributes"])
    else:
        existing.columns(table)[request.attribute_name] = request.attribute_type


__all__ = [
    "SOLUTION_HEADER",
    "DeployError",
    "MetadataClient",
    "MetadataRequest",
    "PlanError",
    "column_body",
    "deploy",
    "governed_tables",
    "label",
    "plan",
    "schema_name",
    "write_plan",
]
