"""Request bodies described once, as pydantic models: they validate, and plugin/openapi.py generates
both OpenAPI documents from them.

The toolkit every body model uses (the Power Automate payloads, the Salesforce events, the /api
bodies below):

* :class:`BodyModel` — strict (no coercion: "42" is not 42, 1.0 is not 1), unknown members
  tolerated and ignored at every level (senders add fields);
* field types made by :func:`text`, :func:`email`, :func:`timestamp`, ... — each one validator
  and its JSON Schema, from the same parameters, refusing with OnRecord's reason codes
  (:func:`fail`); a field's title, description and ``x-ms-*`` extras go in ``Field(...)``;
* :func:`refusal` — pydantic's errors mapped, in this one place, to one :class:`BodyRefused`
  ``(reason, message, field)`` naming the first bad member by its JSON path
  (``approval.responses[0].responder.id``), the message starting with that path.

Decoding stays in plugin/strict_json.py (UTF-8, duplicate keys, NaN/Infinity, depth, huge
integers, lone surrogates): a model only ever sees a value strict_json produced.

Reason codes: ``missing_field`` (absent, null, or blank text), ``wrong_type``, ``too_long``,
``invalid_value``, ``invalid_email``, ``naive_datetime``, ``invalid_datetime``, ``duplicate``; a
source may translate them (:func:`refusal`'s ``reasons``) to its own published codes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic_core import CoreSchema, ErrorDetails, PydanticCustomError, core_schema

__all__ = [
    "BodyModel",
    "BodyRefused",
    "Checked",
    "CitationRequest",
    "VerifyRequest",
    "email",
    "fail",
    "json_path",
    "refusal",
    "text",
    "timestamp",
    "validate",
]

EMAIL_RE: Final = re.compile(r"^[^@\s\"<>(),;:\\\[\]]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
API_NAME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")  # Salesforce API / Dataverse logical names
RECORD_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # 15/18-char Salesforce ids, GUIDs, ...
_DATETIME_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,7})?)?(?P<tz>Z|z|[+-]\d{2}:\d{2})?$"
)
MIN_YEAR: Final = 2000  # dates OnRecord can process: outside these the rules' arithmetic overflows
MAX_YEAR: Final = 2200
M = TypeVar("M", bound=BaseModel)


class BodyModel(BaseModel):
    """A request body or a part of one: strict types, unknown members ignored, frozen."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


@dataclass(frozen=True)
class BodyRefused(Exception):
    """A body the model refuses: ``field`` is the first bad member's JSON path (None: the body)."""

    reason: str
    message: str
    field: str | None = None

    def __str__(self) -> str:
        return self.message


# -- refusing -------------------------------------------------------------------------------------


def fail(reason: str, message: str, *at: str | int) -> PydanticCustomError:
    """An error for a validator to raise: ``message`` follows the member's path; ``at`` continues the
    path below the member being validated (a dict key, a list position)."""
    return PydanticCustomError(reason, "{message}", {"message": message, "at": at})


# pydantic's own error types -> (reason, message after the path); {name} from the error's context
_BUILTIN: Final[Mapping[str, tuple[str, str]]] = {
    "missing": ("missing_field", "is required"),
    "string_type": ("wrong_type", "must be a string"),
    "bool_type": ("wrong_type", "must be true or false"),
    "int_type": ("wrong_type", "must be an integer"),
    "float_type": ("wrong_type", "must be a number"),
    "dict_type": ("wrong_type", "must be an object"),
    "model_type": ("wrong_type", "must be an object"),
    "model_attributes_type": ("wrong_type", "must be an object"),
    "list_type": ("wrong_type", "must be an array"),
    "string_too_long": ("too_long", "exceeds {max_length} characters"),
    "too_long": ("too_long", "has more than {max_length} items"),
    "too_short": ("invalid_value", "has fewer than {min_length} items"),
    "literal_error": ("invalid_value", "must be {expected}"),
    "enum": ("invalid_value", "must be {expected}"),
    "string_pattern_mismatch": ("invalid_value", "must match {pattern}"),
}


