"""The emulator's metadata writes: creating tables, columns, one-to-many relationships (lookups)
and alternate keys through the Web API, refused the way Dataverse refuses a bad definition.

`register(app, state)` (server.py's extension contract) serves

    GET  /api/data/v<version>/EntityDefinitions                                 ($select, simple $filter)
    POST /api/data/v<version>/EntityDefinitions                                 EntityMetadata
    POST /api/data/v<version>/EntityDefinitions(LogicalName='x')/Attributes     <Type>AttributeMetadata
    POST /api/data/v<version>/EntityDefinitions(LogicalName='x')/Keys           EntityKeyMetadata
    POST /api/data/v<version>/RelationshipDefinitions                           OneToManyRelationshipMetadata

(GET of one definition, its Attributes and Keys is the built-in data route's.) What is created
lands in `state.entities` in the shape server.py documents, so the built-in routes read and write
the new tables and columns at once. Each POST answers 204 with OData-EntityId, as Dataverse does.

What is checked, after Microsoft's pages
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api,
.../create-update-column-definitions-using-web-api, .../create-update-entity-relationships-using-web-api,
https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity):
- SchemaName is required, and must start with a customization prefix: the prefix of the publisher
  of the solution named by `MSCRM.SolutionUniqueName`, or without that header one of the
  environment's publishers' prefixes ("Custom attribute names must start with a valid
  customization prefix", as Dataverse words it); an unknown solution is refused.
- A table needs exactly one primary name column (a StringAttributeMetadata with IsPrimaryName),
  DisplayName and DisplayCollectionName labels (LocalizedLabels), a known OwnershipType.
- A name already in use (table, column, relationship, key) is refused with 0x80044363, the code
  public tooling sees for "the schema name is not unique"; the other refusals use 0x80040203
  (InvalidArgument), since Microsoft's pages show no code for them.
- Columns: String MaxLength 1-4000; Memo MaxLength 1-1,048,576; Integer within Int32; Decimal
  Precision 0-10, values within ±100,000,000,000; DateTime DateTimeBehavior UserLocal, DateOnly or
  TimeZoneIndependent (DateOnly behaviour needs the DateOnly format); Boolean an OptionSet with a
  TrueOption and a FalseOption.
- Relationships: only one-to-many; both tables must exist; the Lookup needs its own prefixed
  SchemaName; the lookup's navigation property is named after that SchemaName.
- Keys: 1-16 existing columns of the types Dataverse allows in a key (Decimal, Integer, String,
  DateTime, Lookup, Picklist); at most ten keys a table. The index is built at once: the key is
  "Active", or "Failed" when the rows already stored repeat a key value.

State: `state.extra["metadata"]` = {"publishers": {prefix: name}, "solutions": {unique name:
prefix}, "relationships": {schema name lower: definition}}; `add_publisher` and `add_solution` set
them up (an environment starts with the publishers "new" and "onr" and the solution "OnRecord").
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, request
from werkzeug.wrappers import Response

from tests.dvemu import odata
from tests.dvemu.odata import ODataError, json_response, no_content
from tests.dvemu.people import unknown_property
from tests.dvemu.state import DataverseState

KEY = "metadata"
NOT_UNIQUE = "0x80044363"
INVALID_ARGUMENT = "0x80040203"
SOLUTION_HEADER = "MSCRM.SolutionUniqueName"
OWNERSHIP_TYPES = frozenset({"UserOwned", "OrganizationOwned", "TeamOwned", "BusinessOwned", "None"})
DATETIME_BEHAVIORS = frozenset({"UserLocal", "DateOnly", "TimeZoneIndependent"})
KEY_TYPES = frozenset({"Decimal", "Integer", "String", "DateTime", "Lookup", "Picklist"})
MAX_KEYS = 10
MAX_KEY_COLUMNS = 16
DECIMAL_LIMIT = 100_000_000_000
INT32 = (-2_147_483_648, 2_147_483_647)
_NAME = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z0-9]*)_(?P<rest>[A-Za-z0-9_]+)$")
_COLUMN_TYPES = {  # @odata.type -> AttributeType
    "StringAttributeMetadata": "String",
    "MemoAttributeMetadata": "Memo",
    "IntegerAttributeMetadata": "Integer",
    "DecimalAttributeMetadata": "Decimal",
    "DoubleAttributeMetadata": "Double",
    "MoneyAttributeMetadata": "Money",
    "DateTimeAttributeMetadata": "DateTime",
    "BooleanAttributeMetadata": "Boolean",
    "PicklistAttributeMetadata": "Picklist",
}


def _store(state: DataverseState) -> dict[str, Any]:
    with state.lock:
        return state.extra.setdefault(  # type: ignore[no-any-return]
            KEY,
            {
                "publishers": {"new": "Default Publisher", "onr": "OnRecord"},
                "solutions": {"OnRecord": "onr"},
                "relationships": {},
            },
        )


def add_publisher(state: DataverseState, prefix: str, name: str = "") -> None:
    """A publisher with this customization prefix."""
    with state.lock:
        _store(state)["publishers"][prefix.lower()] = name or prefix


def add_solution(state: DataverseState, unique_name: str, prefix: str) -> None:
    """An unmanaged solution whose publisher has this prefix (the publisher is added too)."""
    with state.lock:
        add_publisher(state, prefix)
        _store(state)["solutions"][unique_name] = prefix.lower()


def relationships(state: DataverseState) -> dict[str, dict[str, Any]]:
    """The relationships created through the API, by lower-case schema name."""
    with state.lock:
        return dict(_store(state)["relationships"])


# --- checks --------------------------------------------------------------------------------------


def _bad(message: str) -> ODataError:
    return ODataError(400, INVALID_ARGUMENT, message)


def _body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    return body


def _type_name(body: Mapping[str, Any]) -> str:
    return str(body.get("@odata.type") or "").removeprefix("#").removeprefix("Microsoft.Dynamics.CRM.")


def _label(body: Mapping[str, Any], name: str, *, required: bool) -> None:
    value = body.get(name)
    if value is None and not required:
        return
    labels = value.get("LocalizedLabels") if isinstance(value, dict) else None
    if not labels or not all(
        isinstance(item, dict)
        and isinstance(item.get("Label"), str)
        and isinstance(item.get("LanguageCode"), int)
        for item in labels
    ):
        raise _bad(f"{name} must be a Label with LocalizedLabels ({{Label, LanguageCode}}).")


def _schema(state: DataverseState, body: Mapping[str, Any], what: str) -> str:
    """The SchemaName, checked: present, and prefixed as the publisher requires."""
    schema = body.get("SchemaName")
    if not isinstance(schema, str) or not schema.strip():
        raise _bad(f"SchemaName is required to create a {what}.")
    m = _NAME.match(schema)
    store = _store(state)
    solution = request.headers.get(SOLUTION_HEADER)
    if solution is not None:
        if solution not in store["solutions"]:
            raise ODataError(404, odata.NOT_FOUND, f"solution With unique name = {solution} Does Not Exist")
        allowed = {store["solutions"][solution]}
    else:
        allowed = set(store["publishers"])
    if m is None or m.group("prefix").lower() not in allowed:
        raise _bad(
            f"Invalid name for {what} {schema}. Custom {what} names must start with a valid customization "
            "prefix. The prefix for a solution component should match the prefix that is specified for "
            "the publisher of the solution."
        )
    return schema


def _taken(kind: str, schema: str) -> ODataError:
    return ODataError(
        400,
        NOT_UNIQUE,
        f"The schema name {schema} for type {kind} is not unique. "
        f"An {kind} with the same name already exists.",
    )


def _entity(state: DataverseState, logical_name: str) -> dict[str, Any]:
    entity = state.entity(logical_name)
    if entity is None:
        raise ODataError(
            404, odata.NOT_FOUND, f"Could not find an entity with logical name '{logical_name}'."
        )
    return entity


def _plural(name: str) -> str:
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return f"{name}es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return f"{name[:-1]}ies"
    return f"{name}s"


def column_spec(state: DataverseState, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(logical name, the emulator's attribute definition) of an AttributeMetadata body, checked."""
    type_name = _type_name(body)
    kind = _COLUMN_TYPES.get(type_name)
    if kind is None:
        raise _bad(f"The emulator cannot create a column of type {type_name or '(no @odata.type)'}.")
    if body.get("AttributeType") not in (None, kind):
        raise _bad(f"AttributeType {body.get('AttributeType')} does not match {type_name}.")
    schema = _schema(state, body, "attribute")
    _label(body, "DisplayName", required=True)
    _label(body, "Description", required=False)
    spec: dict[str, Any] = {"AttributeType": kind, "SchemaName": schema}
    if kind in ("String", "Memo"):
        limit = 4000 if kind == "String" else 1_048_576
        length = body.get("MaxLength")
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= limit:
            raise _bad(f"MaxLength of {schema} must be a whole number from 1 to {limit}.")
        spec["MaxLength"] = length
        if body.get("AutoNumberFormat"):
            spec["AutoNumberFormat"] = body["AutoNumberFormat"]
    elif kind == "Integer":
        low, high = body.get("MinValue", INT32[0]), body.get("MaxValue", INT32[1])
        if not all(isinstance(v, int) and INT32[0] <= v <= INT32[1] for v in (low, high)) or low > high:
            raise _bad(
                f"MinValue and MaxValue of {schema} must be whole numbers within Int32, MinValue first."
            )
        spec.update(MinValue=low, MaxValue=high)
    elif kind == "Decimal":
        precision = body.get("Precision", 2)
        low, high = body.get("MinValue", -DECIMAL_LIMIT), body.get("MaxValue", DECIMAL_LIMIT)
        if not isinstance(precision, int) or not 0 <= precision <= 10:
            raise _bad(f"Precision of {schema} must be from 0 to 10.")
        if not all(isinstance(v, int | float) and abs(v) <= DECIMAL_LIMIT for v in (low, high)) or low > high:
            raise _bad(f"MinValue and MaxValue of {schema} must be within ±100,000,000,000, MinValue first.")
        spec.update(Precision=precision, MinValue=low, MaxValue=high)
    elif kind == "DateTime":
        behavior = (body.get("DateTimeBehavior") or {"Value": "UserLocal"}).get("Value")
        fmt = body.get("Format") or "DateAndTime"
        if behavior not in DATETIME_BEHAVIORS or fmt not in ("DateOnly", "DateAndTime"):
            raise _bad(f"{schema}: DateTimeBehavior {behavior!r} / Format {fmt!r} is not valid.")
        if behavior == "DateOnly" and fmt != "DateOnly":
            raise _bad(f"{schema}: the DateOnly behavior needs the DateOnly format.")
        spec.update(DateTimeBehavior=behavior)
        if fmt == "DateOnly":
            spec["Format"] = "DateOnly"
    elif kind == "Boolean":
        options = body.get("OptionSet")
        if not isinstance(options, dict) or not all(
            isinstance(options.get(o), dict) and "Value" in options[o] for o in ("TrueOption", "FalseOption")
        ):
            raise _bad(f"{schema}: a Boolean column needs an OptionSet with TrueOption and FalseOption.")
        spec["DefaultValue"] = bool(body.get("DefaultValue", False))
    return schema.lower(), spec


