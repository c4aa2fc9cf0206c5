"""OData pieces the emulator's route modules share: Dataverse's response and error shapes, and
parsers for resource paths, keys, $select and simple $filter expressions.

Error shape (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors#parse-errors-from-the-response):
    {"error": {"code": "0x80040217", "message": "..."}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Response

from tests.dvemu.state import GUID

JSON_TYPE = "application/json; odata.metadata=minimal"

# Error codes as Dataverse answers them (hex). Where Microsoft's pages show a code, it is cited;
# the others are the codes real environments answer with (the pages say the code "is frequently
# empty" and do not list every one).
NOT_FOUND = "0x80040217"  # ObjectDoesNotExist: "<table> With Id = <id> Does Not Exist"
BAD_URI = "0x80060888"  # OData URI problems: unknown $select property, invalid key segment
NO_SEGMENT = "0x8006088a"  # "Resource not found for the segment '<x>'."
BAD_PAYLOAD = "0x80048d19"  # "Error identified in Payload provided by the user for Entity ..."
DUPLICATE_KEY = "0x80040237"  # DuplicateRecord (412): "A record with matching key values already exists."
VERSION_MISMATCH = "0x80060882"  # ConcurrencyVersionMismatch (412)
TOO_LONG = "0x80044331"  # shown in "Execute batch operations using the Web API", Handling errors
THROTTLED = "0x80072322"  # -2147015902, number of requests (api-limits)
THROTTLED_TIME = "0x80072321"  # -2147015903, execution time
THROTTLED_CONCURRENCY = "0x80072326"  # -2147015898, concurrent requests
THROTTLE_MESSAGES = {
    THROTTLED: "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    THROTTLED_TIME: (
        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over "
        "time window of 300 seconds. Decrease number of concurrent requests or reduce the duration "
        "of requests and try again later."
    ),
    THROTTLED_CONCURRENCY: "Number of concurrent requests exceeded the limit of 52.",
}

# Characters that make GET/PATCH by an alternate key fail, per "Work with alternate keys"
# (https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity).
KEY_UNSAFE = frozenset("/<>*%&:\\?+")


class ODataError(Exception):
    """Raised by handlers; becomes Dataverse's error response."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, content_type=JSON_TYPE)
    response.headers["OData-Version"] = "4.0"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def no_content(entity_id_url: str | None = None, *, created: bool = False) -> Response:
    """204 with the row's URL in OData-EntityId (and Location when it was created)."""
    response = Response(status=204)
    response.headers["OData-Version"] = "4.0"
    if entity_id_url:
        response.headers["OData-EntityId"] = entity_id_url
        if created:
            response.headers["Location"] = entity_id_url
    return response


def payload_error(entity_set: str, inner: str) -> ODataError:
    """A 400 for a request body Dataverse cannot read, in its wording."""
    return ODataError(
        400,
        BAD_PAYLOAD,
        f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more "
        "information on this error please follow this help link "
        "https://go.microsoft.com/fwlink/?linkid=2195293  ----> InnerException : "
        f"Microsoft.OData.ODataException: {inner}",
    )


# --- paths and keys ------------------------------------------------------------------------------

_QUOTED = r"'(?:[^']|'')*'"
_RESOURCE = re.compile(
    rf"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    rf"(?:\((?P<key>(?:[^'()]|{_QUOTED})*)\))?"
    rf"(?:/(?P<rest>.*))?$",
    re.DOTALL,
)
_KEY_PART = re.compile(rf"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>{_QUOTED}|[^,]+?)\s*(?:,|$)")


@dataclass(frozen=True)
class Resource:
    """`name(key)/rest` of a Web API path."""

    name: str
    key: str | None  # the text between the parentheses, None when there are none
    rest: str | None


def parse_resource(path: str) -> Resource | None:
    m = _RESOURCE.match(path)
    if m is None:
        return None
    return Resource(m.group("name"), m.group("key"), m.group("rest"))


def literal(text: str) -> Any:
    """An OData literal: 'string' (quotes doubled inside), GUID, number, true/false/null."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if GUID.match(text):
        return text.lower()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not an OData literal: {text!r}") from None


def parse_key(text: str) -> str | dict[str, Any]:
    """A key segment's content: a GUID (primary key) or {name: value} (named key parts)."""
    text = text.strip()
    if GUID.match(text):
        return text.lower()
    parts: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        m = _KEY_PART.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"bad key segment: {text!r}")
        parts[m.group("name")] = literal(m.group("value"))
        pos = m.end()
    if not parts:
        raise ValueError(f"bad key segment: {text!r}")
    return parts


def select(params: Mapping[str, str]) -> list[str] | None:
    value = params.get("$select")
    if value is None:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


# --- $filter: `a eq 'x' and b ne null or ...` (no parentheses, no functions) --------------------

_CONDITION = re.compile(
    rf"^\s*(?P<attr>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<op>eq|ne)\s+(?P<value>{_QUOTED}|\S+)\s*$"
)


def _split(text: str, word: str) -> list[str]:
    """Split on ` word ` outside quoted strings."""
    out, depth_quote, start, i = [], False, 0, 0
    token = f" {word} "
    while i < len(text):
        ch = text[i]
        if ch == "'":
            depth_quote = not depth_quote
        elif not depth_quote and text.startswith(token, i):
            out.append(text[start:i])
            i += len(token)
            start = i
            continue
        i += 1
    out.append(text[start:])
    return out


def parse_filter(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over a row (attribute -> value) for a simple $filter. String comparisons are
    case-insensitive, as Dataverse's database collation makes them."""
    alternatives: list[list[tuple[str, str, Any]]] = []
    for disjunct in _split(text, "or"):
        conditions = []
        for conjunct in _split(disjunct, "and"):
            m = _CONDITION.match(conjunct)
            if m is None:
                raise ValueError(f"the emulator does not understand this $filter: {text!r}")
            conditions.append((m.group("attr"), m.group("op"), literal(m.group("value"))))
        alternatives.append(conditions)

    def norm(value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def matches(row: Mapping[str, Any]) -> bool:
        for conditions in alternatives:
            if all((norm(row.get(a)) == norm(v)) == (op == "eq") for a, op, v in conditions):
                return True
        return False

    return matches


def attributes_named(filter_text: str) -> list[str]:
    """The attribute names a simple $filter mentions."""
    names = []
    for disjunct in _split(filter_text, "or"):
        for conjunct in _split(disjunct, "and"):
            m = _CONDITION.match(conjunct)
            if m:
                names.append(m.group("attr"))
    return names
