"""A Dataverse webhook body read: bytes in, a typed `ExecutionContext` out, or `ContextRefused`
naming the problem and its JSON path. Pure: no configuration, no I/O.

What Dataverse posts (the webhook's request body is "the JSON value of an instance of the
RemoteExecutionContext class", the same data Azure Service Bus integrations get):
https://learn.microsoft.com/en-us/power-apps/developer/data-platform/use-webhooks
Its properties: https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.remoteexecutioncontext
InputParameters, OutputParameters, SharedVariables and the entity images (keyed by the alias the
step registered): https://learn.microsoft.com/en-us/power-apps/developer/data-platform/understand-the-data-context

The JSON is DataContractJsonSerializer's: https://learn.microsoft.com/en-us/dotnet/framework/wcf/feature-details/stand-alone-json-serialization
- A value whose declared type is `object` (every attribute and parameter value) carries a
  `"__type": "<contract>:<namespace>"` hint when it is a data contract: `Entity`,
  `EntityReference`, `OptionSetValue`, `Money`, `EntityCollection` in the namespace
  http://schemas.microsoft.com/xrm/2011/Contracts. Primitives carry none: a Guid is a string, a
  DateTime is the string "/Date(ms)/" or "/Date(ms+hhmm)/", a decimal or double is a number. An
  entity image, whose declared type is `Entity`, has no hint at all.
- Dictionaries (`ParameterCollection`, `AttributeCollection`, `FormattedValueCollection`,
  `EntityImageCollection`) are lists of `{"key": ..., "value": ...}` (KeyValuePairOfstringanyType).
  Their order means nothing; a key twice would be two meanings for one name, so it is refused,
  as strict_json refuses a repeated object key.
- A multi-select choice (OptionSetValueCollection) is a plain list of OptionSetValue objects.

Real bodies this reading was checked against (structure and types; see fixtures/README.md):
the Microsoft Learn sample above, and captures published as test data of
https://github.com/albanian-xrm/PowerPlatform-Entity-Serializer (PowerPlatform.EntitySerializer.Tests:
DeserializationFromTextSamplesTests.cs, DeserializationFromAllFieldTypes.cs,
DeserializationFromActivityEntities.cs).

Values, as read here:
- GUIDs (ids, and any string shaped like one) in lower case, the form .NET writes and
  `plugin.identity` keeps.
- "/Date(...)/" -> an aware UTC datetime (see `wcf_date` for the offset, which is not what the
  serializer's documentation alone would suggest).
- OptionSetValue -> int; a multi-select -> list of ints; booleans stay booleans.
- Money -> float, always (also when the JSON number is whole), so a rule sees one type. Why not
  Decimal: the body is decoded by plugin/strict_json.py (required for every JSON body), which
  already yields a float for every number with a fraction, so a Decimal made here would carry no
  more precision than the float it came from; and event data must be JSON. A float's shortest
  repr gives back the sent number for up to 15 significant digits: every Money value up to
  100 billion at Dataverse's 4 decimal places, and every whole amount in Money's range
  (+-922,337,203,685,477 < 2**53).
- EntityReference: in an entity's attributes, the referenced id (a GUID string), its table kept
  in `Entity.lookups`; as a parameter value, an `EntityRef`.
- EntityCollection (activity parties: from, to, cc, ...) -> a list of plain dicts, one per
  party, each with the Web API's annotations for what a plain value loses:
  "<column>@Microsoft.Dynamics.CRM.lookuplogicalname" and
  "<column>@OData.Community.Display.V1.FormattedValue"
  (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/webapi/query-data-web-api).
- FormattedValues -> {logical name: label}.
- A hinted type this module does not know is kept as a dict, hint included, never refused: an
  unusual column must not make Dataverse's system job fail for a change OnRecord can take in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from plugin import strict_json

XRM_CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
LOOKUP_ANNOTATION = "@Microsoft.Dynamics.CRM.lookuplogicalname"
FORMATTED_ANNOTATION = "@OData.Community.Display.V1.FormattedValue"

_GUID = re.compile(r"\A[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\Z")
# DataContractJsonSerializer's DateTime: milliseconds since 1970-01-01 UTC, then "+hhmm" or
# "-hhmm" for a DateTime whose Kind is not Utc. 16 digits already pass year 9999.
_WCF_DATE = re.compile(r"\A/Date\((?P<ms>-?\d{1,16})(?:(?P<sign>[+-])(?P<hh>\d\d)(?P<mm>\d\d))?\)/\Z")
# Logical names are lower case ("always lower case":
# https://learn.microsoft.com/en-us/power-apps/developer/data-platform/webapi/web-api-properties);
# "none" is what a message without a table names.
_LOGICAL_NAME = re.compile(r"\A[a-z][a-z0-9_]{0,127}\Z")
# Message names: Create, Update, ..., and custom APIs' unique names (prefix_Name).
_MESSAGE_NAME = re.compile(r"\A[A-Za-z][A-Za-z0-9_]{0,255}\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32 = (-(2**31), 2**31 - 1)
_MAX_TEXT = 4000  # names, not values: Dataverse's own limits on these are far lower

# A value as it sits in an entity's attributes, ready to become JSON (datetimes aside).
FieldValue: TypeAlias = (
    "bool | int | float | str | datetime | list[FieldValue] | dict[str, FieldValue] | None"
)
# A value as a parameter carries it: also whole entities and references.
Value: TypeAlias = "FieldValue | Entity | EntityRef | list[Value] | dict[str, Value]"


class ContextRefused(ValueError):
    """The body is not a RemoteExecutionContext OnRecord can read. `reason` is machine-readable;
    `message` names the problem and where, as a JSON path ($.InputParameters[0].value...)."""

    def __init__(self, reason: str, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.path = path


@dataclass(frozen=True)
class EntityRef:
    """An EntityReference: a row of table `logical_name`."""

    logical_name: str
    id: str  # lower case
    name: str | None = None


@dataclass(frozen=True)
class Entity:
    """An Entity (a Target, an image, a party): its columns by logical name."""

    logical_name: str
    id: str  # lower case; EMPTY_GUID when the serialized entity had none
    attributes: Mapping[str, FieldValue]
    lookups: Mapping[str, str] = field(default_factory=dict)  # column -> the table it references
    formatted: Mapping[str, str] = field(default_factory=dict)  # column -> label

    def plain(self) -> dict[str, FieldValue]:
        """The columns as one dict, each lookup's table and each label beside its column under
        the Web API's annotation names."""
        result: dict[str, FieldValue] = dict(self.attributes)
        for column, table in self.lookups.items():
            result[column + LOOKUP_ANNOTATION] = table
        for column, label in self.formatted.items():
            result[column + FORMATTED_ANNOTATION] = label
        return result