def json_path(loc: Sequence[str | int]) -> str:
    """``('approval', 'responses', 0, 'responder', 'id')`` -> ``approval.responses[0].responder.id``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _refused(error: ErrorDetails, prefix: Sequence[str | int], reasons: Mapping[str, str]) -> BodyRefused:
    context: dict[str, Any] = dict(error.get("ctx") or {})
    loc = [*prefix, *error["loc"], *context.get("at", ())]
    path = json_path(loc) or None
    kind = error["type"]
    if "message" in context:  # one of ours (fail)
        reason, message = kind, str(context["message"])
    elif kind in _BUILTIN:
        reason, template = _BUILTIN[kind]
        if kind == "too_short" and context.get("min_length") == 1:
            template = "is empty"
        message = template.format_map({k: v for k, v in context.items() if k != "at"})
    else:
        reason, message = "invalid_value", str(error["msg"])
    # A required member sent as null is missing, whatever type it should have had (a null list
    # item is of the wrong type).
    if reason == "wrong_type" and error.get("input", ...) is None and loc and isinstance(loc[-1], str):
        reason, message = "missing_field", "is required"
    if path is None:
        return BodyRefused(reasons.get(reason, reason), f"body {message}")
    return BodyRefused(reasons.get(reason, reason), f"{path} {message}", path)


def refusal(
    exc: ValidationError, *, prefix: Sequence[str | int] = (), reasons: Mapping[str, str] | None = None
) -> BodyRefused:
    """The first of pydantic's errors as OnRecord's refusal: reason, message naming the path, path.

    ``prefix`` is where the validated value sits in the body (``("events", 3)``); ``reasons``
    translates the reason codes to a source's own (Salesforce: ``bad_field``).
    """
    return _refused(exc.errors(include_url=False)[0], prefix, reasons or {})


def validate(
    model: type[M],
    value: Any,
    *,
    prefix: Sequence[str | int] = (),
    reasons: Mapping[str, str] | None = None,
) -> M:
    """``model`` validated from a decoded JSON value, or :class:`BodyRefused`."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise refusal(exc, prefix=prefix, reasons=reasons) from None


