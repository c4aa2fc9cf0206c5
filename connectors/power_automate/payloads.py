"""Parse and validate the bodies Power Automate flows POST to OnRecord, into normalised `Event`s.

Three endpoints, three body shapes (the flow builds the body in the HTTP action):

``/hooks/power-automate/forms`` -> ``form.submitted``, source ``power_automate.forms``::

    {"form_id", "form_name", "response_id", "responder", "submitted_at" | "submitDate",
     "record": {"object", "id"}, "answers": {name: value}, "flow_run_id"?}

  delivery id ``form:{form_id}:{response_id}``. ``response_id`` is the Forms response id (an integer
  in the Forms connector; digits-as-string and id-like strings are accepted too). Anonymous responses
  (``responder`` = "anonymous") are refused: they cannot be attributed. ``submitted_at`` is an ISO
  8601 date-time with an offset, or the Forms connector's own ``submitDate`` text as "Get response
  details" gives it (``M/d/yyyy h:mm:ss AM|PM``, e.g. "8/27/2024 12:34:21 PM": US month/day, 12-hour
  clock, UTC); a body without ``submitted_at`` may carry the connector's ``submitDate`` instead.

``/hooks/power-automate/approvals`` -> one ``approval.decided`` per entry of ``responses[]``,
source ``power_automate.approvals``::

    {"stage": 1..20 | "1".."20" | "<stage name>",
     "record": {"object", "id"}, "flow_run_id"?, "approval": body('Start_and_wait_for_an_approval')}

  ``stage`` is a stage number (an integer 1-20, or its digits as a string) or the name the approval
  policy gives the stage (``^[A-Za-z][A-Za-z0-9_ .-]{0,79}$``, e.g. "business strategy"). The event
  carries ``stage`` (the number, or null when the stage is given by name) and ``stage_name`` (the
  name as sent, or null for a number). The legacy values keep their old meaning: 1, "1" and
  "business_strategy" are stage 1 named "business_strategy"; 2, "2" and "finance" are stage 2 named
  "finance" (see :data:`STAGES`).

  The ``approval`` object is the Approvals connector's output as Power Automate gives it: ``name``
  (approval id, a GUID), ``title``, ``outcome``, ``requestDate``, ``completionDate``,
  ``expirationDate``, ``responseSummary``, ``responses[]`` of {``responder`` {id, displayName, email,
  tenantId, userPrincipalName}, ``requestDate``, ``responseDate``, ``approverResponse``,
  ``comments``}; its other fields (``details``, ``priority``, ``respondLink``, ``approvers``, ...)
  are tolerated and not carried. delivery id ``approval:{name}:{stage}:{responder id}``, with the
  stage number (the name when the stage is given by name); actor = responder e-mail (else UPN),
  lower-cased.

  ``approverResponse`` is the responder's choice as text: "Approve"/"Reject" for the Approve/Reject
  approval types, or one of the flow author's options for "Custom Responses" (e.g. "Approve with
  conditions"). Any text of 1-200 characters without control characters is accepted and carried
  exactly (``approver_response``): the parser does not decide which texts mean yes -- the approval
  policy's ``approve_responses`` does. ``outcome`` is carried exactly too, with ``outcome_responses``
  (the texts it lists). It must agree with the responses, case-sensitively, in one of two ways:

  * one response's text ("First to respond", "Wait for one response", or "Reject" when an
    "Everyone must approve" approval ends on a rejection): ``outcome_responses`` = [outcome]. A
    built-in "Approve" outcome is refused if a response is "Reject";
  * every response's text exactly once, in any order, joined by ", " -- what "Everyone must approve"
    and "Wait for all responses" give, e.g. "Approve, Approve, Approve": ``outcome_responses`` = the
    texts in the outcome's order. A custom text that itself contains ", " is matched whole.

``/hooks/power-automate/signals`` -> leader signals, source ``power_automate.signals``::

    {"kind", "leader", "occurred_at", "id", "details"?: {...}, "record"?: {"object", "id"}}

  delivery id ``signal:{id}``; actor = leader e-mail, lower-cased. Accepted kinds: see
  :data:`SIGNAL_KINDS`. An unknown kind is *ignored* (``Parsed.ignored`` set, no events): answer 200.

Validation rules common to all three:

* the body is UTF-8 JSON, an object, at most :data:`MAX_BODY_BYTES`; duplicate keys, NaN/Infinity
  are refused;
* unknown keys are tolerated and ignored, at every level (flow authors add fields; the Approvals
  connector adds fields over time) -- only the documented fields are read and carried;
* timestamps are ISO 8601 date-times *with* an offset (``Z`` or ``+hh:mm``; up to 7 fraction digits
  as ``utcNow()`` writes them); naive ones are refused (the only other form accepted is the Forms
  connector's ``submitDate`` text, which is UTC, for the forms body's submission time); all are
  normalised to UTC;
* strings are length-bounded; e-mail/UPN fields must look like ``local@domain.tld``;
* every refusal is one :class:`PayloadRejected` naming the field (dotted path), to answer 400.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from plugin.events import Event

__all__ = [
    "MAX_BODY_BYTES",
    "SIGNAL_KINDS",
    "SOURCE_APPROVALS",
    "SOURCE_FORMS",
    "SOURCE_SIGNALS",
    "STAGES",
    "Parsed",
    "PayloadRejected",
    "parse",
    "parse_approvals",
    "parse_forms",
    "parse_signals",
]

SOURCE_FORMS: Final = "power_automate.forms"
SOURCE_APPROVALS: Final = "power_automate.approvals"
SOURCE_SIGNALS: Final = "power_automate.signals"

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_ANSWERS: Final = 400
MAX_RESPONSES: Final = 100
MAX_ANSWER_CHARS: Final = 4000  # Microsoft Forms' long-answer limit
MAX_TEXT_CHARS: Final = 1000
MAX_COMMENT_CHARS: Final = 10_000
MAX_DETAILS_BYTES: Final = 16 * 1024
MAX_DEPTH: Final = 6
MAX_RESPONSE_CHARS: Final = 200  # an approverResponse: "Approve"/"Reject" or a custom response option
OUTCOME_SEPARATOR: Final = ", "  # how the connector joins the responses of an "all must respond" approval
MAX_OUTCOME_CHARS: Final = MAX_RESPONSES * (MAX_RESPONSE_CHARS + len(OUTCOME_SEPARATOR))
MAX_STAGE: Final = 20
_OUTCOME_MATCH_STEPS: Final = 10_000  # bound on matching a list outcome against the responses

# the legacy stage values, as sent -> (number, name); other numbers 1..MAX_STAGE have no name, and
# other names (the approval policy's) no number
STAGES: Final[Mapping[object, tuple[int, str]]] = {
    1: (1, "business_strategy"),
    2: (2, "finance"),
    "1": (1, "business_strategy"),
    "2": (2, "finance"),
    "business_strategy": (1, "business_strategy"),
    "finance": (2, "finance"),
}

# signal kind as sent -> (normalised Event kind, extra data)
SIGNAL_KINDS: Final[Mapping[str, tuple[str, Mapping[str, str]]]] = {
    "training.attended": ("training.attended", {}),
    "training": ("training.attended", {}),
    "citation.made": ("citation.made", {}),
    "citation": ("citation.made", {}),
    "report.viewed": ("user.activity", {"activity": "report_view"}),
    "dashboard.viewed": ("user.activity", {"activity": "dashboard_view"}),
}

# the responses of the built-in Approve/Reject types; custom response types let the flow author choose
APPROVER_RESPONSES: Final = frozenset({"Approve", "Reject"})

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # form ids, response ids, flow run ids (no ':')
_SIGNAL_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
_OBJECT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")  # Salesforce API / Dataverse logical names
_RECORD_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # 15/18-char Salesforce ids, GUIDs, ...
_EMAIL_RE = re.compile(r"^[^@\s\"<>(),;:\\\[\]]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,7})?)?(?P<tz>Z|z|[+-]\d{2}:\d{2})?$")
# the Forms connector's submitDate: M/d/yyyy h:mm:ss AM|PM, in UTC (e.g. "8/27/2024 12:34:21 PM")
_FORMS_DATETIME_RE = re.compile(
    r"^(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4}) "
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2}):(?P<second>\d{2}) (?P<half>AM|PM)$"
)
_STAGE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_ .-]{0,79}$")  # as plugin.config.ApprovalStage.name
_STAGE_DIGITS_RE = re.compile(r"^[1-9][0-9]?$")


class PayloadRejected(Exception):
    """The body is not what Power Automate sends. ``field`` is the offending field's dotted path."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # invalid_json, not_object, too_large, missing_field, wrong_type,
        # invalid_value, too_long, naive_datetime, invalid_datetime, invalid_email, duplicate
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Parsed:
    """What one body carried: events to store, or (no events) the reason it is ignored."""

    events: tuple[Event, ...]
    ignored: str | None = None  # set when the body is valid but not something OnRecord processes

    @property
    def is_ignored(self) -> bool:
        return self.ignored is not None