@dataclass(frozen=True)
class ExecutionContext:
    """The parts of a RemoteExecutionContext OnRecord reads (ParentContext and the rest are not)."""

    message_name: str
    primary_entity_name: str
    primary_entity_id: str
    # UserId: the user the step runs as, its "Run in User's Context" (by default the Calling
    # User: the one who made the request). InitiatingUserId: the user who initiated the action,
    # also when the step was registered to run as someone else. With the default registration
    # they are the same person. https://learn.microsoft.com/en-us/power-apps/developer/data-platform/impersonate-a-user
    user_id: str
    initiating_user_id: str
    correlation_id: str
    # The system job's id (AsyncOperationId) for an asynchronous step: serialized once with the
    # context when the job is created, so every attempt to deliver that job carries it.
    operation_id: str
    operation_created_on: datetime
    depth: int
    stage: int
    mode: int  # 0 synchronous, 1 asynchronous
    organization_id: str
    organization_name: str
    business_unit_id: str
    input_parameters: Mapping[str, Value]
    output_parameters: Mapping[str, Value]
    pre_entity_images: Mapping[str, Entity]
    post_entity_images: Mapping[str, Entity]
    shared_variables: Mapping[str, Value]

    @property
    def target(self) -> Entity | None:
        """InputParameters["Target"] when it is an entity (Create, Update), else None (Delete's
        Target is a reference; a body over 256 KB arrives without InputParameters)."""
        target = self.input_parameters.get("Target")
        return target if isinstance(target, Entity) else None