# -- field types ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Checked:
    """``Annotated[T, Checked(check, schema)]``: ``check`` is the member's whole validation (it returns
    the value to keep or raises :func:`fail`), ``schema`` its JSON Schema in the documents."""

    check: Callable[[Any], Any]
    schema: Mapping[str, Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return dict(self.schema)


def text_check(
    max_len: int,
    *,
    strip: bool = False,
    pattern: re.Pattern[str] | None = None,
    mismatch: str | None = None,
    no_controls: bool = False,
    optional: bool = False,
    blank: bool = False,
) -> Callable[[Any], Any]:
    """The check :func:`text` uses (for checks that build on it)."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if value is None and blank:  # a member with a default: null is not "missing"
            raise fail("invalid_value", "must be a string, not null")
        if not isinstance(value, str):
            raise fail("wrong_type", "must be a string")
        if not blank and not value.strip():
            raise fail("missing_field", "is empty")
        if len(value) > max_len:
            raise fail("too_long", f"exceeds {max_len} characters")
        if pattern is not None and not pattern.match(value):
            raise fail("invalid_value", mismatch or f"must match {pattern.pattern}")
        if no_controls and any(unicodedata.category(c) == "Cc" for c in value):
            raise fail("invalid_value", "contains control characters")
        return value.strip() if strip else value

    return check


def text(
    max_len: int,
    *,
    strip: bool = False,
    pattern: re.Pattern[str] | None = None,
    mismatch: str | None = None,
    no_controls: bool = False,
    optional: bool = False,
    blank: bool = False,
    fmt: str | None = None,
) -> Checked:
    """A string of at most ``max_len`` characters, not blank (unless ``blank``), or null if ``optional``,
    matching ``pattern`` (else refused with ``mismatch``), without control characters if asked."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_len}
    if pattern is not None:
        schema["pattern"] = pattern.pattern
    if fmt is not None:
        schema["format"] = fmt
    check = text_check(
        max_len,
        strip=strip,
        pattern=pattern,
        mismatch=mismatch,
        no_controls=no_controls,
        optional=optional,
        blank=blank,
    )
    return Checked(check, schema)


def email_value(value: Any) -> str:
    """An e-mail address or UPN, trimmed and lower-cased."""
    candidate = str(text_check(320)(value)).strip()
    if len(candidate) > 254 or not EMAIL_RE.match(candidate):
        raise fail("invalid_email", "must be an e-mail address or UPN")
    return candidate.lower()


def email(*, optional: bool = False) -> Checked:
    """An e-mail address or UPN (``local@domain.tld``), lower-cased; ``optional``: null or "" is none."""

    def check(value: Any) -> str | None:
        if optional and value in (None, ""):
            return None
        return email_value(value)

    return Checked(check, {"type": "string", "format": "email", "maxLength": 254})


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 date-time with an offset (Z or +hh:mm, up to 7 fraction digits), in UTC."""
    if not isinstance(value, str):
        raise fail("wrong_type", "must be an ISO 8601 date-time string")
    match = _DATETIME_RE.match(value.strip())
    if match is None:
        raise fail("invalid_datetime", "must be an ISO 8601 date-time")
    if match.group("tz") is None:
        raise fail("naive_datetime", "has no timezone offset (use Z or +hh:mm)")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise fail("invalid_datetime", "is not a valid date-time") from None
    return in_range(parsed)


def in_range(value: datetime, reason: str = "invalid_datetime") -> datetime:
    """``value`` in UTC, if OnRecord can process its year (else the rules' arithmetic overflows)."""
    if not MIN_YEAR <= value.astimezone(UTC).year <= MAX_YEAR:
        raise fail(reason, f"is out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return value.astimezone(UTC)


def timestamp(*, optional: bool = False) -> Checked:
    """An ISO 8601 date-time with an offset, normalised to UTC; naive ones are refused."""

    def check(value: Any) -> datetime | None:
        if optional and value in (None, ""):
            return None
        return parse_timestamp(value)

    return Checked(check, {"type": "string", "format": "date-time"})


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise fail("wrong_type", "must be a string, number, boolean or null")
    return value


SCALAR: Final = Checked(_scalar, {"type": "string"})
"""A string, number, boolean or null (documented as a string: what a flow passes)."""


# -- the core's /api bodies -----------------------------------------------------------------------

ApiName = Annotated[str, text(80, pattern=API_NAME_RE, mismatch="must be an API name")]
RecordId = Annotated[str, text(100, pattern=RECORD_ID_RE, mismatch="is not a record id")]
Scalar = Annotated[str | int | float | bool | None, SCALAR]


class VerifyRequest(BodyModel):
    """Is this figure from the system?"""

    object: ApiName = Field(description="CRM object, e.g. Opportunity.")
    id: RecordId = Field(description="Record id.")
    field: ApiName = Field(description="Field API name, e.g. Amount.")
    value: Scalar = Field(
        description="The value as quoted (numbers compare by value: 120000 equals 120000.0)."
    )


class CitationRequest(BodyModel):
    """A leader cites CRM data."""

    leader: Annotated[str, email()] = Field(description="The leader's e-mail.")
    object: ApiName = Field(description="CRM object.")
    id: RecordId = Field(description="Record id.")
    field: ApiName = Field(description="Field API name.")
    value: Scalar = Field(description="The value cited.")
    occasion: Annotated[str, text(500, blank=True)] = Field(
        default="", description="Where, e.g. 'Weekly pipeline review'."
    )
