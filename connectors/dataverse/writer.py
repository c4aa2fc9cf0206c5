"""DataverseWriter: the CrmWriter for Microsoft Dataverse, over the Web API (webapi.py).

What goes where
- Tables: OnRecord's own objects by their physical name (`OnRecord_Violation__c` ->
  `onr_violation`, `OnRecord_Leader_Signal__c` -> `onr_leader_signal`, with the configured
  publisher prefix); a governed table by its logical name (lower case, as Dataverse spells every
  logical name). Rows are addressed through the table's entity set name, read from its
  definition (`EntityDefinitions(LogicalName='x')?$select=EntitySetName`).
- Columns: OnRecord's fields by `plugin.crm_model.physical_name` (`OnRecord_Approval__c` ->
  `onr_approval`); the governed table's own columns unchanged.
- Values by the model's field kind (`plugin.crm_model.field`):
  user -> `<navigation property>@odata.bind: "/systemusers(<guid>)"` (`null` clears it). The
  navigation property is read from the table's `ManyToOneRelationships`
  (`ReferencingEntityNavigationPropertyName`): it is case-sensitive and, for a custom lookup,
  named after the column's schema name (`onr_Leader`), not its logical name.
  https://learn.microsoft.com/power-apps/developer/data-platform/webapi/web-api-navigation-properties
  https://learn.microsoft.com/power-apps/developer/data-platform/webapi/associate-disassociate-entities-using-web-api
  datetime -> ISO 8601 in UTC with `Z` (`2025-03-01T09:30:00Z`), date -> `YYYY-MM-DD`,
  number -> a JSON number (whole when the field has no decimals), checkbox -> true/false.
  choice -> the choice's label as text. PROVISIONING MUST MATCH: OnRecord's choice columns
  (`onr_channel`, `onr_approval`) are Text (single line of text) columns, not Dataverse choice
  (picklist) columns. A picklist would need the option's integer value, per environment and per
  language of its labels, and a mapping kept in step with every provisioning; text keeps the
  value readable, filterable and the same as the other CRMs write, and OnRecord's rules are what
  guard which values appear.
- Other values: datetimes and dates as above, decimals as numbers, enums by value.

How
- `update` (by row id): `PATCH {set}({guid})` with `If-Match: *`, so a row deleted meanwhile is
  never re-created (404 instead, a dead letter).
  https://learn.microsoft.com/power-apps/developer/data-platform/webapi/perform-conditional-operations-using-web-api#prevent-create-in-upsert
- `upsert` by OnRecord's key field: `PATCH {set}(onr_key='value')` (quotes doubled), no
  If-Match, so it creates or updates by the alternate key.
  https://learn.microsoft.com/power-apps/developer/data-platform/use-alternate-key-reference-record
  https://learn.microsoft.com/power-apps/developer/data-platform/use-upsert-insert-update-record
  A key value holding one of / < > * % & : \\ ? + cannot be used in the URL (documented: such
  GET/PATCH "don't work", https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity),
  and leader-signal keys hold a colon: such rows are looked up by `$filter` on the key column
  first, then updated by id (`If-Match: *`) or created by `POST` with the key in the body.
- `MSCRM.SuppressDuplicateDetection: true` on writes: OnRecord's stamps must not be refused by
  an environment's duplicate detection rules (which answer HTTP 500 0x80040333).
  https://learn.microsoft.com/power-apps/developer/data-platform/webapi/manage-duplicate-detection-create-update
- One record: one request. More: one `$batch` (at most `max_batch` requests, `max_batch` <= 1000)
  with `Prefer: odata.continue-on-error` and no change sets. Why: each PATCH/POST is already its
  own transaction, which is all a one-request change set would add; what matters is that one
  failing record fails only itself and the others still run. The documented behaviour is that
  without `odata.continue-on-error` a batch stops at the first failure, and with it every
  request runs and the failures come back in the body; change sets are documented only as
  all-or-nothing groups, and how continue-on-error treats a failed change set is not.
  https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api
  The multipart answer becomes one RecordResult per record, in order, keeping Dataverse's code
  and message. Dead (retryable=False): 4xx that cannot succeed by trying again (400 invalid
  column or value, 403 privilege, 404 row gone, 412 ...), and 0x80040333. Retryable: 429 and
  the service protection codes (0x80072322/-2147015902, 0x80072321/-2147015903,
  0x80072326/-2147015898), 408, 5xx; a request the batch never reached.
- Whole-call failures are CrmErrors (see webapi.py): retryable for 429/5xx/timeouts/connection
  trouble, not for 400/403; a service protection 429 asking for a long wait is CrmPaused (the
  dispatcher postpones without spending attempts) and the writer sends nothing before then.
- `api_usage()`: (used, limit) of the service protection window's requests, as the last
  response's `x-ms-ratelimit-burst-remaining-xrm-requests` said
  (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from connectors.dataverse.webapi import (
    MAX_BATCH,
    BatchAnswer,
    BatchRequest,
    DataverseError,
    ServiceProtectionLimit,
    TableInfo,
    WebApiClient,
    WebApiSettings,
    entity_id,
    error_of,
    is_guid,
    odata_string,
    retryable,
)
from plugin.config import ProvenanceConfig
from plugin.crm import CrmError, RecordResult, WriteBatch
from plugin.crm_model import FieldKind, ModelField, physical_name, stem
from plugin.crm_model import field as model_field

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
KEY_UNSAFE = frozenset("/<>*%&:\\?+")  # define-alternate-keys-entity, "Unicode characters in key value"
_LOOKUP_CHUNK = 25  # keys per $filter when looking rows up by key (keeps the URL short)
_WRITE_HEADERS = {"MSCRM.SuppressDuplicateDetection": "true"}
_DUPLICATE = "0x80040237"
_QUOTE = "'"  # kept as it is in a key segment; everything else is percent-encoded


@dataclass(frozen=True)
class DataverseWriterSettings:
    api: WebApiSettings
    publisher_prefix: str = "onr"
    max_batch: int = 200  # requests per $batch
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"dataverse.max_batch: must be 1..{MAX_BATCH}, got {self.max_batch}")
        if not re.fullmatch(r"[a-z][a-z0-9]{1,7}", self.publisher_prefix):
            raise ValueError(f"dataverse.publisher_prefix: not a publisher prefix: {self.publisher_prefix!r}")


@dataclass
class _Op:
    """One record's request, and how to read its answer."""

    index: int
    request: BatchRequest
    creates: bool = False  # a POST create after a key lookup found nothing