def read_context(body: bytes) -> ExecutionContext:
    """The RemoteExecutionContext in `body`, or ContextRefused."""
    try:
        raw = strict_json.loads(body)
    except strict_json.JsonRefused as exc:
        raise ContextRefused(exc.reason, exc.message) from exc
    if not isinstance(raw, dict):
        raise ContextRefused("bad_shape", "$ must be a JSON object (a RemoteExecutionContext)")
    return ExecutionContext(
        message_name=_text(raw, "MessageName", "$", pattern=_MESSAGE_NAME, what="a message name"),
        primary_entity_name=_text(
            raw, "PrimaryEntityName", "$", pattern=_LOGICAL_NAME, what="a logical name"
        ),
        primary_entity_id=_guid_member(raw, "PrimaryEntityId", "$"),
        user_id=_guid_member(raw, "UserId", "$"),
        initiating_user_id=_guid_member(raw, "InitiatingUserId", "$"),
        correlation_id=_guid_member(raw, "CorrelationId", "$"),
        operation_id=_guid_member(raw, "OperationId", "$"),
        operation_created_on=wcf_date(_text(raw, "OperationCreatedOn", "$"), "$.OperationCreatedOn"),
        depth=_int(raw, "Depth", "$", 0, 1000),
        stage=_int(raw, "Stage", "$", 0, 1000),
        mode=_int(raw, "Mode", "$", 0, 1),
        organization_id=_guid_member(raw, "OrganizationId", "$"),
        organization_name=_text(raw, "OrganizationName", "$"),
        business_unit_id=_guid_member(raw, "BusinessUnitId", "$"),
        input_parameters=_parameters(raw, "InputParameters"),
        output_parameters=_parameters(raw, "OutputParameters"),
        pre_entity_images=_images(raw, "PreEntityImages"),
        post_entity_images=_images(raw, "PostEntityImages"),
        shared_variables=_parameters(raw, "SharedVariables"),
    )


def wcf_date(text: str, path: str) -> datetime:
    """A DataContractJsonSerializer DateTime ("/Date(ms)/", "/Date(ms+hhmm)/", "/Date(-ms)/") as
    an aware UTC datetime.

    Without an offset the number is the instant: milliseconds since 1970-01-01 UTC. With one,
    the serializer wrote a DateTime whose Kind was not Utc after converting it from the server's
    local time, and appended that server's offset (the documentation says the offset only marks
    the Kind and is ignored on reading). But the DateTimes Dataverse writes with an offset (its
    OperationCreatedOn) hold a UTC wall-clock value, not a local one, so that conversion shifted
    them by the offset: the instant is ms + offset. Published bodies show it, each with its own
    OperationCreatedOn beside the record's createdon/modifiedon written in UTC: Microsoft Learn's
    "/Date(1506409448000-0700)/" falls 1 s after modifiedon "/Date(1506384247000)/" only with
    the offset added (7 h after it without); the captures "/Date(1724647396000+0300)/" and
    "/Date(1737024736000+0200)/" equal their modifiedon and createdon exactly with it. The
    capture from an online environment has "+0000", where both readings agree."""
    match = _WCF_DATE.match(text)
    if match is None:
        raise ContextRefused("bad_date", f"{path} is not a /Date(milliseconds)/ date: {text[:60]!r}", path)
    offset_minutes = 0
    if match["sign"]:
        hours, minutes = int(match["hh"]), int(match["mm"])
        if hours > 14 or minutes > 59:
            raise ContextRefused(
                "bad_date", f"{path} has an offset that is no time zone: {text[:60]!r}", path
            )
        offset_minutes = (hours * 60 + minutes) * (1 if match["sign"] == "+" else -1)
    try:
        return _EPOCH + timedelta(milliseconds=int(match["ms"]), minutes=offset_minutes)
    except OverflowError:
        raise ContextRefused(
            "bad_date", f"{path} is outside the years 1 to 9999: {text[:60]!r}", path
        ) from None


def is_guid(text: str) -> bool:
    """Whether `text` is a GUID in the 8-4-4-4-12 form Dataverse writes."""
    return _GUID.match(text) is not None


