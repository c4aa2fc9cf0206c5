"""POST /hooks/salesforce/events: JSON from Flow HTTP callouts, Apex or an event relay.

Body: one event or `{"events": [...]}` with up to 200. Signed per Standard Webhooks; the delivery
id is `webhook-id` (with `:<position>` inside a batch), except for Event Monitoring events (below).

**`record.changed`**: `{"id", "type", "occurred_at", "org_id", "object", "record": {"Id",
"LastModifiedById", "SystemModstamp", ...}}`; taken in or ignored by `changes.take_in`.

**`report.viewed`, `dashboard.viewed`**: a Real-Time Event Monitoring event, pushed as it is by
a relay (a Pub/Sub API or Streaming API subscriber to `/event/ReportEventStream` and
`/event/LightningUriEventStream`, or a job querying the stored `ReportEvent` and
`LightningUriEvent` big objects): `{"id", "type", "org_id", "object", "record": {...}}` where
`object` names the Event Monitoring object and `record` carries its fields under their own API
names. Sources (Platform Events Developer Guide; the Salesforce Field Reference lists the same):
https://developer.salesforce.com/docs/platform/platform-events/guide/sforce-api-objects-reportevent.html
https://developer.salesforce.com/docs/platform/platform-events/guide/sforce-api-objects-reporteventstream.html
https://developer.salesforce.com/docs/platform/platform-events/guide/sforce-api-objects-lightningurievent.html
https://developer.salesforce.com/docs/platform/platform-events/guide/sforce-api-objects-lightningurieventstream.html

- `report.viewed`, `object` = `ReportEvent` or `ReportEventStream` ("tracks when reports are run"):
  required `EventIdentifier`, `EventDate`, `UserId` (a user, 005...), `ReportId` (a report,
  00O...); read if present: `Operation` (the context the report ran in), `IsScheduled`,
  `ExecutionIdentifier` (shared by the chunks of one run), `Username`, `Name`, `DashboardId`,
  `EventSource`.
- `dashboard.viewed`, `object` = `LightningUriEvent` or `LightningUriEventStream` ("detects when
  a user creates, accesses, updates, or deletes a record in Lightning Experience only"; a
  Lightning dashboard opens as the record page /lightning/r/Dashboard/<id>/view): required
  `EventIdentifier`, `EventDate`, `UserId`, `RecordId` (a dashboard, 01Z...); read if present:
  `Operation` (Read, Create, Update, Delete), `QueriedEntities`, `Username`. Classic dashboards
  (UriEvent) and dashboard refreshes (ReportEvent `DashboardComponentUpdated`) are not views here.

`EventDate` is an ISO 8601 date-time with a time zone (as the REST and Streaming APIs write it)
or milliseconds since the epoch (as the Pub/Sub API's Avro carries it); it is the event's time.
Each becomes a `user.activity` event (actor = `UserId`, `data.activity` = `report_view` or
`dashboard_view`) whose delivery id is the Event Monitoring id (`ReportEvent:<ExecutionIdentifier
or EventIdentifier>`, `LightningUriEvent:<EventIdentifier>`): a stream event and its stored copy,
the chunks of one report run, and a relay's re-push are one view. Acknowledged and ignored:
a report run that is no person looking at a report (`Operation` other than a run from the UI,
the mobile app, a mobile dashboard, a preview or an export; or `IsScheduled`), a dashboard
`Operation` other than `Read`, and the integration user's activity. A missing `Operation` counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from pydantic import Field

from connectors.salesforce.changes import take_in
from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.ids import is_salesforce_id, same_id, to_18
from plugin import signatures, strict_json
from plugin.api_models import MAX_YEAR, MIN_YEAR, BodyModel, BodyRefused, Checked, fail, json_path, validate
from plugin.events import Event
from plugin.receive import Incoming, Parsed, Rejected, Source, json_ack, json_refusal

SOURCE = "salesforce.events"
# Who sent it, as far as OnRecord can tell: whoever holds the events signing secret.
SENDER = "salesforce.events_secret"
MAX_EVENTS = 200
HANDLED_TYPES = frozenset({"record.changed", "report.viewed", "dashboard.viewed"})
# Event Monitoring event types: type -> (activity, objects accepted, the record's id field, prefix)
ACTIVITY_TYPES: dict[str, tuple[str, frozenset[str], str, str]] = {
    "report.viewed": ("report_view", frozenset({"ReportEvent", "ReportEventStream"}), "ReportId", "00O"),
    "dashboard.viewed": (
        "dashboard_view",
        frozenset({"LightningUriEvent", "LightningUriEventStream"}),
        "RecordId",
        "01Z",
    ),
}
# ReportEvent.Operation values of a person looking at a report (ReportEvent, "Operation").
REPORT_VIEW_OPERATIONS = frozenset(
    {
        "ReportRunFromLightning",
        "ReportRunFromClassic",
        "ReportRunFromMobile",
        "ReportOpenedFromMobileDashboard",
        "ReportPreviewed",
        "ReportExported",
    }
)
DASHBOARD_VIEW_OPERATIONS = frozenset({"Read"})  # LightningUriEvent.Operation
USER_PREFIX = "005"
MAX_EVENT_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


def authenticate(incoming: Incoming) -> str:
    """Standard Webhooks signature over the raw body, with the configured secret(s)."""
    cfg = sf_settings(incoming.runtime.config)
    if not cfg.events_secret:
        raise Rejected(503, "not_configured", "no signing secret configured for this source")
    try:
        headers = incoming.headers
        signatures.verify(
            cfg.events_secret,
            {name: headers.get(name, "") for name in signatures.HEADERS},
            incoming.body,
            tolerance_seconds=cfg.events_tolerance_seconds,
        )
    except signatures.SignatureError as exc:
        raise Rejected(401, exc.reason, str(exc)) from exc
    return SENDER  # parse reads the verified webhook-id again, as the delivery id


def parse(incoming: Incoming, sender: str) -> Parsed:
    """Validate the body: each handled event becomes a `record.changed` or `user.activity` Event."""
    try:
        body = strict_json.loads(incoming.body)
    except strict_json.JsonRefused as exc:
        raise Rejected(400, exc.reason, exc.message) from exc
    if not isinstance(body, dict):
        raise Rejected(400, "bad_shape", "body must be a JSON object")
    webhook_id = incoming.headers["webhook-id"]  # present: authenticate checked it
    if "events" in body:
        items = body["events"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_EVENTS:
            raise Rejected(400, "bad_shape", f"events must be a list of 1 to {MAX_EVENTS} events")
        delivery_ids = [f"{webhook_id}:{i}" for i in range(len(items))]
    else:
        items, delivery_ids = [body], [webhook_id]
    rt = incoming.runtime
    org_id = sf_settings(rt.config).org_id
    handled: list[Event] = []
    ignored: dict[str, int] = {}
    activities: list[Event] = []
    own_user = sf_settings(rt.config).integration_user_id
    for position, (item, delivery_id) in enumerate(zip(items, delivery_ids, strict=True)):
        at: Path = ("events", position) if "events" in body else ("event",)
        where = json_path(at)
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(kind, str) and kind in ACTIVITY_TYPES:  # a list or object type: refused below
            event, counts = _activity(item, at, kind, sender, incoming.digest)
        else:
            event, counts = _event(item, at, delivery_id, sender, incoming.digest), True
        if org_id and not same_id(event.data["org_id"], org_id):
            raise Rejected(403, "wrong_org", f"{where}.org_id is not the configured organisation")
        reason = None
        if kind not in HANDLED_TYPES:
            reason = "unhandled_type"
        elif not counts:
            reason = "not_a_view"
        elif event.kind == "user.activity" and own_user and same_id(str(event.actor), own_user):
            reason = "own_activity"
        if reason is not None:
            ignored[reason] = ignored.get(reason, 0) + 1
        elif event.kind == "user.activity":
            activities.append(event)
        else:
            handled.append(event)
    return Parsed(events=[*take_in(handled, rt.config_in_force, ignored), *activities], ignored=ignored)


# -- the body's shapes, as models (plugin/api_models.py) --------------------------------------------
#
# Refusals keep this endpoint's published reasons: missing_field (absent or null; a record that is
# not an object), bad_field (anything else wrong in a member), bad_shape (the body's framing, above).

M = TypeVar("M", bound=BodyModel)
Path = tuple[str | int, ...]
REASONS: Final = {"wrong_type": "missing_field", "invalid_value": "bad_field", "too_long": "bad_field"}


def _string_check(max_len: int = 255, *, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> str | None:
        if value is None:
            if optional:
                return None
            raise fail("missing_field", "is required")
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise fail("bad_field", f"must be a non-empty string of at most {max_len} characters")
        return value

    return check


def _string(max_len: int = 255, *, optional: bool = False) -> Checked:
    return Checked(_string_check(max_len, optional=optional), {"type": "string", "maxLength": max_len})


def _sf_id(prefix: str = "", what: str = "", *, optional: bool = False) -> Checked:
    """A Salesforce id (15 or 18 characters, checksum checked), of ``what`` if a key prefix is given."""
    string = _string_check(optional=optional)

    def check(value: Any) -> str | None:
        text = string(value)
        if text is None:
            return None
        if not is_salesforce_id(text):
            raise fail("bad_field", "is not a Salesforce id")
        if not text.startswith(prefix):
            raise fail("bad_field", f"is not {what} id ({prefix}...)")
        return str(text)

    return Checked(check, {"type": "string", "minLength": 15, "maxLength": 18})


def _iso_datetime(value: Any) -> datetime:
    raw = str(_string_check()(value))
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise fail("bad_field", "is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise fail("bad_field", "must carry a time zone")
    if not MIN_YEAR <= parsed.astimezone(UTC).year <= MAX_YEAR:  # 0001 or 9999 would crash the worker later
        raise fail("bad_field", f"is out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return parsed


def _event_date(value: Any) -> datetime:
    """EventDate: ISO 8601 with a time zone, or milliseconds since the epoch (Pub/Sub API)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_EVENT_MS:
            raise fail("bad_field", "is out of range")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    return _iso_datetime(value)


