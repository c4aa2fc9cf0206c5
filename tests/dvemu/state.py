"""The emulated Dataverse environment: table definitions, rows, tokens, faults and the call log.

The shape is described in server.py's docstring (other engineers' route modules rely on it).
Everything here is guarded by one re-entrant lock, so tests may inject faults while the server
threads answer requests, and a $batch change set can hold the lock across its requests.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# The default service protection limit on requests per user and web server, within a 5 minute
# sliding window (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
REQUEST_LIMIT = 6000
EXECUTION_TIME_MS = 1_200_000


class Call(NamedTuple):
    """One request as the emulator saw it."""

    method: str
    path: str  # with its query string, as sent (percent-encoded) at top level, decoded in a $batch
    headers: dict[str, str]
    body: bytes
    status: int = 0
    batch: str | None = None  # the $batch boundary a request arrived inside, None at top level


@dataclass
class Token:
    """An access token the token endpoint issued."""

    value: str
    client_id: str
    scope: str
    expired: bool = False


@dataclass(frozen=True)
class Failure:
    """An answer the next top-level Web API request gets instead of its own."""

    status: int
    code: str
    message: str
    retry_after: float | None = None


@dataclass
class RecordFault:
    """Every write of one row (by id or alternate key value) fails with this Dataverse error."""

    status: int
    code: str
    message: str
    times: int | None = None  # None: until cleared


class DataverseState:
    """One environment's data. Hold `lock` to read or change anything."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.entities: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.extra: dict[str, Any] = {}
        self.calls: list[Call] = []
        self.tokens: dict[str, Token] = {}
        self.failures: list[Failure] = []
        self.record_faults: dict[str, RecordFault] = {}
        self.etags: dict[str, int] = {}  # row id -> version number (the @odata.etag)
        self.version = 1000
        self.requests_remaining = REQUEST_LIMIT
        self.max_page_size = 5000  # Dataverse's default page size for Web API queries
        self.seed()

    # --- definitions -----------------------------------------------------------------------------

    def add_entity(
        self,
        logical_name: str,
        entity_set: str,
        *,
        primary_id: str | None = None,
        primary_name: str | None = "name",
        attributes: dict[str, dict[str, Any] | str] | None = None,
        keys: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Define a table (or replace its definition, keeping its rows); return the definition."""
        pk = primary_id or f"{logical_name}id"
        attrs: dict[str, dict[str, Any]] = {pk: {"AttributeType": "Uniqueidentifier"}}
        if primary_name:
            attrs[primary_name] = {"AttributeType": "String", "MaxLength": 100}
        for name, spec in (attributes or {}).items():
            attrs[name] = {"AttributeType": spec} if isinstance(spec, str) else dict(spec)
        definition = {
            "LogicalName": logical_name,
            "EntitySetName": entity_set,
            "PrimaryIdAttribute": pk,
            "PrimaryNameAttribute": primary_name,
            "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu:{logical_name}")),
            "Attributes": attrs,
            "Keys": [dict(k) for k in keys or []],
        }
        with self.lock:
            self.entities[logical_name] = definition
            self.tables.setdefault(entity_set, {})
        return definition

    def add_attributes(self, logical_name: str, attributes: dict[str, dict[str, Any] | str]) -> None:
        """Add columns to a defined table."""
        with self.lock:
            entity = self.entities[logical_name]
            for name, spec in attributes.items():
                entity["Attributes"][name] = {"AttributeType": spec} if isinstance(spec, str) else dict(spec)

    def add_key(self, logical_name: str, schema_name: str, attributes: list[str]) -> None:
        """Add an alternate key to a defined table."""
        with self.lock:
            self.entities[logical_name]["Keys"].append(
                {"SchemaName": schema_name, "LogicalName": schema_name.lower(), "KeyAttributes": attributes}
            )

    def entity(self, logical_name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.entities.get(logical_name)

    def entity_by_set(self, entity_set: str) -> dict[str, Any] | None:
        with self.lock:
            return next((e for e in self.entities.values() if e["EntitySetName"] == entity_set), None)

    def seed(self) -> None:
        """The two tables every environment has that OnRecord reads or writes."""
        self.add_entity(
            "opportunity",
            "opportunities",
            attributes={
                "estimatedvalue": "Money",
                "estimatedclosedate": {"AttributeType": "DateTime", "Format": "DateOnly"},
                "stepname": {"AttributeType": "String", "MaxLength": 200},
                "description": {"AttributeType": "Memo", "MaxLength": 2000},
                "closeprobability": "Integer",
                "isrevenuesystemcalculated": "Boolean",
                "statuscode": "Status",
                "modifiedon": "DateTime",
            },
        )
        self.add_entity(
            "systemuser",
            "systemusers",
            primary_name="fullname",
            attributes={
                "domainname": {"AttributeType": "String", "MaxLength": 1024},
                "internalemailaddress": {"AttributeType": "String", "MaxLength": 100},
                "azureactivedirectoryobjectid": "Uniqueidentifier",
                "applicationid": "Uniqueidentifier",
                "isdisabled": "Boolean",
                "accessmode": "Picklist",
            },
        )

    # --- rows and bookkeeping --------------------------------------------------------------------

    def new_guid(self) -> str:
        return str(uuid.uuid4())

    def next_version(self) -> int:
        with self.lock:
            self.version += 1
            return self.version

    def log(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def take_failure(self) -> Failure | None:
        with self.lock:
            return self.failures.pop(0) if self.failures else None

    def record_fault(self, *identifiers: Any) -> RecordFault | None:
        """The fault injected for any of these row ids / key values (case-insensitive), spending
        one of its times."""
        with self.lock:
            for ident in identifiers:
                if ident is None:
                    continue
                fault = self.record_faults.get(str(ident).lower())
                if fault is None:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self.record_faults[str(ident).lower()]
                return fault
            return None