def to_json(value: FieldValue) -> Any:
    """`value` as JSON can hold it: datetimes as ISO 8601 in UTC ("...Z"), the rest as it is."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


# -- the envelope ----------------------------------------------------------------------------------


def _member(raw: dict[str, Any], key: str, path: str) -> Any:
    if key not in raw or raw[key] is None:
        raise ContextRefused("missing_field", f"{path}.{key} is required", f"{path}.{key}")
    return raw[key]


def _text(
    raw: dict[str, Any], key: str, path: str, *, pattern: re.Pattern[str] | None = None, what: str = ""
) -> str:
    value = _member(raw, key, path)
    where = f"{path}.{key}"
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise ContextRefused("bad_field", f"{where} must be a non-empty string", where)
    if pattern is not None and pattern.match(value) is None:
        raise ContextRefused("bad_field", f"{where} is not {what}: {value[:60]!r}", where)
    return value


def _guid(value: Any, where: str) -> str:
    if not isinstance(value, str) or not is_guid(value):
        raise ContextRefused("bad_field", f"{where} is not a GUID", where)
    return value.lower()


def _guid_member(raw: dict[str, Any], key: str, path: str) -> str:
    return _guid(_member(raw, key, path), f"{path}.{key}")


def _int(raw: dict[str, Any], key: str, path: str, low: int, high: int) -> int:
    value = _member(raw, key, path)
    where = f"{path}.{key}"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContextRefused("bad_field", f"{where} must be a whole number from {low} to {high}", where)
    return value


def _pairs(raw: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    """The (key, value, path of the value) of a serialized dictionary: a list of key/value pairs."""
    if not isinstance(raw, list):
        raise ContextRefused("bad_shape", f"{path} must be a list of key/value pairs", path)
    seen: set[str] = set()
    for position, item in enumerate(raw):
        where = f"{path}[{position}]"
        if not isinstance(item, dict) or "key" not in item or "value" not in item:
            raise ContextRefused("bad_shape", f"{where} must be an object with a key and a value", where)
        if set(item) - {"key", "value", "__type"}:
            extra = sorted(set(item) - {"key", "value", "__type"})[0][:60]
            raise ContextRefused("bad_shape", f"{where} has a member no key/value pair has: {extra!r}", where)
        key = item["key"]
        if not isinstance(key, str) or not key or len(key) > _MAX_TEXT:
            raise ContextRefused("bad_field", f"{where}.key must be a non-empty string", f"{where}.key")
        if key in seen:
            raise ContextRefused("duplicate_key", f"{where}.key {key[:100]!r} appears twice in {path}", where)
        seen.add(key)
        yield key, item["value"], f"{where}.value"


def _optional_pairs(raw: dict[str, Any], key: str) -> Iterator[tuple[str, Any, str]]:
    """A collection of the envelope, absent when Dataverse left it out: a body over 256 KB comes
    without InputParameters, PreEntityImages and PostEntityImages (use-webhooks, Request Body)."""
    if raw.get(key) is None:
        return iter(())
    return _pairs(raw[key], f"$.{key}")


def _parameters(raw: dict[str, Any], key: str) -> dict[str, Value]:
    return {name: _value(value, where) for name, value, where in _optional_pairs(raw, key)}


def _images(raw: dict[str, Any], key: str) -> dict[str, Entity]:
    return {alias: _entity(value, where) for alias, value, where in _optional_pairs(raw, key)}


# -- values ------------------------------------------------------------------------------------------


def _contract(raw: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The (name, namespace) of a value's "__type" hint, or None without one."""
    hint = raw.get("__type")
    if hint is None:
        return None
    if not isinstance(hint, str) or not hint:
        raise ContextRefused("bad_shape", f"{path}.__type must be a type name", f"{path}.__type")
    name, _, namespace = hint.partition(":")
    return name, namespace


def _value(raw: Any, path: str) -> Value:
    """Any serialized value, typed by its hint."""
    if raw is None or isinstance(raw, bool | int | float):
        return raw
    if isinstance(raw, str):
        return _string(raw, path)
    if isinstance(raw, list):
        return [_value(item, f"{path}[{i}]") for i, item in enumerate(raw)]
    if not isinstance(raw, dict):  # pragma: no cover - JSON has no other kind
        raise ContextRefused("bad_shape", f"{path} is not a JSON value", path)
    contract = _contract(raw, path)
    if contract is not None and contract[1] == XRM_CONTRACTS:
        name = contract[0]
        if name == "Entity":
            return _entity(raw, path)
        if name == "EntityReference":
            return _reference(raw, path)
        if name == "OptionSetValue":
            return _option(raw, path)
        if name == "Money":
            return _money(raw, path)
        if name == "EntityCollection":
            return _collection(raw, path)
    # Unhinted objects, and contracts this reading has no meaning for: kept, member by member.
    return {key: _value(item, f"{path}.{key}") for key, item in raw.items()}