def _utc_z(value: Any) -> Any:
    """ISO 8601 in UTC with Z, to the second (Dataverse keeps seconds); naive values are UTC,
    which is what OnRecord stores. Anything unreadable goes as it is (Dataverse says why not)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00Z"
    return value


def _date(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _number(value: Any, scale: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return value
    if not number.is_finite():
        return value
    if scale == 0 and number == number.to_integral_value():
        return int(number)
    return float(number)


def _plain(value: Any) -> Any:
    """A value of a column OnRecord's model does not define, as JSON can carry it."""
    if isinstance(value, dt.datetime):
        return _utc_z(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return _number(value, 1)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return value


def _convert(kind: FieldKind, spec: ModelField, value: Any) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        return _utc_z(value)
    if kind == "date":
        return _date(value)
    if kind == "number":
        return _number(value, spec.scale)
    if kind == "checkbox":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value
    if kind in ("choice", "text", "long_text"):
        value = _plain(value)
        return value if isinstance(value, str) else str(value)
    return _plain(value)


class DataverseWriter:
    """CrmWriter for one Dataverse environment. Thread-safe."""

    name = "dataverse"

    def __init__(self, settings: DataverseWriterSettings, *, client: WebApiClient | None = None) -> None:
        self.settings = settings
        self.max_batch = settings.max_batch
        self.client = client or WebApiClient(settings.api)
        self._lock = threading.Lock()
        self._navigation: dict[str, dict[str, tuple[str, str]]] = {}  # table -> column -> (nav, target)

    # --- CrmWriter -------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        paused = self.client.paused()
        if paused:
            return False, paused
        try:
            who = self.client.who_am_i()
        except CrmError as exc:
            return False, str(exc)
        text = f"signed in to {self.settings.api.url} as application user {who.get('UserId', '?')}"
        usage = self.api_usage()
        if usage:
            text += f"; service protection: {usage[1] - usage[0]} of {usage[1]} requests left in the window"
        return True, text

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        if not batch.records:
            return []
        if batch.operation not in ("update", "upsert"):
            raise CrmError(f"unknown operation {batch.operation!r}", retryable=False)
        table = self.client.table(self._table(batch.object))
        results: list[RecordResult | None] = [None] * len(batch.records)
        bodies: list[dict[str, Any] | None] = []
        for i, record in enumerate(batch.records):
            try:
                bodies.append(self._body(batch.object, table, record.fields))
            except (TypeError, ValueError) as exc:
                results[i] = RecordResult(ok=False, error=f"cannot write to Dataverse: {exc}")
                bodies.append(None)
        if batch.operation == "update":
            ops = self._updates(table, batch, bodies, results)
        else:
            ops = self._upserts(table, batch, bodies, results)
        self._send(table, batch.operation, ops, results)
        return [
            r if r is not None else RecordResult(ok=False, retryable=True, error="not sent") for r in results
        ]

    def read_fields(self, object: str, record_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        if not is_guid(record_id):
            return None
        table = self.client.table(self._table(object))
        chosen: dict[str, str] = {}
        for name in fields:
            column = self._column(name)
            spec = model_field(object, name, self.settings.provenance)
            chosen[name] = f"_{column}_value" if spec is not None and spec.kind == "user" else column
        params = {"$select": ",".join(dict.fromkeys(chosen.values()))} if chosen else None
        try:
            row = self.client.get(f"{table.entity_set}({record_id.lower()})", params)
        except DataverseError as exc:
            if exc.status == 404:
                return None
            raise
        if not chosen:
            return {k: v for k, v in row.items() if "@" not in k}
        return {name: row.get(column) for name, column in chosen.items()}

    # --- more ------------------------------------------------------------------------------------

    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the service protection window's requests; None before any answer."""
        return self.client.rate_limit()

    def close(self) -> None:
        self.client.close()

    # --- names and values --------------------------------------------------------------------------

    def _table(self, obj: str) -> str:
        logical = physical_name(obj, self.settings.publisher_prefix)
        if stem(obj) is None:
            logical = logical.lower()  # logical names are lower case; `Opportunity` is `opportunity`
        if not _TABLE.match(logical):
            raise CrmError(f"not a Dataverse table name: {obj!r}", retryable=False)
        return logical

    def _column(self, name: str) -> str:
        column = physical_name(name, self.settings.publisher_prefix)
        if not _COLUMN.match(column):
            raise CrmError(f"not a Dataverse column name: {name!r}", retryable=False)
        return column

    def _body(self, obj: str, table: TableInfo, fields: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, value in fields.items():
            column = self._column(name)
            spec = model_field(obj, name, self.settings.provenance)
            if spec is None:
                body[column] = _plain(value)
                continue
            if spec.kind != "user":
                body[column] = _convert(spec.kind, spec, value)
                continue
            if value is not None and not is_guid(value):
                # Only a systemuser id can be bound. Anything else (a Salesforce user id, a person
                # the directory does not know as a CRM user) would make Dataverse refuse the whole
                # record; the lookup stays as it is, and the record's text columns (the actor's
                # name) still say who it was.
                continue
            nav, target = self._nav(table.logical_name, column)
            body[f"{nav}@odata.bind"] = (
                None if value is None else f"/{self.client.entity_set(target)}({value.lower()})"
            )
        json.dumps(body)  # a value JSON cannot carry fails its record here (TypeError), not the call
        return body

    def _nav(self, table: str, column: str) -> tuple[str, str]:
        """The lookup column's single-valued navigation property and the table it points to."""
        with self._lock:
            known = self._navigation.get(table)
        if known is None:
            rows = self.client.get_all(
                f"EntityDefinitions(LogicalName={odata_string(table)})/ManyToOneRelationships",
                {"$select": "ReferencingAttribute,ReferencingEntityNavigationPropertyName,ReferencedEntity"},
            )
            known = {
                str(r["ReferencingAttribute"]): (
                    str(r["ReferencingEntityNavigationPropertyName"]),
                    str(r.get("ReferencedEntity") or "systemuser"),
                )
                for r in rows
                if r.get("ReferencingAttribute") and r.get("ReferencingEntityNavigationPropertyName")
            }
            with self._lock:
                self._navigation[table] = known
        # Unknown column: bind by its own name and let Dataverse say what is wrong, per record.
        return known.get(column, (column, "systemuser"))

    # --- requests ----------------------------------------------------------------------------------

    def _updates(
        self,
        table: TableInfo,
        batch: WriteBatch,
        bodies: list[dict[str, Any] | None],
        results: list[RecordResult | None],
    ) -> list[_Op]:
        ops = []
        for i, (record, body) in enumerate(zip(batch.records, bodies, strict=True)):
            if body is None:
                continue
            if not is_guid(record.record_key):
                results[i] = RecordResult(ok=False, error=f"not a Dataverse row id: {record.record_key!r}")
                continue
            path = f"{table.entity_set}({record.record_key.lower()})"
            ops.append(_Op(i, BatchRequest("PATCH", path, body, {"If-Match": "*", **_WRITE_HEADERS})))
        return ops

    def _upserts(
        self,
        table: TableInfo,
        batch: WriteBatch,
        bodies: list[dict[str, Any] | None],
        results: list[RecordResult | None],
    ) -> list[_Op]:
        if not batch.external_id_field:
            raise CrmError("an upsert needs the key field", retryable=False)
        key = self._column(batch.external_id_field)
        unsafe = [
            r.record_key
            for r, b in zip(batch.records, bodies, strict=True)
            if b is not None and set(r.record_key) & KEY_UNSAFE
        ]
        found = self._find_by_key(table, key, unsafe) if unsafe else {}
        ops = []
        for i, (record, body) in enumerate(zip(batch.records, bodies, strict=True)):
            if body is None:
                continue
            value = record.record_key
            if not value:
                results[i] = RecordResult(ok=False, error="an empty key cannot be upserted")
                continue
            if not set(value) & KEY_UNSAFE:
                path = f"{table.entity_set}({key}={quote(odata_string(value), safe=_QUOTE)})"
                ops.append(_Op(i, BatchRequest("PATCH", path, body, dict(_WRITE_HEADERS))))
            elif value.casefold() in found:
                path = f"{table.entity_set}({found[value.casefold()]})"
                ops.append(_Op(i, BatchRequest("PATCH", path, body, {"If-Match": "*", **_WRITE_HEADERS})))
            else:
                ops.append(
                    _Op(
                        i,
                        BatchRequest("POST", table.entity_set, {**body, key: value}, dict(_WRITE_HEADERS)),
                        creates=True,
                    )
                )
        return ops

    def _find_by_key(self, table: TableInfo, key: str, values: list[str]) -> dict[str, str]:
        """Row ids by key value (case-insensitive, like the key's uniqueness)."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(values))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            params = {
                "$select": f"{table.primary_id},{key}",
                "$filter": " or ".join(f"{key} eq {odata_string(v)}" for v in chunk),
            }
            for row in self.client.get_all(table.entity_set, params):
                if isinstance(row.get(key), str) and is_guid(row.get(table.primary_id)):
                    found[row[key].casefold()] = str(row[table.primary_id]).lower()
        return found

    def _send(
        self, table: TableInfo, operation: str, ops: list[_Op], results: list[RecordResult | None]
    ) -> None:
        if len(ops) == 1:
            op = ops[0]
            what = f"{operation} of {op.request.path}"
            try:
                response = self.client.request(
                    op.request.method,
                    op.request.path,
                    json=op.request.json,
                    headers=op.request.headers,
                    what=what,
                )
            except ServiceProtectionLimit:
                raise
            except DataverseError as exc:
                results[op.index] = RecordResult(
                    ok=False, retryable=self._retry(op, exc.status, exc.code), error=str(exc)
                )
                return
            results[op.index] = RecordResult(
                ok=True, crm_id=entity_id(response.headers.get("OData-EntityId"))
            )
            return
        for start in range(0, len(ops), self.max_batch):
            chunk = ops[start : start + self.max_batch]
            what = f"$batch {operation} of {len(chunk)} {table.logical_name} rows"
            answers = self.client.batch([op.request for op in chunk], what=what)
            for n, op in enumerate(chunk):
                results[op.index] = self._result(op, answers[n] if n < len(answers) else None)

    @staticmethod
    def _retry(op: _Op, status: int, code: str) -> bool:
        # A create after a lookup that found nothing meets the row someone created meanwhile:
        # the next attempt finds it and updates it.
        return retryable(status, code) or (op.creates and (status == 412 or code == _DUPLICATE))

    def _result(self, op: _Op, answer: BatchAnswer | None) -> RecordResult:
        if answer is None:
            return RecordResult(
                ok=False, retryable=True, error="not processed: the $batch stopped before this request"
            )
        if answer.ok:
            return RecordResult(ok=True, crm_id=answer.entity_id)
        code, message = error_of(answer.body)
        text = f"HTTP {answer.status}" + (f" {code}" if code else "") + f": {message}"
        return RecordResult(ok=False, retryable=self._retry(op, answer.status, code), error=text)


__all__ = ["DataverseWriter", "DataverseWriterSettings"]