# -- entry points -------------------------------------------------------------------------------


def parse(endpoint: Literal["forms", "approvals", "signals"], raw: bytes, *, sender: str = "") -> Parsed:
    """Dispatch on the endpoint name (the last path segment of ``/hooks/power-automate/...``)."""
    parsers: Mapping[str, Callable[..., Parsed]] = {
        "forms": parse_forms,
        "approvals": parse_approvals,
        "signals": parse_signals,
    }
    try:
        parser = parsers[endpoint]
    except KeyError:
        raise ValueError(f"unknown Power Automate endpoint {endpoint!r}") from None
    return parser(raw, sender=sender)


def parse_forms(raw: bytes, *, sender: str = "") -> Parsed:
    """A Microsoft Forms submission -> one ``form.submitted``."""
    body, digest = _load(raw)
    form_id = _id(body, "form_id")
    form_name = _text(body, "form_name", max_len=MAX_TEXT_CHARS)
    response_id = _response_id(body, "response_id")
    responder_raw = _str(body, "responder", max_len=320)
    if responder_raw.strip().lower() == "anonymous":
        raise PayloadRejected(
            "invalid_value", "responder: anonymous form responses cannot be attributed", "responder"
        )
    responder = _email_value(responder_raw, "responder")
    submitted_at = _submitted_at(body)
    obj, record_id = _record(body, "record")
    answers = _answers(body, "answers")
    flow_run_id = _optional_id(body, "flow_run_id")
    data: dict[str, Any] = {
        "form_id": form_id,
        "form_name": form_name,
        "response_id": response_id,
        "responder": responder,
        "submitted_at": _iso(submitted_at),
        "answers": answers,
    }
    if flow_run_id is not None:
        data["flow_run_id"] = flow_run_id
    event = Event(
        source=SOURCE_FORMS,
        delivery_id=f"form:{form_id}:{response_id}",  # the inbox digests it if it is too long
        kind="form.submitted",
        occurred_at=submitted_at,
        object=obj,
        record_id=record_id,
        actor=responder,
        data=data,
        sender=sender,
        raw_digest=digest,
    )
    return Parsed(events=(event,))


