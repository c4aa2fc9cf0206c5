"""The bodies Power Automate flows send to OnRecord, each described once: these models validate them
(connectors/power_automate/payloads.py turns a valid body into events) and plugin/openapi.py
generates both OpenAPI documents' schemas from them. So are the connector's own answers and what it
posts to a subscribed flow (:class:`Subscription`, :class:`Connection`, :class:`Notification`: the
conventions of plugin/api_responses.py).

What each member accepts, and why, is in payloads.py's docstring; the reason codes and the
refusal's shape are plugin/api_models.py's. A model's docstring is its description in the
documents; ``Field(title=...)`` is the label a flow author sees (``x-ms-summary``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from plugin.api_models import (
    API_NAME_RE,
    RECORD_ID_RE,
    BodyModel,
    Checked,
    email,
    email_value,
    fail,
    in_range,
    parse_timestamp,
    text,
    text_check,
    timestamp,
)
from plugin.api_responses import DateTime, Omissible, ResponseModel

# What a flow can subscribe to (POST /api/subscriptions): the notifications OnRecord sends.
TOPICS: Final = ("approval.blocked", "approval.verified", "leader.champion")

__all__ = [
    "OPENAPI_MODELS",
    "STAGES",
    "SUBSCRIPTION_REASONS",
    "ApprovalDecision",
    "ApprovalOutput",
    "ApprovalResponder",
    "ApprovalResponse",
    "Connection",
    "FormSubmission",
    "Notification",
    "NotificationData",
    "RecordRef",
    "Signal",
    "SignalHead",
    "Subscription",
    "SubscriptionRequest",
]

MAX_ANSWERS: Final = 400
MAX_CHOICES: Final = 100
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

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # form ids, response ids, flow run ids (no ':')
_SIGNAL_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
# the Forms connector's submitDate: M/d/yyyy h:mm:ss AM|PM, in UTC (e.g. "8/27/2024 12:34:21 PM")
_FORMS_DATETIME_RE = re.compile(
    r"^(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4}) "
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2}):(?P<second>\d{2}) (?P<half>AM|PM)$"
)
_STAGE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_ .-]{0,79}$")  # as plugin.config.ApprovalStage.name
_STAGE_DIGITS_RE = re.compile(r"^[1-9][0-9]?$")
_WORKFLOW_RUN = "workflow()?['run']?['name']"


def show(value: object) -> str:
    """A sent value, quoted and cut short, for a message."""
    text_ = repr(value)
    return text_ if len(text_) <= 100 else f"{text_[:97]}..."


# -- member types ---------------------------------------------------------------------------------

Id = Annotated[str, text(200, pattern=_ID_RE, mismatch="must match [A-Za-z0-9_-]{1,200}")]
OptionalId = Annotated[
    str | None, text(200, pattern=_ID_RE, mismatch="must match [A-Za-z0-9_-]{1,200}", optional=True)
]
Title = Annotated[str, text(MAX_TEXT_CHARS, strip=True)]
Email = Annotated[str, email()]
OptionalEmail = Annotated[str | None, email(optional=True)]
Timestamp = Annotated[datetime, timestamp()]
OptionalTimestamp = Annotated[datetime | None, timestamp(optional=True)]
OptionalTitle = Annotated[str | None, text(MAX_TEXT_CHARS, optional=True, blank=True)]
OptionalComment = Annotated[str | None, text(MAX_COMMENT_CHARS, optional=True, blank=True)]


def _guid(value: Any) -> str:
    candidate = text_check(64)(value)
    try:
        parsed = uuid.UUID(candidate)
    except ValueError:
        raise fail("invalid_value", "must be a GUID") from None
    if len(candidate) != 36:  # the canonical 8-4-4-4-12 form only
        raise fail("invalid_value", "must be a GUID (8-4-4-4-12)")
    return str(parsed)


Guid = Annotated[str, Checked(_guid, {"type": "string", "format": "uuid"})]


def _response_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail("wrong_type", "must be an integer or a string")
    if isinstance(value, int):
        if value < 0:
            raise fail("invalid_value", "must not be negative")
        return str(value)
    return str(text_check(200, pattern=_ID_RE, mismatch="must match [A-Za-z0-9_-]{1,200}")(value))


ResponseId = Annotated[str, Checked(_response_id, {"type": "integer", "minimum": 0})]


def _forms_datetime(value: str) -> datetime:
    """The Forms connector's ``M/d/yyyy h:mm:ss AM|PM`` (US order, 12-hour clock), which is UTC."""
    match = _FORMS_DATETIME_RE.match(value)
    if match is None:  # pragma: no cover - the caller matched it
        raise fail("invalid_datetime", "is not a valid date-time")
    hour = int(match.group("hour"))
    if not 1 <= hour <= 12:
        raise fail("invalid_datetime", "the hour must be 1-12 before AM/PM")
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
        raise fail("invalid_datetime", "is not a valid date-time (month/day/year h:mm:ss AM|PM)") from None
    return in_range(parsed)