def _flag(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise fail("bad_field", "must be true or false")
    return value


def _one_of(kind: str) -> Checked:
    objects = ACTIVITY_TYPES[kind][1]
    string = _string_check()

    def check(value: Any) -> str:
        text = str(string(value))
        if text not in objects:
            raise fail("bad_field", f"must be one of {sorted(objects)} for {kind}")
        return text

    return Checked(check, {"type": "string", "enum": sorted(objects)})


def _pattern(pattern: re.Pattern[str], mismatch: str) -> Checked:
    string = _string_check()

    def check(value: Any) -> str:
        text = str(string(value))
        if not pattern.match(text):
            raise fail("bad_field", mismatch)
        return text

    return Checked(check, {"type": "string", "pattern": pattern.pattern})


Text = Annotated[str, _string()]
OptionalText = Annotated[str | None, _string(optional=True)]
SalesforceId = Annotated[str, _sf_id()]
IsoDateTime = Annotated[datetime, Checked(_iso_datetime, {"type": "string", "format": "date-time"})]
UserId = Annotated[str, _sf_id(USER_PREFIX, "a user")]


class Envelope(BodyModel):
    """What every event carries."""

    type: Annotated[str, _pattern(_TYPE, "is not an event type")] = Field(description="The event type.")
    id: Text = Field(description="The event's id.")
    org_id: SalesforceId = Field(description="The Salesforce organisation's id.")


class ChangedRecord(BodyModel):
    """The changed record's fields (all carried; these are checked)."""

    Id: SalesforceId
    LastModifiedById: SalesforceId
    SystemModstamp: IsoDateTime


class RecordChanged(Envelope):
    """``record.changed`` (and any other type, checked in this shape and then ignored)."""

    occurred_at: IsoDateTime
    object: Annotated[str, _pattern(_API_NAME, "is not an API name")]
    record: ChangedRecord


class ReportEventRecord(BodyModel):
    """A ReportEvent / ReportEventStream's fields OnRecord reads."""

    EventIdentifier: Text
    EventDate: Annotated[datetime, Checked(_event_date, {"type": "string", "format": "date-time"})]
    UserId: UserId
    ReportId: Annotated[str, _sf_id("00O", "a report")]
    Operation: OptionalText = None
    Username: OptionalText = None
    IsScheduled: Annotated[bool | None, Checked(_flag, {"type": "boolean"})] = None
    DashboardId: Annotated[str | None, _sf_id("01Z", "a dashboard", optional=True)] = None
    ExecutionIdentifier: OptionalText = None
    Name: OptionalText = None
    EventSource: OptionalText = None


class LightningUriEventRecord(BodyModel):
    """A LightningUriEvent / LightningUriEventStream's fields OnRecord reads."""

    EventIdentifier: Text
    EventDate: Annotated[datetime, Checked(_event_date, {"type": "string", "format": "date-time"})]
    UserId: UserId
    RecordId: Annotated[str, _sf_id("01Z", "a dashboard")]
    Operation: OptionalText = None
    Username: OptionalText = None
    # QueriedEntities: up to 1,000 characters (LightningUriEvent field reference)
    QueriedEntities: Annotated[str | None, _string(1000, optional=True)] = None


class ReportViewed(Envelope):
    """``report.viewed``: a report run, from Real-Time Event Monitoring."""

    object: Annotated[str, _one_of("report.viewed")]
    record: ReportEventRecord


class DashboardViewed(Envelope):
    """``dashboard.viewed``: a Lightning record page view of a dashboard, from Event Monitoring."""

    object: Annotated[str, _one_of("dashboard.viewed")]
    record: LightningUriEventRecord


def _checked(model: type[M], item: Any, at: Path) -> M:
    """``item`` (the event at ``at`` in the body) validated by ``model``, or 400 naming the member."""
    if not isinstance(item, dict):
        raise Rejected(400, "bad_shape", f"{json_path(at)} must be an object")
    try:
        return validate(model, item, prefix=at, reasons=REASONS)
    except BodyRefused as exc:
        message = exc.message
        if exc.reason == "missing_field" and exc.field == json_path((*at, "record")):
            message = f"{exc.field} must be an object"
        raise Rejected(400, exc.reason, message) from None


def _event(item: Any, at: Path, delivery_id: str, sender: str, digest: str) -> Event:
    event = _checked(RecordChanged, item, at)
    fields = {k: v for k, v in item["record"].items() if k != "attributes"}
    return Event(
        source=SOURCE,
        delivery_id=delivery_id,
        kind=event.type,
        occurred_at=event.occurred_at,
        object=event.object,
        record_id=event.record.Id,
        actor=event.record.LastModifiedById,
        data={"org_id": event.org_id, "event_id": event.id, "fields": fields},
        sender=sender,
        raw_digest=digest,
    )


def _activity(item: Any, at: Path, kind: str, sender: str, digest: str) -> tuple[Event, bool]:
    """A report or dashboard view from Event Monitoring, and whether it counts as a view."""
    activity = ACTIVITY_TYPES[kind][0]
    details: dict[str, Any]
    envelope: ReportViewed | DashboardViewed
    if kind == "report.viewed":
        report = _checked(ReportViewed, item, at)
        envelope, record = report, report.record
        operation = record.Operation
        counts = (operation is None or operation in REPORT_VIEW_OPERATIONS) and record.IsScheduled is not True
        delivery_id = f"ReportEvent:{record.ExecutionIdentifier or record.EventIdentifier}"
        details = {
            "report_id": to_18(record.ReportId),
            "dashboard_id": to_18(record.DashboardId) if record.DashboardId else None,
            "report_name": record.Name,
            "event_source": record.EventSource,
        }
    else:
        dashboard = _checked(DashboardViewed, item, at)
        envelope, view = dashboard, dashboard.record
        operation = view.Operation
        counts = operation is None or operation in DASHBOARD_VIEW_OPERATIONS
        delivery_id = f"LightningUriEvent:{view.EventIdentifier}"
        details = {"dashboard_id": to_18(view.RecordId), "queried_entities": view.QueriedEntities}
    seen = envelope.record
    data = {
        "activity": activity,
        "org_id": envelope.org_id,
        "event_id": envelope.id,
        "object": envelope.object,
        "event_identifier": seen.EventIdentifier,
        "operation": seen.Operation,
        "username": seen.Username,
        **details,
    }
    event = Event(
        source=SOURCE,
        delivery_id=delivery_id,
        kind="user.activity",
        occurred_at=seen.EventDate,
        actor=seen.UserId,
        data={k: v for k, v in data.items() if v is not None},
        sender=sender,
        raw_digest=digest,
    )
    return event, counts


SALESFORCE_EVENTS = Source(
    name=SOURCE, authenticate=authenticate, parse=parse, acknowledge=json_ack, refuse=json_refusal
)


HOOKS = {"/hooks/salesforce/events": SALESFORCE_EVENTS}
