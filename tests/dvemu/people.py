"""The emulator's people: the environment's users (systemusers) and its audit table (audits).

`register(app, state)` (server.py's extension contract) serves

    GET /api/data/v<version>/audits

with what Dataverse answers the login poller's query: `$select`, `$filter` (comparisons eq, ne,
gt, ge, lt, le of a property with a literal — strings, numbers, GUIDs, true/false/null, unquoted
DateTimeOffset values — joined by `and`/`or`, with parentheses), `$orderby` (properties, asc or
desc), `$top`, and paging: `Prefer: odata.maxpagesize=N` (at most 5,000, Dataverse's default page
size; `state.max_page_size` when no preference is given) with `@odata.nextLink` and
`Preference-Applied`
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/page-results).
A property the audit EntityType does not have is refused like Dataverse refuses it (400,
"Could not find a property named ...").

`systemusers` rows live in `state.tables["systemusers"]` (the seeded systemuser table), so the
emulator's built-in collection GET serves them ($select, simple $filter, paging); `add_user` here
seeds one. Audit rows live in `state.extra["people"]["audits"]` (auditid -> row), seeded with
`add_access`. The audit EntityType's properties, as the Web API's $metadata lists them
(https://learn.microsoft.com/power-apps/developer/data-platform/auditing/retrieve-audit-data):
operation, attributemask, action, useradditionalinfo, createdon, objecttypecode,
_callinguserid_value, _regardingobjectid_value, _objectid_value, _userid_value, transactionid,
auditid. A user access row has operation 4 (Access) and action 64 (User Access via Web) or 65
(User Access via Web Services); its record is the systemuser.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from flask import Flask, request
from werkzeug.wrappers import Response

from tests.dvemu import odata
from tests.dvemu.odata import ODataError, json_response
from tests.dvemu.state import DataverseState

KEY = "people"
AUDIT_PROPERTIES = (
    "operation",
    "attributemask",
    "action",
    "useradditionalinfo",
    "createdon",
    "objecttypecode",
    "_callinguserid_value",
    "_regardingobjectid_value",
    "_objectid_value",
    "_userid_value",
    "transactionid",
    "auditid",
)
ACCESS = 4
USER_ACCESS_VIA_WEB = 64
USER_ACCESS_VIA_WEB_SERVICES = 65
MAX_PAGE_SIZE = 5000


def _store(state: DataverseState) -> dict[str, Any]:
    with state.lock:
        return state.extra.setdefault(KEY, {"audits": {}})  # type: ignore[no-any-return]


def web_time(value: dt.datetime) -> str:
    """A DateTimeOffset as the Web API writes it ("2022-05-12T22:19:12Z")."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_user(
    state: DataverseState,
    fullname: str,
    *,
    user_id: str | None = None,
    email: str | None = None,
    domainname: str | None = None,
    entra_object_id: str | None = None,
    application_id: str | None = None,
    disabled: bool = False,
    access_mode: int = 0,
) -> str:
    """A systemuser row; returns its id (lower case)."""
    with state.lock:
        guid = (user_id or state.new_guid()).lower()
        state.tables.setdefault("systemusers", {})[guid] = {
            "systemuserid": guid,
            "fullname": fullname,
            "internalemailaddress": email,
            "domainname": domainname,
            "azureactivedirectoryobjectid": entra_object_id,
            "applicationid": application_id,
            "isdisabled": disabled,
            "accessmode": access_mode,
        }
        state.etags[guid] = state.next_version()
    return guid


def add_access(
    state: DataverseState,
    user_id: str,
    when: dt.datetime,
    *,
    action: int = USER_ACCESS_VIA_WEB,
    audit_id: str | None = None,
) -> str:
    """A user access audit row (operation 4) for `user_id` at `when`; returns its auditid."""
    with state.lock:
        guid = (audit_id or state.new_guid()).lower()
        _store(state)["audits"][guid] = {
            "auditid": guid,
            "createdon": web_time(when),
            "action": action,
            "operation": ACCESS,
            "objecttypecode": "systemuser",
            "_objectid_value": user_id.lower(),
            "_userid_value": user_id.lower(),
            "_callinguserid_value": None,
            "_regardingobjectid_value": None,
            "attributemask": None,
            "useradditionalinfo": None,
            "transactionid": state.new_guid(),
        }
    return guid


# --- $filter, the part of OData the poller needs ---------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<string>'(?:[^']|'')*')"
    r"|(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?P<word>[A-Za-z0-9_.:+-]+))"
)
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: bool(a == b),
    "ne": lambda a, b: bool(a != b),
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}
Predicate = Callable[[Mapping[str, Any]], bool]


def unknown_property(name: str, type_name: str) -> ODataError:
    """Dataverse's answer to a query naming a property the type does not have."""
    return ODataError(
        400,
        odata.BAD_URI,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
    )