def _string(text: str, path: str) -> str | datetime:
    # The serializer writes a DateTime in an object slot as this string, and reads such a string
    # back as a DateTime: that is its meaning in this format, whatever column holds it. A text
    # that only resembles one ("/Date(soon)/") stays text.
    if text.startswith("/Date(") and _WCF_DATE.match(text):
        return wcf_date(text, path)
    if is_guid(text):
        return text.lower()  # a Guid in an object slot is a bare string; .NET writes it lower case
    return text


def _entity(raw: Any, path: str) -> Entity:
    if not isinstance(raw, dict):
        raise ContextRefused("bad_shape", f"{path} must be an entity (an object with Attributes)", path)
    contract = _contract(raw, path)
    if contract is not None and contract != ("Entity", XRM_CONTRACTS):
        raise ContextRefused("bad_shape", f"{path} must be an entity, not a {contract[0][:60]}", path)
    logical_name = _text(raw, "LogicalName", path, pattern=_LOGICAL_NAME, what="a logical name")
    entity_id = raw.get("Id")
    identifier = EMPTY_GUID if entity_id is None else _guid(entity_id, f"{path}.Id")
    attributes: dict[str, FieldValue] = {}
    lookups: dict[str, str] = {}
    for column, value, where in _pairs(_member(raw, "Attributes", path), f"{path}.Attributes"):
        typed = _value(value, where)
        if isinstance(typed, EntityRef):
            attributes[column] = typed.id
            lookups[column] = typed.logical_name
        else:
            attributes[column] = _field(typed)
    formatted: dict[str, str] = {}
    if raw.get("FormattedValues") is not None:
        for column, label, where in _pairs(raw["FormattedValues"], f"{path}.FormattedValues"):
            if not isinstance(label, str):
                raise ContextRefused("bad_field", f"{where} must be a string (a formatted value)", where)
            formatted[column] = label
    return Entity(logical_name, identifier, attributes, lookups, formatted)


def _field(value: Value) -> FieldValue:
    """A parameter-style value as an attribute holds it: entities as plain dicts, references
    nested in lists or unknown objects as the dict they were serialized as."""
    if isinstance(value, Entity):
        return value.plain()
    if isinstance(value, EntityRef):
        return {"Id": value.id, "LogicalName": value.logical_name, "Name": value.name}
    if isinstance(value, list):
        return [_field(item) for item in value]
    if isinstance(value, dict):
        return {key: _field(item) for key, item in value.items()}
    return value


def _reference(raw: dict[str, Any], path: str) -> EntityRef:
    name = raw.get("Name")
    if name is not None and not isinstance(name, str):
        raise ContextRefused("bad_field", f"{path}.Name must be a string or null", f"{path}.Name")
    return EntityRef(
        logical_name=_text(raw, "LogicalName", path, pattern=_LOGICAL_NAME, what="a logical name"),
        id=_guid_member(raw, "Id", path),
        name=name,
    )


def _option(raw: dict[str, Any], path: str) -> int:
    value = _member(raw, "Value", path)
    if isinstance(value, bool) or not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
        raise ContextRefused("bad_field", f"{path}.Value must be a whole number (a choice)", f"{path}.Value")
    return value


def _money(raw: dict[str, Any], path: str) -> float:
    value = _member(raw, "Value", path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContextRefused("bad_field", f"{path}.Value must be a number (an amount)", f"{path}.Value")
    return float(value)


def _collection(raw: dict[str, Any], path: str) -> list[Value]:
    entities = _member(raw, "Entities", path)
    if not isinstance(entities, list):
        raise ContextRefused("bad_shape", f"{path}.Entities must be a list of entities", f"{path}.Entities")
    return [_entity(item, f"{path}.Entities[{i}]") for i, item in enumerate(entities)]