def parse_approvals(raw: bytes, *, sender: str = "") -> Parsed:
    """One stage's Approvals output -> one ``approval.decided`` per response."""
    body, digest = _load(raw)
    stage, stage_name = _stage(body, "stage")
    stage_key = str(stage) if stage is not None else stage_name  # as today for 1/2 and legacy names
    obj, record_id = _record(body, "record")
    flow_run_id = _optional_id(body, "flow_run_id")
    approval = _object(body, "approval")

    name = _guid(approval, "name", "approval.name")
    title = _text(approval, "title", max_len=MAX_TEXT_CHARS, path="approval.title")
    outcome = _response_text(approval, "outcome", max_len=MAX_OUTCOME_CHARS, path="approval.outcome")
    request_date = _datetime(approval, "requestDate", path="approval.requestDate")
    completion_date = _optional_datetime(approval, "completionDate", path="approval.completionDate")
    expiration_date = _optional_datetime(approval, "expirationDate", path="approval.expirationDate")
    response_summary = _optional_text(
        approval, "responseSummary", max_len=MAX_COMMENT_CHARS, path="approval.responseSummary"
    )
    responses = _list(approval, "responses", path="approval.responses", max_items=MAX_RESPONSES)
    if not responses:
        raise PayloadRejected("invalid_value", "approval.responses is empty", "approval.responses")

    parsed = [_approval_response(item, f"approval.responses[{i}]") for i, item in enumerate(responses)]
    seen: set[str] = set()
    for i, r in enumerate(parsed):
        if r["responder_id"] in seen:
            raise PayloadRejected(
                "duplicate",
                f"approval.responses[{i}].responder.id repeats an earlier responder",
                f"approval.responses[{i}].responder.id",
            )
        seen.add(r["responder_id"])
        if r["response_date"] < request_date:
            raise PayloadRejected(
                "invalid_value",
                f"approval.responses[{i}].responseDate precedes approval.requestDate",
                f"approval.responses[{i}].responseDate",
            )
    outcome_responses = _outcome_responses(outcome, [r["approver_response"] for r in parsed])

    events = []
    for position, r in enumerate(parsed):
        data: dict[str, Any] = {
            "stage": stage,
            "stage_name": stage_name,
            "outcome": outcome,
            "outcome_responses": list(outcome_responses),
            "approver_response": r["approver_response"],
            "comments": r["comments"],
            "approval_name": name,
            "approval_title": title,
            "request_date": _iso(request_date),
            "response_request_date": _iso(r["request_date"]),
            "response_date": _iso(r["response_date"]),
            "completion_date": _iso(completion_date) if completion_date else None,
            "expiration_date": _iso(expiration_date) if expiration_date else None,
            "response_summary": response_summary,
            "responder": r["responder"],
            "response_index": position,
            "response_count": len(parsed),
            "flow_run_id": flow_run_id,
        }
        events.append(
            Event(
                source=SOURCE_APPROVALS,
                delivery_id=f"approval:{name}:{stage_key}:{r['responder_id']}",
                kind="approval.decided",
                occurred_at=r["response_date"],
                object=obj,
                record_id=record_id,
                actor=r["actor"],
                data=data,
                sender=sender,
                raw_digest=digest,
            )
        )
    return Parsed(events=tuple(events))