def _add_column(state: DataverseState, entity: dict[str, Any], logical: str, spec: dict[str, Any]) -> None:
    if logical in entity["Attributes"]:
        raise _taken("Attribute", spec["SchemaName"])
    entity["Attributes"][logical] = spec


# --- routes --------------------------------------------------------------------------------------


def register(app: Flask, state: DataverseState) -> None:
    """Serve the metadata writes (and the EntityDefinitions collection)."""

    def root(version: str) -> str:
        return f"{request.host_url}api/data/v{version}/"

    def answer(handler: Any) -> Response:
        try:
            response: Response = handler()
            return response
        except ODataError as err:
            return err.response()

    @app.route("/api/data/v<version>/EntityDefinitions", methods=["GET"])
    def list_tables(version: str) -> Response:
        def handle() -> Response:
            chosen = odata.select(request.args)
            where = request.args.get("$filter")
            try:
                predicate = odata.parse_filter(where) if where else None
            except ValueError as exc:
                raise ODataError(400, odata.BAD_URI, str(exc)) from exc
            rows = []
            with state.lock:
                for entity in state.entities.values():
                    row = {k: v for k, v in entity.items() if k not in ("Attributes", "Keys")}
                    row["SchemaName"] = row.get("SchemaName") or row["LogicalName"]
                    if predicate is None or predicate(row):
                        rows.append(row)
            if chosen is not None:
                for name in chosen:
                    if not any(name in r for r in rows) and name not in ("LogicalName", "SchemaName"):
                        raise unknown_property(name, "EntityMetadata")
                rows = [{"MetadataId": r["MetadataId"], **{k: r.get(k) for k in chosen}} for r in rows]
            return json_response(
                {"@odata.context": f"{root(version)}$metadata#EntityDefinitions", "value": rows}
            )

        return answer(handle)

    @app.route("/api/data/v<version>/EntityDefinitions", methods=["POST"])
    def create_table(version: str) -> Response:
        def handle() -> Response:
            body = _body()
            if _type_name(body) not in ("", "EntityMetadata"):
                raise _bad(f"Expected an EntityMetadata, not {_type_name(body)}.")
            with state.lock:
                schema = _schema(state, body, "entity")
                logical = schema.lower()
                _label(body, "DisplayName", required=True)
                _label(body, "DisplayCollectionName", required=True)
                _label(body, "Description", required=False)
                ownership = body.get("OwnershipType")
                if ownership not in OWNERSHIP_TYPES:
                    raise _bad(f"OwnershipType must be one of {sorted(OWNERSHIP_TYPES)}.")
                if state.entity(logical) is not None:
                    raise _taken("Entity", schema)
                attributes = body.get("Attributes") or []
                primary = [a for a in attributes if isinstance(a, dict) and a.get("IsPrimaryName")]
                if len(primary) != 1 or _type_name(primary[0]) not in ("", "StringAttributeMetadata"):
                    raise _bad(
                        "The entity must include exactly one primary name attribute: a "
                        "StringAttributeMetadata with IsPrimaryName true."
                    )
                columns = [
                    column_spec(state, {"@odata.type": "StringAttributeMetadata", **a}) for a in attributes
                ]
                entity_set = _plural(logical)
                if state.entity_by_set(entity_set) is not None:
                    raise _taken("Entity", schema)
                primary_name = str(primary[0]["SchemaName"]).lower()
                entity = state.add_entity(logical, entity_set, primary_name=None)
                for name, spec in columns:
                    _add_column(state, entity, name, spec)
                entity.update(
                    SchemaName=schema,
                    PrimaryNameAttribute=primary_name,
                    OwnershipType=ownership,
                    DisplayName=body["DisplayName"],
                    DisplayCollectionName=body["DisplayCollectionName"],
                    IsCustomEntity=True,
                )
                metadata_id = entity["MetadataId"]
            return no_content(f"{root(version)}EntityDefinitions({metadata_id})")

        return answer(handle)

    @app.route("/api/data/v<version>/EntityDefinitions(LogicalName='<name>')/Attributes", methods=["POST"])
    def create_column(version: str, name: str) -> Response:
        def handle() -> Response:
            body = _body()
            with state.lock:
                entity = _entity(state, name)
                if _type_name(body) == "LookupAttributeMetadata":
                    raise _bad("Create a lookup column with its relationship (POST RelationshipDefinitions).")
                logical, spec = column_spec(state, body)
                _add_column(state, entity, logical, spec)
                attribute_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu:{name}.{logical}"))
            return no_content(
                f"{root(version)}EntityDefinitions(LogicalName='{name}')/Attributes({attribute_id})"
            )

        return answer(handle)

    @app.route("/api/data/v<version>/RelationshipDefinitions", methods=["POST"])
    def create_relationship(version: str) -> Response:
        def handle() -> Response:
            body = _body()
            if _type_name(body) != "OneToManyRelationshipMetadata":
                raise _bad(
                    "Include @odata.type Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata (the emulator "
                    "creates only one-to-many relationships)."
                )
            with state.lock:
                schema = _schema(state, body, "relationship")
                store = _store(state)
                if schema.lower() in store["relationships"]:
                    raise _taken("Relationship", schema)
                referenced = _entity(state, str(body.get("ReferencedEntity") or ""))
                referencing = _entity(state, str(body.get("ReferencingEntity") or ""))
                attribute = body.get("ReferencedAttribute") or referenced["PrimaryIdAttribute"]
                if attribute != referenced["PrimaryIdAttribute"]:
                    raise _bad(f"ReferencedAttribute must be {referenced['PrimaryIdAttribute']}.")
                lookup = body.get("Lookup")
                if not isinstance(lookup, dict) or _type_name(lookup) not in ("", "LookupAttributeMetadata"):
                    raise _bad("Lookup must be the LookupAttributeMetadata of the new lookup column.")
                lookup_schema = _schema(state, lookup, "attribute")
                _label(lookup, "DisplayName", required=True)
                cascade = body.get("CascadeConfiguration")
                if cascade is not None and not isinstance(cascade, dict):
                    raise _bad("CascadeConfiguration must be an object.")
                spec = {
                    "AttributeType": "Lookup",
                    "SchemaName": lookup_schema,
                    "Targets": [referenced["LogicalName"]],
                    # Dataverse names a custom lookup's navigation property after its SchemaName.
                    "NavigationProperty": lookup_schema,
                }
                _add_column(state, referencing, lookup_schema.lower(), spec)
                store["relationships"][schema.lower()] = dict(body)
                relationship_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu:relationship:{schema.lower()}"))
            return no_content(f"{root(version)}RelationshipDefinitions({relationship_id})")

        return answer(handle)

    @app.route("/api/data/v<version>/EntityDefinitions(LogicalName='<name>')/Keys", methods=["POST"])
    def create_key(version: str, name: str) -> Response:
        def handle() -> Response:
            body = _body()
            if _type_name(body) not in ("", "EntityKeyMetadata"):
                raise _bad(f"Expected an EntityKeyMetadata, not {_type_name(body)}.")
            with state.lock:
                entity = _entity(state, name)
                schema = _schema(state, body, "key")
                _label(body, "DisplayName", required=False)
                columns = body.get("KeyAttributes")
                if not isinstance(columns, list) or not 1 <= len(columns) <= MAX_KEY_COLUMNS:
                    raise _bad(f"KeyAttributes must name 1 to {MAX_KEY_COLUMNS} columns.")
                for column in columns:
                    spec = entity["Attributes"].get(str(column))
                    if spec is None:
                        raise _bad(f"The key attribute {column} does not exist on {name}.")
                    if spec["AttributeType"] not in KEY_TYPES:
                        raise _bad(
                            f"{column} is a {spec['AttributeType']} column, which cannot be part of a key."
                        )
                keys = entity["Keys"]
                if any(k.get("LogicalName", k["SchemaName"].lower()) == schema.lower() for k in keys):
                    raise _taken("EntityKey", schema)
                if any(sorted(k["KeyAttributes"]) == sorted(columns) for k in keys):
                    raise _bad(f"A key with the columns {columns} already exists on {name}.")
                if len(keys) >= MAX_KEYS:
                    raise _bad(f"A table can have at most {MAX_KEYS} alternate keys.")
                rows = state.tables.get(entity["EntitySetName"], {}).values()
                values = [tuple(str(r.get(c)).lower() for c in columns) for r in rows]
                status = "Failed" if len(values) != len(set(values)) else "Active"
                keys.append(
                    {
                        "SchemaName": schema,
                        "LogicalName": schema.lower(),
                        "KeyAttributes": list(columns),
                        "DisplayName": body.get("DisplayName"),
                        "EntityKeyIndexStatus": status,
                    }
                )
                key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu:key:{name}.{schema.lower()}"))
            return no_content(f"{root(version)}EntityDefinitions(LogicalName='{name}')/Keys({key_id})")

        return answer(handle)


__all__ = [
    "INVALID_ARGUMENT",
    "NOT_UNIQUE",
    "add_publisher",
    "add_solution",
    "column_spec",
    "register",
    "relationships",
]