class _Filter:
    """A recursive-descent reader of `a ge 2025-01-01T00:00:00Z and (b eq 64 or b eq 65)`."""

    def __init__(self, text: str, known: tuple[str, ...], type_name: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise ValueError(f"the emulator does not understand this $filter: {text!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.pos = 0
        self.known = known
        self.type_name = type_name
        self.text = text

    def parse(self) -> Predicate:
        predicate = self._or()
        if self.pos != len(self.tokens):
            raise ValueError(f"the emulator does not understand this $filter: {self.text!r}")
        return predicate

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise ValueError(f"the $filter ends too early: {self.text!r}")
        self.pos += 1
        return token

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek() == ("word", "or"):
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else lambda row: any(p(row) for p in parts)

    def _and(self) -> Predicate:
        parts = [self._term()]
        while self._peek() == ("word", "and"):
            self.pos += 1
            parts.append(self._term())
        return parts[0] if len(parts) == 1 else lambda row: all(p(row) for p in parts)

    def _term(self) -> Predicate:
        kind, text = self._next()
        if kind == "open":
            inner = self._or()
            if self._next()[0] != "close":
                raise ValueError(f"unbalanced parentheses in $filter: {self.text!r}")
            return inner
        if kind != "word" or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", text):
            raise ValueError(f"the emulator does not understand this $filter: {self.text!r}")
        if text not in self.known:
            raise unknown_property(text, self.type_name)
        operator = self._next()[1]
        if operator not in _COMPARISONS:
            raise ValueError(f"the emulator does not understand the operator {operator!r}")
        value = _value(*self._next())
        compare = _COMPARISONS[operator]
        name = text
        return lambda row: compare(_comparable(row.get(name), value), value)


def _value(kind: str, text: str) -> Any:
    if kind == "datetime":
        return _instant(text)
    if kind in ("string", "word"):
        value = odata.literal(text)
        return value.lower() if isinstance(value, str) else value
    raise ValueError(f"not an OData literal: {text!r}")


def _instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _comparable(stored: Any, literal: Any) -> Any:
    """The stored value in the literal's terms: instants as datetimes, strings case-insensitively
    (Dataverse's collation)."""
    if isinstance(literal, dt.datetime) and isinstance(stored, str):
        return _instant(stored)
    return stored.lower() if isinstance(stored, str) else stored


def parse_filter(text: str, known: tuple[str, ...], type_name: str) -> Predicate:
    """A predicate over rows for a $filter over `known` properties."""
    return _Filter(text, known, type_name).parse()


def _order(
    rows: list[dict[str, Any]], orderby: str, known: tuple[str, ...], type_name: str
) -> list[dict[str, Any]]:
    for clause in reversed([c.strip() for c in orderby.split(",") if c.strip()]):
        name, _, direction = clause.partition(" ")
        direction = direction.strip().lower() or "asc"
        if name not in known:
            raise unknown_property(name, type_name)
        if direction not in ("asc", "desc"):
            raise ODataError(400, odata.BAD_URI, f"Syntax error in $orderby: {orderby!r}.")
        # None first, as SQL Server sorts NULL ascending
        rows.sort(key=lambda r: (r.get(name) is not None, r.get(name) or ""), reverse=direction == "desc")
    return rows


def query(
    rows: list[dict[str, Any]],
    *,
    args: Mapping[str, str],
    prefer: str,
    known: tuple[str, ...],
    type_name: str,
    key: str,
    collection_url: str,
    context: str,
    default_page_size: int = MAX_PAGE_SIZE,
) -> Response:
    """A collection GET over `rows`: $filter, $orderby, $select, $top, maxpagesize paging."""
    where = args.get("$filter")
    try:
        predicate = parse_filter(where, known, type_name) if where else None
    except ValueError as exc:
        raise ODataError(400, odata.BAD_URI, str(exc)) from exc
    chosen = odata.select(args)
    for name in chosen or ():
        if name not in known:
            raise unknown_property(name, type_name)
    found = [r for r in rows if predicate is None or predicate(r)]
    if args.get("$orderby"):
        found = _order(found, args["$orderby"], known, type_name)
    else:
        found.sort(key=lambda r: str(r.get(key)))
    top = args.get("$top")
    if top is not None:
        if not top.isdigit():
            raise ODataError(400, odata.BAD_URI, f"Invalid value for $top: {top!r}.")
        found = found[: int(top)]
    views = [{k: r.get(k) for k in chosen} | {key: r[key]} if chosen is not None else dict(r) for r in found]
    page_size = max(1, min(default_page_size, MAX_PAGE_SIZE))
    headers: dict[str, str] = {}
    m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
    if m:
        page_size = max(1, min(int(m.group(1)), page_size))
        headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
    token = args.get("$skiptoken", "0")
    skip = int(token) if token.isdigit() else 0
    body: dict[str, Any] = {"@odata.context": context, "value": views[skip : skip + page_size]}
    if top is None and skip + page_size < len(views):
        params = [(k, v) for k, v in args.items() if k != "$skiptoken"]
        params.append(("$skiptoken", str(skip + page_size)))
        body["@odata.nextLink"] = f"{collection_url}?{urlencode(params)}"
    return json_response(body, headers=headers)


def register(app: Flask, state: DataverseState) -> None:
    """Serve GET audits (systemusers are served by the built-in data routes)."""

    @app.route("/api/data/v<version>/audits", methods=["GET"])
    def audits(version: str) -> Response:
        with state.lock:
            rows = [dict(r) for r in _store(state)["audits"].values()]
            page_size = state.max_page_size
        root = f"{request.host_url}api/data/v{version}/"
        try:
            return query(
                rows,
                args=request.args,
                prefer=request.headers.get("Prefer", ""),
                known=AUDIT_PROPERTIES,
                type_name="audit",
                key="auditid",
                collection_url=f"{root}audits",
                context=f"{root}$metadata#audits",
                default_page_size=page_size,
            )
        except ODataError as err:
            return err.response()


__all__ = [
    "AUDIT_PROPERTIES",
    "USER_ACCESS_VIA_WEB",
    "USER_ACCESS_VIA_WEB_SERVICES",
    "add_access",
    "add_user",
    "parse_filter",
    "query",
    "register",
    "web_time",
]