def parse_signals(raw: bytes, *, sender: str = "") -> Parsed:
    """A leader signal -> one event of the kind's normalised kind, or ignored if the kind is unknown."""
    body, digest = _load(raw)
    kind_sent = _str(body, "kind", max_len=100)
    mapping = SIGNAL_KINDS.get(kind_sent.strip().lower())
    if mapping is None:
        return Parsed(events=(), ignored=f"unknown signal kind {kind_sent[:100]!r}")
    kind, extra = mapping
    leader = _email(body, "leader")
    occurred_at = _datetime(body, "occurred_at")
    signal_id = _str(body, "id", max_len=200)
    if not _SIGNAL_ID_RE.match(signal_id):
        raise PayloadRejected("invalid_value", "id must match [A-Za-z0-9_.:@-]{1,200}", "id")
    details = _details(body, "details")
    obj: str | None = None
    record_id: str | None = None
    if body.get("record") is not None:
        obj, record_id = _record(body, "record")
    data: dict[str, Any] = {
        "signal_kind": kind_sent.strip().lower(),
        "leader": leader,
        "occurred_at": _iso(occurred_at),
        "details": details,
        **extra,
    }
    event = Event(
        source=SOURCE_SIGNALS,
        delivery_id=f"signal:{signal_id}",
        kind=kind,
        occurred_at=occurred_at,
        object=obj,
        record_id=record_id,
        actor=leader,
        data=data,
        sender=sender,
        raw_digest=digest,
    )
    return Parsed(events=(event,))


# -- body ---------------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PayloadRejected("invalid_json", f"{key}: duplicate key in JSON object", key)
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise PayloadRejected("invalid_json", f"JSON constant {name} is not allowed")


