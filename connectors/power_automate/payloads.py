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

Each body's shape is a pydantic model in connectors/power_automate/models.py, which validates it
and from which both OpenAPI documents are generated; this module decodes the body, has the model
check it, and turns it into events. Validation rules common to all three:

* the body is UTF-8 JSON, an object, at most :data:`MAX_BODY_BYTES`; duplicate keys, NaN/Infinity,
  huge integers, lone surrogates and nesting deeper than plugin.strict_json allows are refused
  (``invalid_json``), before any model sees the body;
* unknown keys are tolerated and ignored, at every level (flow authors add fields; the Approvals
  connector adds fields over time) -- only the documented fields are read and carried;
* timestamps are ISO 8601 date-times *with* an offset (``Z`` or ``+hh:mm``; up to 7 fraction digits
  as ``utcNow()`` writes them); naive ones are refused (the only other form accepted is the Forms
  connector's ``submitDate`` text, which is UTC, for the forms body's submission time); all are
  normalised to UTC;
* strings are length-bounded; e-mail/UPN fields must look like ``local@domain.tld``;
* every refusal is one :class:`PayloadRejected` naming the field (its JSON path, e.g.
  ``approval.responses[0].responder.id``), to answer 400; when several fields are wrong, the first
  in the model's order is named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

from connectors.power_automate.models import (
    MAX_RESPONSES,
    STAGES,
    ApprovalDecision,
    FormSubmission,
    Signal,
    SignalHead,
)
from plugin import strict_json
from plugin.api_models import BodyModel, BodyRefused, validate
from plugin.events import Event

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_RESPONSES",
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
M = TypeVar("M", bound=BodyModel)

# signal kind as sent -> (normalised Event kind, extra data)
SIGNAL_KINDS: Final[Mapping[str, tuple[str, Mapping[str, str]]]] = {
    "training.attended": ("training.attended", {}),
    "training": ("training.attended", {}),
    "citation.made": ("citation.made", {}),
    "citation": ("citation.made", {}),
    "report.viewed": ("user.activity", {"activity": "report_view"}),
    "dashboard.viewed": ("user.activity", {"activity": "dashboard_view"}),
}


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
    form = _model(FormSubmission, body)
    submitted_at = form.submission_time
    data: dict[str, Any] = {
        "form_id": form.form_id,
        "form_name": form.form_name,
        "response_id": form.response_id,
        "responder": form.responder,
        "submitted_at": _iso(submitted_at),
        "answers": form.answers,
    }
    if form.flow_run_id is not None:
        data["flow_run_id"] = form.flow_run_id
    event = Event(
        source=SOURCE_FORMS,
        delivery_id=f"form:{form.form_id}:{form.response_id}",  # the inbox digests it if it is too long
        kind="form.submitted",
        occurred_at=submitted_at,
        object=form.record.object,
        record_id=form.record.id,
        actor=form.responder,
        data=data,
        sender=sender,
        raw_digest=digest,
    )
    return Parsed(events=(event,))


def parse_approvals(raw: bytes, *, sender: str = "") -> Parsed:
    """One stage's Approvals output -> one ``approval.decided`` per response."""
    body, digest = _load(raw)
    decision = _model(ApprovalDecision, body)
    stage, stage_name = decision.stage
    stage_key = str(stage) if stage is not None else stage_name  # as today for 1/2 and legacy names
    approval = decision.approval
    outcome_responses = list(approval.outcome_responses)
    events = []
    for position, r in enumerate(approval.responses):
        responder = r.responder
        data: dict[str, Any] = {
            "stage": stage,
            "stage_name": stage_name,
            "outcome": approval.outcome,
            "outcome_responses": outcome_responses,
            "approver_response": r.approverResponse,
            "comments": r.comments,
            "approval_name": approval.name,
            "approval_title": approval.title,
            "request_date": _iso(approval.requestDate),
            "response_request_date": _iso(r.requestDate),
            "response_date": _iso(r.responseDate),
            "completion_date": _iso(approval.completionDate) if approval.completionDate else None,
            "expiration_date": _iso(approval.expirationDate) if approval.expirationDate else None,
            "response_summary": approval.responseSummary,
            "responder": {
                "id": responder.id,
                "display_name": responder.displayName,
                "email": responder.email,
                "upn": responder.userPrincipalName,
                "tenant_id": responder.tenantId,
            },
            "response_index": position,
            "response_count": len(approval.responses),
            "flow_run_id": decision.flow_run_id,
        }
        events.append(
            Event(
                source=SOURCE_APPROVALS,
                delivery_id=f"approval:{approval.name}:{stage_key}:{responder.id}",
                kind="approval.decided",
                occurred_at=r.responseDate,
                object=decision.record.object,
                record_id=decision.record.id,
                actor=responder.email or responder.userPrincipalName,
                data=data,
                sender=sender,
                raw_digest=digest,
            )
        )
    return Parsed(events=tuple(events))


def parse_signals(raw: bytes, *, sender: str = "") -> Parsed:
    """A leader signal -> one event of the kind's normalised kind, or ignored if the kind is unknown."""
    body, digest = _load(raw)
    kind_sent = _model(SignalHead, body).kind
    mapping = SIGNAL_KINDS.get(kind_sent.strip().lower())
    if mapping is None:
        return Parsed(events=(), ignored=f"unknown signal kind {kind_sent[:100]!r}")
    kind, extra = mapping
    signal = _model(Signal, body)
    data: dict[str, Any] = {
        "signal_kind": kind_sent.strip().lower(),
        "leader": signal.leader,
        "occurred_at": _iso(signal.occurred_at),
        "details": signal.details,
        **extra,
    }
    event = Event(
        source=SOURCE_SIGNALS,
        delivery_id=f"signal:{signal.id}",
        kind=kind,
        occurred_at=signal.occurred_at,
        object=signal.record.object if signal.record else None,
        record_id=signal.record.id if signal.record else None,
        actor=signal.leader,
        data=data,
        sender=sender,
        raw_digest=digest,
    )
    return Parsed(events=(event,))


# -- body ---------------------------------------------------------------------------------------


def _load(raw: bytes) -> tuple[dict[str, Any], str]:
    """The body as a JSON object (decoded by plugin.strict_json) and its digest."""
    if not isinstance(raw, bytes | bytearray):
        raise TypeError("raw must be the request body as bytes")
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadRejected("too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        body = strict_json.loads(bytes(raw))
    except strict_json.JsonRefused as exc:  # duplicate keys, NaN/Infinity, too deep, not UTF-8 ...
        raise PayloadRejected("invalid_json", f"body is not valid UTF-8 JSON: {exc.message}") from None
    if not isinstance(body, dict):
        raise PayloadRejected("not_object", "body must be a JSON object")
    return body, digest


def _model(model: type[M], body: dict[str, Any]) -> M:
    try:
        return validate(model, body)
    except BodyRefused as exc:
        raise PayloadRejected(exc.reason, exc.message, exc.field) from None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
