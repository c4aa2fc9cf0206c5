"""Configuration from Salesforce: OnRecord's custom metadata records, read by SOQL.

`CrmSide.read_config` (plugin/registry.py) for Salesforce. Custom metadata records are queryable
like sObjects (Object Reference, "Custom Metadata Type__mdt": supported calls describeSObjects(),
query(); fields DeveloperName, MasterLabel, Label, Language, NamespacePrefix, QualifiedApiName,
the custom fields, and the audit fields CreatedById, LastModifiedById, SystemModstamp, ...). One
refresh asks, through the writer (so the API budget and re-authentication apply):

    GET sobjects/<type>/describe                     each type: which custom fields it has now
    SELECT Id, DeveloperName, LastModifiedById, SystemModstamp, <its fields> FROM <type>
        ORDER BY DeveloperName                       each of the four types
    SELECT Id, Name FROM User WHERE Id IN (...)      who last changed them, by name

Decisions:
- The describe makes a field an admin added to a type (OnRecord does not read it) visible: it is
  selected too, and a record with a value in it gets a problem on its status record, rather than
  being silently half-applied.
- Who changed a record is read by id (LastModifiedById) and named by a User query of its own,
  not through the LastModifiedBy.Name relationship: the custom metadata SOQL reference documents
  the audit fields, not relationship traversal on them, and one more query is cheap.
- The metadata relationship OnRecord_Approval_Stage__mdt.Governed__c holds the related record's
  id; it is translated to that record's DeveloperName (a DeveloperName or QualifiedApiName value
  is accepted as it is), so plugin/crm_config.py links stages by name whatever the CRM.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connectors.salesforce.ids import is_salesforce_id, to_18
from plugin.crm_config import FIELDS, GOVERNED, STAGE, TYPES, ConfigRecord

if TYPE_CHECKING:
    from connectors.salesforce.writer import SalesforceWriter
    from plugin.config import Config

Query = Callable[[str], Iterable[Mapping[str, Any]]]
Describe = Callable[[str], Sequence[str]]  # a type's field names
RECORD_FIELDS = ("Id", "DeveloperName", "LastModifiedById", "SystemModstamp")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}__c$")  # a custom field's name, nothing else
USERS_PER_QUERY = 200  # keeps the IN list far below SOQL's 100,000 characters


def type_query(type_name: str, extra: Sequence[str] = ()) -> str:
    """The SOQL for one type's records (field names from our own tables or describe: no input)."""
    fields = [*RECORD_FIELDS, *FIELDS[type_name], *(f for f in extra if f not in FIELDS[type_name])]
    return f"SELECT {', '.join(fields)} FROM {type_name} ORDER BY DeveloperName"  # noqa: S608 (names only)


def _unknown_fields(type_name: str, describe: Describe | None) -> list[str]:
    """Custom fields the type has that OnRecord does not read (an admin added them)."""
    if describe is None:
        return []
    return sorted(f for f in describe(type_name) if _API_NAME.match(f) and f not in FIELDS[type_name])


def read_records(query: Query, describe: Describe | None = None) -> list[ConfigRecord]:
    """Every OnRecord custom metadata record, as ConfigRecords (in type, then name order)."""
    rows: dict[str, list[Mapping[str, Any]]] = {}
    for type_name in TYPES:
        rows[type_name] = list(query(type_query(type_name, _unknown_fields(type_name, describe))))
    names = _user_names(query, {str(r.get("LastModifiedById") or "") for rs in rows.values() for r in rs})
    governed_names = {
        to_18(str(r["Id"])): str(r.get("DeveloperName") or "")
        for r in rows[GOVERNED]
        if is_salesforce_id(str(r.get("Id") or ""))
    }
    records = []
    for type_name in TYPES:
        for row in rows[type_name]:
            values = {k: v for k, v in row.items() if k not in RECORD_FIELDS and k != "attributes"}
            if type_name == STAGE:
                parent = str(values.get("Governed__c") or "")
                if is_salesforce_id(parent):
                    values["Governed__c"] = governed_names.get(to_18(parent), parent)
            user = str(row.get("LastModifiedById") or "")
            records.append(
                ConfigRecord(
                    type=type_name,
                    developer_name=str(row.get("DeveloperName") or ""),
                    fields=values,
                    modified_by_id=user,
                    modified_by_name=names.get(user, ""),
                    modstamp=str(row.get("SystemModstamp") or ""),
                )
            )
    return records


def _user_names(query: Query, user_ids: set[str]) -> dict[str, str]:
    ids = sorted(to_18(u) for u in user_ids if is_salesforce_id(u))
    found: dict[str, str] = {}
    for i in range(0, len(ids), USERS_PER_QUERY):
        quoted = ", ".join(f"'{u}'" for u in ids[i : i + USERS_PER_QUERY])
        # ids only, each checked by is_salesforce_id: nothing from outside goes in
        for row in query(f"SELECT Id, Name FROM User WHERE Id IN ({quoted})"):  # noqa: S608
            found[to_18(str(row["Id"]))] = str(row.get("Name") or "")
    # the records name users as the API returned them (18 characters); answer both spellings
    return {**found, **{u[:15]: n for u, n in found.items()}}


def writer_describe(writer: SalesforceWriter) -> Describe:
    """A type's field names through the writer (REST describe).

    The writer has no public describe; its `_call` gives this call the same re-authentication
    and error handling as its own (a public `describe()` on the writer would be the tidy home)."""

    def describe(type_name: str) -> Sequence[str]:
        answer = writer._call(lambda sf: sf.restful(f"sobjects/{type_name}/describe"), "describe")
        return [str(f["name"]) for f in (answer or {}).get("fields", [])]

    return describe


_writers: dict[int, tuple[Config, SalesforceWriter]] = {}
_lock = threading.Lock()


def read_config(config: Config) -> list[ConfigRecord]:
    """`CrmSide.read_config`: the records, read with one writer per configuration (reused across
    refreshes, so each refresh does not log in again)."""
    from connectors.salesforce.wiring import build_salesforce_writer

    with _lock:
        if id(config) not in _writers:
            _writers[id(config)] = (config, build_salesforce_writer(config))
        writer = _writers[id(config)][1]
    return read_records(writer.query, writer_describe(writer))


__all__ = ["RECORD_FIELDS", "read_config", "read_records", "type_query", "writer_describe"]