def _load(raw: bytes) -> tuple[dict[str, Any], str]:
    if not isinstance(raw, bytes | bytearray):
        raise TypeError("raw must be the request body as bytes")
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadRejected("too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = bytes(raw).decode("utf-8-sig")
        body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except PayloadRejected:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadRejected("invalid_json", f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadRejected("not_object", "body must be a JSON object")
    return body, digest


# -- fields -------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
    value = obj.get(key)
    if value is None:
        raise PayloadRejected("missing_field", f"{path} is required", path)
    return value


def _str(obj: Mapping[str, Any], key: str, *, max_len: int, path: str | None = None) -> str:
    path = path or key
    value = _get(obj, key, path)
    if not isinstance(value, str):
        raise PayloadRejected("wrong_type", f"{path} must be a string", path)
    if not value.strip():
        raise PayloadRejected("missing_field", f"{path} is empty", path)
    if len(value) > max_len:
        raise PayloadRejected("too_long", f"{path} exceeds {max_len} characters", path)
    return value


def _text(obj: Mapping[str, Any], key: str, *, max_len: int, path: str | None = None) -> str:
    return _str(obj, key, max_len=max_len, path=path).strip()


def _optional_text(obj: Mapping[str, Any], key: str, *, max_len: int, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadRejected("wrong_type", f"{path} must be a string", path)
    if len(value) > max_len:
        raise PayloadRejected("too_long", f"{path} exceeds {max_len} characters", path)
    return value


def _id(obj: Mapping[str, Any], key: str, path: str | None = None) -> str:
    path = path or key
    value = _str(obj, key, max_len=200, path=path)
    if not _ID_RE.match(value):
        raise PayloadRejected("invalid_value", f"{path} must match [A-Za-z0-9_-]{{1,200}}", path)
    return value


def _optional_id(obj: Mapping[str, Any], key: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _id(obj, key)


def _response_id(obj: Mapping[str, Any], key: str) -> str:
    value = _get(obj, key, key)
    if isinstance(value, bool):
        raise PayloadRejected("wrong_type", f"{key} must be an integer or a string", key)
    if isinstance(value, int):
        if value < 0:
            raise PayloadRejected("invalid_value", f"{key} must not be negative", key)
        return str(value)
    if isinstance(value, str):
        return _id(obj, key)
    raise PayloadRejected("wrong_type", f"{key} must be an integer or a string", key)


def _guid(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _str(obj, key, max_len=64, path=path)
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise PayloadRejected("invalid_value", f"{path} must be a GUID", path) from None
    if len(value) != 36:  # the canonical 8-4-4-4-12 form only
        raise PayloadRejected("invalid_value", f"{path} must be a GUID (8-4-4-4-12)", path)
    return str(parsed)


def _email_value(value: str, path: str) -> str:
    candidate = value.strip()
    if len(candidate) > 254 or not _EMAIL_RE.match(candidate):
        raise PayloadRejected("invalid_email", f"{path} must be an e-mail address or UPN", path)
    return candidate.lower()


def _email(obj: Mapping[str, Any], key: str, path: str | None = None) -> str:
    path = path or key
    return _email_value(_str(obj, key, max_len=320, path=path), path)


def _parse_datetime(value: Any, path: str) -> datetime:
    if not isinstance(value, str):
        raise PayloadRejected("wrong_type", f"{path} must be an ISO 8601 date-time string", path)
    match = _DATETIME_RE.match(value.strip())
    if match is None:
        raise PayloadRejected("invalid_datetime", f"{path} must be an ISO 8601 date-time", path)
    if match.group("tz") is None:
        raise PayloadRejected("naive_datetime", f"{path} has no timezone offset (use Z or +hh:mm)", path)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise PayloadRejected("invalid_datetime", f"{path} is not a valid date-time", path) from None
    if parsed.tzinfo is None:  # pragma: no cover - excluded by the pattern
        raise PayloadRejected("naive_datetime", f"{path} has no timezone offset", path)
    if not 2000 <= parsed.year <= 2200:
        raise PayloadRejected("invalid_datetime", f"{path} is out of range", path)
    return parsed.astimezone(UTC)


def _datetime(obj: Mapping[str, Any], key: str, path: str | None = None) -> datetime:
    path = path or key
    return _parse_datetime(_get(obj, key, path), path)


def _optional_datetime(obj: Mapping[str, Any], key: str, path: str) -> datetime | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return _parse_datetime(value, path)


def _submitted_at(obj: Mapping[str, Any]) -> datetime:
    """The forms body's submission time: ``submitted_at``, else the connector's own ``submitDate``."""
    key = (
        "submitted_at"
        if obj.get("submitted_at") is not None or obj.get("submitDate") is None
        else "submitDate"
    )
    value = _get(obj, key, key)
    if isinstance(value, str) and _FORMS_DATETIME_RE.match(value.strip()):
        return _forms_datetime(value.strip(), key)
    return _parse_datetime(value, key)


def _forms_datetime(value: str, path: str) -> datetime:
    """The Forms connector's ``M/d/yyyy h:mm:ss AM|PM`` (US order, 12-hour clock), which is UTC."""
    match = _FORMS_DATETIME_RE.match(value)
    if match is None:  # pragma: no cover - the caller matched it
        raise PayloadRejected("invalid_datetime", f"{path} is not a valid date-time", path)
    hour = int(match.group("hour"))
    if not 1 <= hour <= 12:
        raise PayloadRejected("invalid_datetime", f"{path}: the hour must be 1-12 before AM/PM", path)
    hour = hour % 12 + (12 if match.group("half") == "PM" else 0)
    try:
        parsed = datetime(
            int(match.group("year")),
            int(match.group("month")),
            int(match.group("day")),
            hour,
            int(match.group("minute")),
            int(match.group("second")),
            tzinfo=UTC,
        )
    except ValueError:
        raise PayloadRejected(
            "invalid_datetime", f"{path} is not a valid date-time (month/day/year h:mm:ss AM|PM)", path
        ) from None
    if not 2000 <= parsed.year <= 2200:
        raise PayloadRejected("invalid_datetime", f"{path} is out of range", path)
    return parsed


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _object(obj: Mapping[str, Any], key: str, path: str | None = None) -> dict[str, Any]:
    path = path or key
    value = _get(obj, key, path)
    if not isinstance(value, dict):
        raise PayloadRejected("wrong_type", f"{path} must be an object", path)
    return value


def _list(obj: Mapping[str, Any], key: str, *, path: str, max_items: int) -> list[Any]:
    value = _get(obj, key, path)
    if not isinstance(value, list):
        raise PayloadRejected("wrong_type", f"{path} must be an array", path)
    if len(value) > max_items:
        raise PayloadRejected("too_long", f"{path} has more than {max_items} items", path)
    return value


def _record(obj: Mapping[str, Any], key: str) -> tuple[str, str]:
    record = _object(obj, key)
    sobject = _str(record, "object", max_len=80, path=f"{key}.object")
    if not _OBJECT_RE.match(sobject):
        raise PayloadRejected("invalid_value", f"{key}.object is not a CRM object API name", f"{key}.object")
    record_id = _str(record, "id", max_len=100, path=f"{key}.id")
    if not _RECORD_ID_RE.match(record_id):
        raise PayloadRejected("invalid_value", f"{key}.id is not a CRM record id", f"{key}.id")
    return sobject, record_id


def _stage(obj: Mapping[str, Any], key: str) -> tuple[int | None, str | None]:
    """(number, name): a legacy value (see STAGES), a number 1..MAX_STAGE, or a policy's stage name."""
    expected = f"a stage number 1-{MAX_STAGE} or a stage name matching {_STAGE_NAME_RE.pattern}"
    value = _get(obj, key, key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PayloadRejected("wrong_type", f"{key} must be {expected}", key)
    legacy = STAGES.get(value)
    if legacy is not None:
        return legacy
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif _STAGE_DIGITS_RE.match(value):
        number = int(value)
    elif _STAGE_NAME_RE.match(value):
        return None, value
    if number is None or not 1 <= number <= MAX_STAGE:
        raise PayloadRejected("invalid_value", f"{key} must be {expected}, got {_show(value)}", key)
    return number, None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:97]}..."


def _answers(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    answers = _object(obj, key)
    if len(answers) > MAX_ANSWERS:
        raise PayloadRejected("too_long", f"{key} has more than {MAX_ANSWERS} answers", key)
    result: dict[str, Any] = {}
    for name, value in answers.items():
        path = f"{key}.{name}"
        if not name.strip() or len(name) > 200:
            raise PayloadRejected("invalid_value", f"{key}: answer names must be 1-200 characters", path)
        result[name] = _answer_value(value, path)
    return result


def _answer_value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # pragma: no cover - json constants are refused earlier
            raise PayloadRejected("invalid_value", f"{path} is not a finite number", path)
        return value
    if isinstance(value, str):
        if len(value) > MAX_ANSWER_CHARS:
            raise PayloadRejected("too_long", f"{path} exceeds {MAX_ANSWER_CHARS} characters", path)
        return value
    if isinstance(value, list):
        if len(value) > 100:
            raise PayloadRejected("too_long", f"{path} has more than 100 choices", path)
        items = []
        for i, item in enumerate(value):
            if isinstance(item, list | dict):
                raise PayloadRejected("wrong_type", f"{path}[{i}] must be a scalar", f"{path}[{i}]")
            items.append(_answer_value(item, f"{path}[{i}]"))
        return items
    raise PayloadRejected("wrong_type", f"{path} must be a string, number, boolean, null or list", path)


def _details(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadRejected("wrong_type", f"{key} must be an object", key)
    if _depth(value) > MAX_DEPTH:
        raise PayloadRejected("too_long", f"{key} is nested deeper than {MAX_DEPTH} levels", key)
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > MAX_DETAILS_BYTES:
        raise PayloadRejected("too_long", f"{key} exceeds {MAX_DETAILS_BYTES} bytes", key)
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _approval_response(item: Any, path: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise PayloadRejected("wrong_type", f"{path} must be an object", path)
    responder = _object(item, "responder", f"{path}.responder")
    responder_id = _guid(responder, "id", f"{path}.responder.id")
    tenant_id = _guid(responder, "tenantId", f"{path}.responder.tenantId")
    display_name = _optional_text(
        responder, "displayName", max_len=MAX_TEXT_CHARS, path=f"{path}.responder.displayName"
    )
    email: str | None = None
    if responder.get("email") not in (None, ""):
        email = _email(responder, "email", f"{path}.responder.email")
    upn = _email(responder, "userPrincipalName", f"{path}.responder.userPrincipalName")
    approver_response = _response_text(
        item, "approverResponse", max_len=MAX_RESPONSE_CHARS, path=f"{path}.approverResponse"
    )
    request_date = _datetime(item, "requestDate", f"{path}.requestDate")
    response_date = _datetime(item, "responseDate", f"{path}.responseDate")
    comments = _optional_text(item, "comments", max_len=MAX_COMMENT_CHARS, path=f"{path}.comments")
    return {
        "responder_id": responder_id,
        "actor": email or upn,
        "responder": {
            "id": responder_id,
            "display_name": display_name,
            "email": email,
            "upn": upn,
            "tenant_id": tenant_id,
        },
        "approver_response": approver_response,
        "request_date": request_date,
        "response_date": response_date,
        "comments": comments,
    }


def _response_text(obj: Mapping[str, Any], key: str, *, max_len: int, path: str) -> str:
    """An approverResponse or outcome: non-blank text without control characters, kept exactly."""
    value = _str(obj, key, max_len=max_len, path=path)
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise PayloadRejected("invalid_value", f"{path} contains control characters", path)
    return value


def _outcome_responses(outcome: str, answers: Sequence[str]) -> tuple[str, ...]:
    """The response texts ``approval.outcome`` lists, checked against the responses (case-sensitive).

    Either the outcome is one response's text (a single-value outcome), or it is every response's
    text exactly once, in any order, joined by ", " (what "Everyone must approve" and "Wait for all
    responses" give). A built-in "Approve" outcome is refused when a response is "Reject".
    """
    if outcome in answers:
        if outcome == "Approve" and "Reject" in answers:
            raise PayloadRejected(
                "invalid_value",
                "approval.outcome is 'Approve' but a response is 'Reject'",
                "approval.outcome",
            )
        return (outcome,)
    listed = _match_outcome_list(outcome, answers)
    if listed is None:
        shown = ", ".join(_show(a) for a in answers[:5]) + (", ..." if len(answers) > 5 else "")
        raise PayloadRejected(
            "invalid_value",
            f"approval.outcome {_show(outcome)} must be one response's approverResponse, or every "
            f"response's approverResponse joined by ', ' (case-sensitive); the responses are {shown}",
            "approval.outcome",
        )
    return listed


def _match_outcome_list(outcome: str, answers: Sequence[str]) -> tuple[str, ...] | None:
    """The order in which ``outcome`` lists every one of ``answers`` joined by ", ", or None.

    Matching is by whole response texts, so a custom response containing ", " is not split. The
    search backtracks only when one text is a prefix of another; it gives up after a bounded number
    of steps (never reached by what the connector writes).
    """
    if len(outcome) != sum(map(len, answers)) + len(OUTCOME_SEPARATOR) * (len(answers) - 1):
        return None
    remaining = Counter(answers)
    texts = sorted(remaining, key=len, reverse=True)
    order: list[str] = []
    steps = 0

    def walk(pos: int) -> bool:
        nonlocal steps
        for text in texts:
            if not remaining[text] or not outcome.startswith(text, pos):
                continue
            steps += 1  # a candidate: counted, as only these can make the search backtrack
            if steps > _OUTCOME_MATCH_STEPS:
                return False
            end = pos + len(text)
            last = len(order) + 1 == len(answers)
            if last and end != len(outcome):
                continue
            if not last and not outcome.startswith(OUTCOME_SEPARATOR, end):
                continue
            remaining[text] -= 1
            order.append(text)
            if last or walk(end + len(OUTCOME_SEPARATOR)):
                return True
            order.pop()
            remaining[text] += 1
        return False

    return tuple(order) if walk(0) else None