def _submission_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str) and _FORMS_DATETIME_RE.match(value.strip()):
        return _forms_datetime(value.strip())
    return parse_timestamp(value)


SubmissionTime = Annotated[datetime | None, Checked(_submission_time, {"type": "string"})]


def _answer(value: Any, at: tuple[str | int, ...]) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # pragma: no cover - strict_json refuses them earlier
            raise fail("invalid_value", "is not a finite number", *at)
        return value
    if isinstance(value, str):
        if len(value) > MAX_ANSWER_CHARS:
            raise fail("too_long", f"exceeds {MAX_ANSWER_CHARS} characters", *at)
        return value
    if isinstance(value, list):
        if len(value) > MAX_CHOICES:
            raise fail("too_long", f"has more than {MAX_CHOICES} choices", *at)
        items = []
        for i, item in enumerate(value):
            if isinstance(item, list | dict):
                raise fail("wrong_type", "must be a scalar", *at, i)
            items.append(_answer(item, (*at, i)))
        return items
    raise fail("wrong_type", "must be a string, number, boolean, null or list", *at)


def _answers(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail("wrong_type", "must be an object")
    if len(value) > MAX_ANSWERS:
        raise fail("too_long", f"has more than {MAX_ANSWERS} answers")
    result: dict[str, Any] = {}
    for name, answer in value.items():
        if not name.strip() or len(name) > 200:
            raise fail("invalid_value", "answer names must be 1-200 characters", name)
        result[name] = _answer(answer, (name,))
    return result


Answers = Annotated[
    dict[str, Any],
    Checked(_answers, {"type": "object", "additionalProperties": True, "maxProperties": MAX_ANSWERS}),
]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _details(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail("wrong_type", "must be an object")
    if _depth(value) > MAX_DEPTH:
        raise fail("too_long", f"is nested deeper than {MAX_DEPTH} levels")
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > MAX_DETAILS_BYTES:
        raise fail("too_long", f"exceeds {MAX_DETAILS_BYTES} bytes")
    return value


Details = Annotated[dict[str, Any], Checked(_details, {"type": "object", "additionalProperties": True})]


def _stage(value: Any) -> tuple[int | None, str | None]:
    """(number, name): a legacy value (see STAGES), a number 1..MAX_STAGE, or a policy's stage name."""
    expected = f"a stage number 1-{MAX_STAGE} or a stage name matching {_STAGE_NAME_RE.pattern}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail("wrong_type", f"must be {expected}")
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
        raise fail("invalid_value", f"must be {expected}, got {show(value)}")
    return number, None


Stage = Annotated[tuple[int | None, str | None], Checked(_stage, {"type": "string"})]


def _raw(value: Any) -> Any:
    return value


# -- shapes ---------------------------------------------------------------------------------------


class RecordRef(BodyModel):
    """The CRM record the flow created or updated."""

    object: Annotated[str, text(80, pattern=API_NAME_RE, mismatch="is not a CRM object API name")] = Field(
        description="API name, e.g. Opportunity."
    )
    id: Annotated[str, text(100, pattern=RECORD_ID_RE, mismatch="is not a CRM record id")] = Field(
        description="Record id."
    )


class FormSubmission(BodyModel):
    """A form response, as the flow has it after 'Get response details'."""

    form_id: Id = Field(description="The form's id.")
    form_name: Title = Field(description="The form's title.")
    response_id: ResponseId = Field(
        description="The response id: the Forms connector's integer (a string is accepted too)."
    )
    responder: Annotated[str, text(320)] = Field(
        description="The responder's e-mail or UPN (anonymous responses are refused).",
        json_schema_extra={"format": "email"},
    )
    submitted_at: SubmissionTime = Field(
        default=None,
        description=(
            "When it was submitted: ISO 8601 with a time zone (Z or +hh:mm), or the Forms connector's "
            "submitDate as 'Get response details' gives it, M/d/yyyy h:mm:ss AM|PM in UTC "
            "(e.g. 8/27/2024 12:34:21 PM). A body without submitted_at may send submitDate instead."
        ),
    )
    submitDate: SubmissionTime = Field(
        default=None,
        description="The Forms connector's submitDate (M/d/yyyy h:mm:ss AM|PM, UTC), when no submitted_at.",
    )
    record: RecordRef
    answers: Answers = Field(description="Answers by stable names: text, numbers, booleans or lists of them.")
    flow_run_id: OptionalId = Field(default=None, description=_WORKFLOW_RUN)
    flow_name: Annotated[object, Checked(_raw, {"type": "string"})] = Field(
        default=None, description="The flow's display name (not carried)."
    )

    @field_validator("responder", mode="after")
    @classmethod
    def _attributable(cls, value: str) -> str:
        if value.strip().lower() == "anonymous":
            raise fail("invalid_value", "anonymous form responses cannot be attributed")
        return email_value(value)

    @field_validator("submitDate", mode="wrap")
    @classmethod
    def _only_without_submitted_at(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        if info.data.get("submitted_at") is not None:
            return None  # submitted_at wins; submitDate is not read
        return handler(value)

    @model_validator(mode="after")
    def _has_submission_time(self) -> FormSubmission:
        if self.submitted_at is None and self.submitDate is None:
            raise fail("missing_field", "is required", "submitted_at")
        return self

    @property
    def submission_time(self) -> datetime:
        """When it was submitted (UTC): submitted_at, else the connector's submitDate."""
        when = self.submitted_at or self.submitDate
        assert when is not None
        return when


class ApprovalResponder(BodyModel):
    """Who responded."""

    id: Guid = Field(description="Entra ID object id (GUID).")
    tenantId: Guid = Field(description="Tenant id (GUID).")
    displayName: OptionalTitle = Field(default=None, description="Display name.")
    email: OptionalEmail = Field(default=None, description="E-mail.")
    userPrincipalName: Email = Field(description="UPN.")


class ApprovalResponse(BodyModel):
    """One approver's response."""

    responder: ApprovalResponder
    approverResponse: Annotated[str, text(MAX_RESPONSE_CHARS, no_controls=True)] = Field(
        description=(
            "The response as the approver chose it: Approve or Reject, or a custom response option "
            "(1-200 characters, no control characters). Kept exactly; the approval policy's "
            "approve_responses say which texts mean yes."
        )
    )
    requestDate: Timestamp = Field(description="When the approval was requested.")
    responseDate: Timestamp = Field(description="When this approver responded.")
    comments: OptionalComment = Field(
        default=None,
        description="The approver's comments (text), or null if none.",
        json_schema_extra={"x-nullable": True},
    )


class ApprovalOutput(BodyModel):
    """body('Start_and_wait_for_an_approval'), as the Approvals connector gives it."""

    name: Guid = Field(description="The approval's id (GUID).")
    title: Title = Field(description="The approval's title.")
    outcome: Annotated[str, text(MAX_OUTCOME_CHARS, no_controls=True)] = Field(
        description=(
            "One response's approverResponse (e.g. Approve, Reject, or a custom response), or every "
            "response's approverResponse joined by ', ' as 'Everyone must approve' and 'Wait for all "
            "responses' give it (e.g. 'Approve, Approve, Approve'). Case-sensitive."
        )
    )
    requestDate: Timestamp = Field(description="When it was requested.")
    completionDate: OptionalTimestamp = Field(default=None, description="When it completed.")
    expirationDate: OptionalTimestamp = Field(default=None, description="When it expires.")
    responseSummary: OptionalComment = Field(
        default=None, description="The connector's summary of the responses."
    )
    responses: list[ApprovalResponse] = Field(min_length=1, max_length=MAX_RESPONSES)

    @model_validator(mode="after")
    def _responses_agree(self) -> ApprovalOutput:
        seen: set[str] = set()
        for i, response in enumerate(self.responses):
            if response.responder.id in seen:
                raise fail("duplicate", "repeats an earlier responder", "responses", i, "responder", "id")
            seen.add(response.responder.id)
            if response.responseDate < self.requestDate:
                raise fail("invalid_value", "precedes approval.requestDate", "responses", i, "responseDate")
        self.outcome_responses  # noqa: B018 - checked once here, refused with the path
        return self

    @property
    def outcome_responses(self) -> tuple[str, ...]:
        """The response texts ``outcome`` lists, checked against the responses (case-sensitive).

        Either the outcome is one response's text (a single-value outcome), or it is every
        response's text exactly once, in any order, joined by ", " (what "Everyone must approve" and
        "Wait for all responses" give). A built-in "Approve" outcome is refused when a response is
        "Reject".
        """
        outcome, answers = self.outcome, [r.approverResponse for r in self.responses]
        if outcome in answers:
            if outcome == "Approve" and "Reject" in answers:
                raise fail("invalid_value", "is 'Approve' but a response is 'Reject'", "outcome")
            return (outcome,)
        listed = match_outcome_list(outcome, answers)
        if listed is None:
            shown = ", ".join(show(a) for a in answers[:5]) + (", ..." if len(answers) > 5 else "")
            raise fail(
                "invalid_value",
                f"{show(outcome)} must be one response's approverResponse, or every response's "
                f"approverResponse joined by ', ' (case-sensitive); the responses are {shown}",
                "outcome",
            )
        return listed


class ApprovalDecision(BodyModel):
    """One stage's decision in the two-stage approval."""

    stage: Stage = Field(
        description=(
            "The stage: its number 1-20 (digits; a JSON integer is accepted too) or the name the "
            "approval policy gives it, 1-80 characters matching ^[A-Za-z][A-Za-z0-9_ .-]{0,79}$ "
            "(e.g. 'business strategy'). Legacy: 1 or business_strategy, 2 or finance."
        )
    )
    record: RecordRef
    flow_run_id: OptionalId = Field(default=None, description=_WORKFLOW_RUN)
    approval: ApprovalOutput


class SignalHead(BodyModel):
    """The kind of a leader signal: read first, as an unknown kind is ignored whatever else is sent."""

    kind: Annotated[str, text(100)] = Field(
        description="training.attended (or training), citation.made, report.viewed, dashboard.viewed."
    )


class Signal(SignalHead):
    """A leader signal born outside the CRM; unknown kinds are acknowledged and ignored."""

    leader: Email = Field(description="The leader's e-mail.")
    occurred_at: Timestamp = Field(description="When it happened, with a time zone.")
    id: Annotated[str, text(200, pattern=_SIGNAL_ID_RE, mismatch="must match [A-Za-z0-9_.:@-]{1,200}")] = (
        Field(description="Unique id of the signal (a retry carries the same one).")
    )
    details: Details = Field(default_factory=dict, description="Free details.")
    record: RecordRef | None = None


def _callback_url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail("missing_field", "is required")
    return value  # checked further (https, host allowed, public) by subscriptions.check_url


def _topics(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(e, str) and e in TOPICS for e in value):
        raise fail("invalid_value", f"must be a non-empty list of {', '.join(TOPICS)}")
    return list(dict.fromkeys(value))


class SubscriptionRequest(BodyModel):
    """Subscribe a flow's trigger to OnRecord's notifications."""

    callback_url: Annotated[str, Checked(_callback_url, {"type": "string", "format": "uri"})] = Field(
        title="Callback URL",
        description="Where OnRecord POSTs notifications (filled in by Power Automate).",
        json_schema_extra={"x-ms-notification-url": True, "x-ms-visibility": "internal"},
    )
    events: Annotated[
        list[str],
        Checked(_topics, {"type": "array", "items": {"type": "string", "enum": list(TOPICS)}}),
    ] = Field(title="Events", description="The notifications the flow wants (each once).")


# POST /api/subscriptions' reason codes (connectors/power_automate/subscriptions.py)
SUBSCRIPTION_REASONS: Final = {"wrong_type": "missing_field", "invalid_value": "bad_field"}


def match_outcome_list(outcome: str, answers: Sequence[str]) -> tuple[str, ...] | None:
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
        for candidate in texts:
            if not remaining[candidate] or not outcome.startswith(candidate, pos):
                continue
            steps += 1  # a candidate: counted, as only these can make the search backtrack
            if steps > _OUTCOME_MATCH_STEPS:
                return False
            end = pos + len(candidate)
            last = len(order) + 1 == len(answers)
            if last and end != len(outcome):
                continue
            if not last and not outcome.startswith(OUTCOME_SEPARATOR, end):
                continue
            remaining[candidate] -= 1
            order.append(candidate)
            if last or walk(end + len(OUTCOME_SEPARATOR)):
                return True
            order.pop()
            remaining[candidate] += 1
        return False

    return tuple(order) if walk(0) else None


# -- what OnRecord answers and posts -----------------------------------------------------------


def _topic(value: Any) -> str:
    if not isinstance(value, str) or value not in TOPICS:
        raise fail("invalid_value", f"must be one of {', '.join(TOPICS)}")
    return value


Topic = Annotated[str, Checked(_topic, {"type": "string", "enum": list(TOPICS)})]


class Subscription(ResponseModel):
    """A subscription; DELETE its Location to unsubscribe."""

    id: str = Field(description="Subscription id.")
    events: list[Topic]
    created_at: DateTime = Field(description="When it was created.")


class Connection(ResponseModel):
    """The connection works: the token was accepted."""

    ok: bool = Field(description="Always true.")
    caller: str = Field(description="Who the token is.")


class NotificationData(ResponseModel):
    """What happened; the fields present depend on the topic."""

    # Open: each topic adds members of its own (the rules' notification data), and a flow reads the
    # ones it knows.
    model_config = ConfigDict(extra="allow")

    object: Omissible[str] = Field(default=None, description="CRM object of the record concerned.")
    record_id: Omissible[str] = Field(default=None, description="The record concerned.")
    reason: Omissible[str] = Field(
        default=None, description="Why an approval was blocked, or what verified it."
    )
    stage: Omissible[int] = Field(default=None, description="The approval stage (1 or 2).")
    # null when the CRM did not say who changed the record
    actor: str | None = Field(default=None, description="Who acted.")
    leader: Omissible[str] = Field(default=None, description="The leader (leader.champion).")
    period: Omissible[str] = Field(default=None, description="The period (leader.champion).")
    score: Omissible[float] = Field(default=None, description="The leader's score (leader.champion).")


class Notification(ResponseModel):
    """What OnRecord POSTs to a subscribed flow. The same id may arrive twice (at-least-once)."""

    id: str = Field(description="Notification id: the same on a retried delivery.")
    topic: Topic = Field(description="What kind of notification.")
    occurred_at: DateTime = Field(description="When the event behind it happened.")
    key: Omissible[str] = Field(
        default=None, description="What it is about, e.g. Opportunity/006... or actor/jane@contoso.com."
    )
    data: NotificationData


# What plugin/openapi.py documents for this connector: the request bodies, then the answers and the
# notification (their parts come along as $defs).
OPENAPI_MODELS: Final = (
    FormSubmission,
    ApprovalDecision,
    Signal,
    SubscriptionRequest,
    Subscription,
    Connection,
    Notification,
)
