"""The emulator's built-in Web API resources: WhoAmI, reading table definitions, and rows.

- `EntityDefinitions(LogicalName='x')` GET ($select), and its `/Attributes`, `/Keys`,
  `/ManyToOneRelationships` (derived from Lookup attributes) collections.
- `{set}` GET (simple $filter, $select, $top, paging by `Prefer: odata.maxpagesize` with
  `@odata.nextLink`) and POST (create).
- `{set}(<guid>)` and `{set}(key='v',...)` GET, PATCH (update, or create: an upsert, unless
  `If-Match: *`), DELETE.

Behaviour follows Microsoft's pages:
- Update and upsert, If-Match / If-None-Match: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/perform-conditional-operations-using-web-api
- Alternate keys in URLs: https://learn.microsoft.com/power-apps/developer/data-platform/use-alternate-key-reference-record
- Lookups through `<navigation property>@odata.bind` (null to clear): https://learn.microsoft.com/power-apps/developer/data-platform/webapi/associate-disassociate-entities-using-web-api
- Paging: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-data-web-api#page-results
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from tests.dvemu import odata
from tests.dvemu.odata import ODataError, json_response, no_content
from tests.dvemu.state import GUID, DataverseState

_ENTITY_DEF = re.compile(r"^EntityDefinitions\(LogicalName='(?P<name>[^']*)'\)(?:/(?P<part>\w+))?$")
_BIND = re.compile(
    r"^/?(?:https?://[^/]+/api/data/v[0-9.]+/)?(?P<set>[A-Za-z_][A-Za-z0-9_]*)\((?P<id>[^)]*)\)$"
)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_LOOKUP_TYPES = frozenset({"Lookup", "Owner", "Customer"})
_STRING_TYPES = frozenset({"String", "Memo", "EntityName"})
_INT_TYPES = frozenset({"Integer", "BigInt", "Picklist", "State", "Status"})
_NUMBER_TYPES = frozenset({"Decimal", "Double", "Money"})
_METADATA_TYPES = {
    "String": "StringAttributeMetadata",
    "Memo": "MemoAttributeMetadata",
    "Integer": "IntegerAttributeMetadata",
    "BigInt": "BigIntAttributeMetadata",
    "Decimal": "DecimalAttributeMetadata",
    "Double": "DoubleAttributeMetadata",
    "Money": "MoneyAttributeMetadata",
    "Boolean": "BooleanAttributeMetadata",
    "DateTime": "DateTimeAttributeMetadata",
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "Lookup": "LookupAttributeMetadata",
    "Owner": "LookupAttributeMetadata",
    "Customer": "LookupAttributeMetadata",
    "Uniqueidentifier": "UniqueIdentifierAttributeMetadata",
}


def _no_property(name: str, type_name: str) -> ODataError:
    return ODataError(
        400,
        odata.BAD_URI,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
    )


class Data:
    """One request against the built-in resources."""

    def __init__(
        self, state: DataverseState, request: Request, service_root: str, who: Mapping[str, str]
    ) -> None:
        self.state = state
        self.request = request
        self.root = service_root  # https://host/api/data/v9.2/
        self.who = who  # WhoAmI's answer: UserId, BusinessUnitId, OrganizationId

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, path: str) -> Response:
        try:
            return self._dispatch(path)
        except ODataError as err:
            return err.response()

    def _dispatch(self, path: str) -> Response:
        method = self.request.method
        if path in ("WhoAmI", "WhoAmI()"):
            if method != "GET":
                raise ODataError(405, "0x80060888", "The WhoAmI function must be called with GET.")
            return self._who_am_i()
        m = _ENTITY_DEF.match(path)
        if m:
            if method != "GET":
                raise ODataError(
                    405, "0x80060888", f"The emulator's built-in metadata is read-only ({method})."
                )
            return self._entity_definition(m.group("name"), m.group("part"))
        resource = odata.parse_resource(path)
        if resource is None or resource.rest is not None:
            segment = path.split("/")[0] if resource is None else f"{resource.name}/{resource.rest}"
            raise ODataError(404, odata.NO_SEGMENT, f"Resource not found for the segment '{segment}'.")
        entity = self.state.entity_by_set(resource.name)
        if entity is None:
            raise ODataError(404, odata.NO_SEGMENT, f"Resource not found for the segment '{resource.name}'.")
        if resource.key is None:
            if method == "GET":
                return self._query(entity)
            if method == "POST":
                return self._create(entity)
            raise ODataError(
                405, "0x80060888", f"{method} is not allowed on the collection '{resource.name}'."
            )
        if method == "GET":
            return self._retrieve(entity, resource.key)
        if method == "PATCH":
            return self._upsert(entity, resource.key)
        if method == "DELETE":
            return self._delete(entity, resource.key)
        raise ODataError(405, "0x80060888", f"{method} is not allowed on '{path}'.")

    # --- WhoAmI and metadata -----------------------------------------------------------------------

    def _who_am_i(self) -> Response:
        return json_response(
            {"@odata.context": f"{self.root}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", **self.who}
        )

    def _entity_definition(self, logical_name: str, part: str | None) -> Response:
        with self.state.lock:
            entity = self.state.entity(logical_name)
            if entity is None:
                # Dataverse answers 404 for a table it does not know.
                raise ODataError(
                    404, odata.NOT_FOUND, f"Could not find an entity with logical name '{logical_name}'."
                )
            entity = copy.deepcopy(entity)
        chosen = odata.select(self.request.args)
        if part is None:
            scalar = {k: v for k, v in entity.items() if k not in ("Attributes", "Keys")}
            scalar["SchemaName"] = scalar.get("SchemaName") or logical_name
            body = self._pick(scalar, chosen, "EntityMetadata", always=("MetadataId",))
            body["@odata.context"] = f"{self.root}$metadata#EntityDefinitions(LogicalName='{logical_name}')"
            return json_response(body)
        if part == "Attributes":
            rows = []
            for name, spec in entity["Attributes"].items():
                row = {"LogicalName": name, "SchemaName": spec.get("SchemaName", name), **spec}
                type_name = _METADATA_TYPES.get(spec["AttributeType"], "AttributeMetadata")
                row["@odata.type"] = f"#Microsoft.Dynamics.CRM.{type_name}"
                rows.append(row)
        elif part == "Keys":
            rows = [
                {"LogicalName": k.get("LogicalName", k["SchemaName"].lower()), **k} for k in entity["Keys"]
            ]
        elif part == "ManyToOneRelationships":
            rows = []
            for name, spec in entity["Attributes"].items():
                if spec["AttributeType"] not in _LOOKUP_TYPES:
                    continue
                for target in spec.get("Targets", []):
                    referenced = self.state.entity(target)
                    rows.append(
                        {
                            "SchemaName": f"{logical_name}_{name}_{target}",
                            "ReferencingEntity": logical_name,
                            "ReferencingAttribute": name,
                            "ReferencedEntity": target,
                            "ReferencedAttribute": referenced["PrimaryIdAttribute"]
                            if referenced
                            else f"{target}id",
                            "ReferencingEntityNavigationPropertyName": spec.get("NavigationProperty", name),
                        }
                    )
        else:
            raise ODataError(404, odata.NO_SEGMENT, f"Resource not found for the segment '{part}'.")
        return json_response(
            {
                "@odata.context": f"{self.root}$metadata#EntityDefinitions('{logical_name}')/{part}",
                "value": [self._pick(r, chosen, part) for r in rows],
            }
        )

    @staticmethod
    def _pick(
        row: Mapping[str, Any], chosen: list[str] | None, type_name: str, always: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if chosen is None:
            return dict(row)
        out = {k: row[k] for k in always if k in row}
        out.update({k: v for k, v in row.items() if k.startswith("@")})
        for name in chosen:
            if name not in row:
                raise _no_property(name, type_name)
            out[name] = row[name]
        return out

    # --- rows: reading -----------------------------------------------------------------------------

    def _row_json(
        self, entity: Mapping[str, Any], row: Mapping[str, Any], chosen: list[str] | None
    ) -> dict[str, Any]:
        pk = entity["PrimaryIdAttribute"]
        attrs = entity["Attributes"]
        view: dict[str, Any] = {}
        for name, value in row.items():
            kind = attrs.get(name, {}).get("AttributeType")
            view[f"_{name}_value" if kind in _LOOKUP_TYPES else name] = value
        if chosen is not None:
            for name in chosen:
                if not self._known(entity, name):
                    raise _no_property(name, entity["LogicalName"])
            view = {k: view.get(k) for k in chosen}
            view[pk] = row[pk]
        out = {"@odata.etag": f'W/"{self.state.etags.get(row[pk], 0)}"'}
        out.update(view)
        return out

    @staticmethod
    def _known(entity: Mapping[str, Any], name: str) -> bool:
        attrs = entity["Attributes"]
        if name in attrs:
            return attrs[name]["AttributeType"] not in _LOOKUP_TYPES
        m = re.match(r"^_(?P<n>.+)_value$", name)
        return bool(m and attrs.get(m.group("n"), {}).get("AttributeType") in _LOOKUP_TYPES)

    def _query(self, entity: Mapping[str, Any]) -> Response:
        args = self.request.args
        chosen = odata.select(args)
        where = args.get("$filter")
        try:
            predicate = odata.parse_filter(where) if where else None
        except ValueError as exc:
            raise ODataError(400, odata.BAD_URI, str(exc)) from exc
        for name in odata.attributes_named(where or ""):
            if not self._known(entity, name):
                raise _no_property(name, entity["LogicalName"])
        with self.state.lock:
            rows = list(self.state.tables.get(entity["EntitySetName"], {}).values())
            views = []
            for row in rows:
                flat = self._row_json(entity, row, None)
                if predicate is None or predicate(flat):
                    views.append(self._row_json(entity, row, chosen))
        top = args.get("$top")
        if top is not None:
            views = views[: int(top)]
        page_size = self.state.max_page_size
        prefer = self.request.headers.get("Prefer", "")
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        headers = {}
        if m:
            page_size = min(int(m.group(1)), page_size)
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        skip = int(args.get("$skiptoken", "0"))
        page = views[skip : skip + page_size]
        body: dict[str, Any] = {
            "@odata.context": f"{self.root}$metadata#{entity['EntitySetName']}",
            "value": page,
        }
        if skip + page_size < len(views):
            params = [(k, v) for k, v in args.items(multi=True) if k != "$skiptoken"]
            params.append(("$skiptoken", str(skip + page_size)))
            body["@odata.nextLink"] = f"{self.root}{entity['EntitySetName']}?{urlencode(params)}"
        return json_response(body, headers=headers)

    def _find(self, entity: Mapping[str, Any], key_text: str) -> tuple[str | None, dict[str, Any]]:
        """(row id or None, key values) for a key segment; raises for keys Dataverse refuses."""
        try:
            key = odata.parse_key(key_text)
        except ValueError as exc:
            raise ODataError(400, odata.BAD_URI, f"Bad Request - Error in query syntax. ({exc})") from exc
        pk = entity["PrimaryIdAttribute"]
        table = self.state.tables.setdefault(entity["EntitySetName"], {})
        if isinstance(key, str):
            return (key if key in table else None), {pk: key}
        if set(key) == {pk} and isinstance(key[pk], str) and GUID.match(key[pk]):
            guid = key[pk].lower()
            return (guid if guid in table else None), {pk: guid}
        declared = [set(k["KeyAttributes"]) for k in entity["Keys"]]
        if set(key) not in declared:
            name = f"Microsoft.Dynamics.CRM.{entity['LogicalName']}"
            raise ODataError(
                400,
                odata.BAD_URI,
                f"The key in the request URI is not valid for resource '{name}'. Ensure that the names "
                "and number of key properties match the declared or alternate key properties for the "
                f"resource '{name}'.",
            )
        for value in key.values():
            if isinstance(value, str) and set(value) & odata.KEY_UNSAFE:
                # Documented to fail (define-alternate-keys-entity: "Unicode characters in key value");
                # the emulator answers it the way a URL it cannot route is answered.
                raise ODataError(
                    404,
                    odata.NO_SEGMENT,
                    f"Resource not found for the segment '{entity['EntitySetName']}({key_text})'.",
                )
        for guid, row in table.items():
            if all(_same(row.get(k), v) for k, v in key.items()):
                return guid, dict(key)
        return None, dict(key)

    def _retrieve(self, entity: Mapping[str, Any], key_text: str) -> Response:
        with self.state.lock:
            guid, key = self._find(entity, key_text)
            if guid is None:
                raise self._missing(entity, key)
            row = self.state.tables[entity["EntitySetName"]][guid]
            body = self._row_json(entity, row, odata.select(self.request.args))
        body["@odata.context"] = f"{self.root}$metadata#{entity['EntitySetName']}/$entity"
        return json_response(body)

    @staticmethod
    def _missing(entity: Mapping[str, Any], key: Mapping[str, Any]) -> ODataError:
        pk = entity["PrimaryIdAttribute"]
        if set(key) == {pk}:
            return ODataError(
                404, odata.NOT_FOUND, f"{entity['LogicalName']} With Id = {key[pk]} Does Not Exist"
            )
        return ODataError(
            404,
            odata.NOT_FOUND,
            f"A record with the specified key values does not exist in {entity['LogicalName']} entity",
        )

    # --- rows: writing -----------------------------------------------------------------------------

    def _body(self, entity: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.request.get_data(cache=True)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise odata.payload_error(entity["EntitySetName"], f"Invalid JSON. {exc}") from exc
        if not isinstance(body, dict):
            raise odata.payload_error(entity["EntitySetName"], "The payload must be a JSON object.")
        return body

    def _values(self, entity: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        """The row values a request body sets, checked the way Dataverse checks them."""
        entity_set = entity["EntitySetName"]
        logical = entity["LogicalName"]
        attrs = entity["Attributes"]
        navigation = {
            spec.get("NavigationProperty", name): (name, spec)
            for name, spec in attrs.items()
            if spec["AttributeType"] in _LOOKUP_TYPES
        }
        out: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata."):
                continue
            if name.endswith("@odata.bind"):
                nav = name[: -len("@odata.bind")]
                if nav not in navigation:
                    raise odata.payload_error(
                        entity_set,
                        f"An undeclared property '{nav}' which only has property annotations in the "
                        "payload but no property value was found in the payload. In OData, only declared "
                        "navigation properties and declared named streams can be represented as "
                        "properties without values.",
                    )
                attr, spec = navigation[nav]
                out[attr] = self._bind(spec, value, entity_set)
                continue
            spec = attrs.get(name)
            if spec is None:
                raise odata.payload_error(
                    entity_set,
                    f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{logical}'. "
                    "Make sure to only use property names that are defined by the type or mark the "
                    "type as open type.",
                )
            kind = spec["AttributeType"]
            if kind in _LOOKUP_TYPES:
                raise odata.payload_error(
                    entity_set,
                    "A 'PrimitiveValue' node with non-null value was found when trying to read the "
                    "value of a navigation property; however, a 'StartArray' node, a 'StartObject' "
                    "node, or a 'PrimitiveValue' node with null value was expected.",
                )
            out[name] = self._checked(entity, name, spec, value)
        return out

    def _bind(self, spec: Mapping[str, Any], value: Any, entity_set: str) -> str | None:
        if value is None:
            return None
        m = _BIND.match(value) if isinstance(value, str) else None
        if m is None or not GUID.match(m.group("id")):
            raise odata.payload_error(
                entity_set, f"The @odata.bind value {value!r} is not a valid entity reference."
            )
        target = self.state.entity_by_set(m.group("set"))
        if target is None or target["LogicalName"] not in spec.get("Targets", []):
            raise odata.payload_error(
                entity_set, f"The @odata.bind value {value!r} is not a valid entity reference."
            )
        guid = m.group("id").lower()
        if guid not in self.state.tables.get(target["EntitySetName"], {}):
            raise ODataError(404, odata.NOT_FOUND, f"{target['LogicalName']} With Id = {guid} Does Not Exist")
        return guid

    def _checked(self, entity: Mapping[str, Any], name: str, spec: Mapping[str, Any], value: Any) -> Any:
        if value is None:
            return None
        kind = spec["AttributeType"]
        entity_set = entity["EntitySetName"]

        def wrong(edm: str) -> ODataError:
            return odata.payload_error(
                entity_set, f"Cannot convert the literal '{value}' to the expected type '{edm}'."
            )

        if kind in _STRING_TYPES:
            if not isinstance(value, str):
                raise wrong("Edm.String")
            limit = spec.get("MaxLength")
            if limit and len(value) > int(limit):
                raise ODataError(
                    400,
                    odata.TOO_LONG,
                    f"A validation error occurred.  The length of the '{name}' attribute of the "
                    f"'{entity['LogicalName']}' entity exceeded the maximum allowed length of '{limit}'.",
                )
        elif kind in _INT_TYPES:
            if isinstance(value, bool) or not isinstance(value, int):
                raise wrong("Edm.Int32")
        elif kind in _NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise wrong("Edm.Decimal")
        elif kind == "Boolean":
            if not isinstance(value, bool):
                raise wrong("Edm.Boolean")
        elif kind == "DateTime":
            date_only = spec.get("Format") == "DateOnly"
            pattern = _DATE_ONLY if date_only else _DATE_TIME
            if not isinstance(value, str) or not pattern.match(value):
                raise wrong("Edm.Date" if date_only else "Edm.DateTimeOffset")
            if not date_only:
                dt.datetime.fromisoformat(value)  # a real date and time
        elif kind == "Uniqueidentifier":
            if not isinstance(value, str) or not GUID.match(value):
                raise wrong("Edm.Guid")
            value = value.lower()
        return value

    def _fault(
        self, entity: Mapping[str, Any], guid: str | None, key: Mapping[str, Any], values: Mapping[str, Any]
    ) -> None:
        identifiers: list[Any] = [guid, *key.values()]
        for k in entity["Keys"]:
            identifiers += [values.get(a) for a in k["KeyAttributes"]]
        fault = self.state.record_fault(*identifiers)
        if fault is not None:
            raise ODataError(fault.status, fault.code, fault.message)

    def _create(self, entity: Mapping[str, Any]) -> Response:
        values = self._values(entity, self._body(entity))
        pk = entity["PrimaryIdAttribute"]
        with self.state.lock:
            guid = values.pop(pk, None) or self.state.new_guid()
            self._fault(entity, guid, {}, values)
            table = self.state.tables.setdefault(entity["EntitySetName"], {})
            if guid in table or self._key_taken(entity, values, None):
                raise ODataError(
                    412, odata.DUPLICATE_KEY, "A record with matching key values already exists."
                )
            table[guid] = {pk: guid, **values}
            self.state.etags[guid] = self.state.next_version()
            return self._written(entity, guid, created=True, status_with_body=201)

    def _key_taken(self, entity: Mapping[str, Any], values: Mapping[str, Any], own: str | None) -> bool:
        table = self.state.tables.get(entity["EntitySetName"], {})
        for k in entity["Keys"]:
            names = k["KeyAttributes"]
            if not all(values.get(n) is not None for n in names):
                continue
            for guid, row in table.items():
                if guid != own and all(_same(row.get(n), values[n]) for n in names):
                    return True
        return False

    def _upsert(self, entity: Mapping[str, Any], key_text: str) -> Response:
        headers = self.request.headers
        if_match = headers.get("If-Match")
        if_none_match = headers.get("If-None-Match")
        pk = entity["PrimaryIdAttribute"]
        values = self._values(entity, self._body(entity))
        with self.state.lock:
            guid, key = self._find(entity, key_text)
            self._fault(entity, guid, key, values)
            table = self.state.tables[entity["EntitySetName"]]
            if guid is None:
                if if_match is not None:  # "Prevent create in upsert"
                    raise self._missing(entity, key)
                guid = key.get(pk) or values.get(pk) or self.state.new_guid()
                row = {**{k: v for k, v in key.items() if k != pk}, **values, pk: guid}
                if self._key_taken(entity, row, None):
                    raise ODataError(
                        412, odata.DUPLICATE_KEY, "A record with matching key values already exists."
                    )
                table[guid] = row
                created = True
            else:
                if if_none_match == "*":  # "Prevent update in upsert"
                    raise ODataError(
                        412, odata.DUPLICATE_KEY, "A record with matching key values already exists."
                    )
                if if_match not in (None, "*") and if_match != f'W/"{self.state.etags.get(guid, 0)}"':
                    raise ODataError(
                        412,
                        odata.VERSION_MISMATCH,
                        "The version of the existing record doesn't match the RowVersion property provided.",
                    )
                row = dict(table[guid])
                row.update({k: v for k, v in values.items() if k != pk})
                if self._key_taken(entity, row, guid):
                    raise ODataError(
                        412, odata.DUPLICATE_KEY, "A record with matching key values already exists."
                    )
                table[guid] = row
                created = False
            self.state.etags[guid] = self.state.next_version()
            return self._written(entity, guid, created=created, status_with_body=200)

    def _written(
        self, entity: Mapping[str, Any], guid: str, *, created: bool, status_with_body: int
    ) -> Response:
        url = f"{self.root}{entity['EntitySetName']}({guid})"
        if "return=representation" in self.request.headers.get("Prefer", ""):
            row = self.state.tables[entity["EntitySetName"]][guid]
            body = self._row_json(entity, row, odata.select(self.request.args))
            body["@odata.context"] = f"{self.root}$metadata#{entity['EntitySetName']}/$entity"
            return json_response(body, status_with_body, {"OData-EntityId": url})
        return no_content(url, created=created)

    def _delete(self, entity: Mapping[str, Any], key_text: str) -> Response:
        with self.state.lock:
            guid, key = self._find(entity, key_text)
            if guid is None:
                raise self._missing(entity, key)
            del self.state.tables[entity["EntitySetName"]][guid]
            self.state.etags.pop(guid, None)
        return no_content()


def _same(a: Any, b: Any) -> bool:
    """Key values compare case-insensitively (Dataverse's collation)."""
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return bool(a == b)
