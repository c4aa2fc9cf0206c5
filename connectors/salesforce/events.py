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
from datetime import UTC, datetime
from typing import Any

from connectors.salesforce.changes import take_in
from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.ids import is_salesforce_id, same_id, to_18
from plugin import signatures, strict_json
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
        where = f"events[{position}]" if "events" in body else "event"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in ACTIVITY_TYPES:
            event, counts = _activity(item, where, str(kind), sender, incoming.digest)
        else:
            event, counts = _event(item, where, delivery_id, sender, incoming.digest), True
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
    return Parsed(events=[*take_in(handled, rt.config, ignored), *activities], ignored=ignored)


def _event(item: Any, where: str, delivery_id: str, sender: str, digest: str) -> Event:
    kind, org = _envelope(item, where)
    occurred_at = _datetime(item, "occurred_at", where)
    obj = _string(item, "object", where)
    if not _API_NAME.match(obj):
        raise Rejected(400, "bad_field", f"{where}.object is not an API name")
    record = item.get("record")
    if not isinstance(record, dict):
        raise Rejected(400, "missing_field", f"{where}.record must be an object")
    record_id = _string(record, "Id", f"{where}.record")
    if not is_salesforce_id(record_id):
        raise Rejected(400, "bad_field", f"{where}.record.Id is not a Salesforce id")
    actor = _string(record, "LastModifiedById", f"{where}.record")
    if not is_salesforce_id(actor):
        raise Rejected(400, "bad_field", f"{where}.record.LastModifiedById is not a Salesforce id")
    _datetime(record, "SystemModstamp", f"{where}.record")
    fields = {k: v for k, v in record.items() if k != "attributes"}
    return Event(
        source=SOURCE,
        delivery_id=delivery_id,
        kind=kind,
        occurred_at=occurred_at,
        object=obj,
        record_id=record_id,
        actor=actor,
        data={"org_id": org, "event_id": item["id"], "fields": fields},
        sender=sender,
        raw_digest=digest,
    )


def _envelope(item: Any, where: str) -> tuple[str, str]:
    """The type and org id every event carries, checked (and its id)."""
    if not isinstance(item, dict):
        raise Rejected(400, "bad_shape", f"{where} must be an object")
    kind = _string(item, "type", where)
    if not _TYPE.match(kind):
        raise Rejected(400, "bad_field", f"{where}.type is not an event type")
    _string(item, "id", where)
    org = _string(item, "org_id", where)
    if not is_salesforce_id(org):
        raise Rejected(400, "bad_field", f"{where}.org_id is not a Salesforce id")
    return kind, org


def _activity(item: Any, where: str, kind: str, sender: str, digest: str) -> tuple[Event, bool]:
    """A report or dashboard view from Event Monitoring, and whether it counts as a view."""
    _, org = _envelope(item, where)
    activity, objects, id_field, prefix = ACTIVITY_TYPES[kind]
    obj = _string(item, "object", where)
    if obj not in objects:
        raise Rejected(400, "bad_field", f"{where}.object must be one of {sorted(objects)} for {kind}")
    record = item.get("record")
    if not isinstance(record, dict):
        raise Rejected(400, "missing_field", f"{where}.record must be an object")
    at = f"{where}.record"
    identifier = _string(record, "EventIdentifier", at)
    occurred_at = _event_date(record, at)
    user_id = _id(record, "UserId", at, USER_PREFIX, "a user")
    target = to_18(
        _id(record, id_field, at, prefix, "a report" if kind == "report.viewed" else "a dashboard")
    )
    operation = _optional_string(record, "Operation", at)
    username = _optional_string(record, "Username", at)
    if kind == "report.viewed":
        scheduled = record.get("IsScheduled")
        if scheduled is not None and not isinstance(scheduled, bool):
            raise Rejected(400, "bad_field", f"{at}.IsScheduled must be true or false")
        dashboard = record.get("DashboardId")
        if dashboard is not None:
            dashboard = to_18(_id(record, "DashboardId", at, "01Z", "a dashboard"))
        counts = operation is None or operation in REPORT_VIEW_OPERATIONS
        counts = counts and scheduled is not True
        run = _optional_string(record, "ExecutionIdentifier", at) or identifier
        delivery_id = f"ReportEvent:{run}"
        details = {
            "report_id": target,
            "dashboard_id": dashboard,
            "report_name": _optional_string(record, "Name", at),
            "event_source": _optional_string(record, "EventSource", at),
        }
    else:
        counts = operation is None or operation in DASHBOARD_VIEW_OPERATIONS
        delivery_id = f"LightningUriEvent:{identifier}"
        # QueriedEntities: up to 1,000 characters (LightningUriEvent field reference)
        entities = _optional_string(record, "QueriedEntities", at, max_len=1000)
        details = {"dashboard_id": target, "queried_entities": entities}
    data = {
        "activity": activity,
        "org_id": org,
        "event_id": item["id"],
        "object": obj,
        "event_identifier": identifier,
        "operation": operation,
        "username": username,
        **details,
    }
    event = Event(
        source=SOURCE,
        delivery_id=delivery_id,
        kind="user.activity",
        occurred_at=occurred_at,
        actor=user_id,
        data={k: v for k, v in data.items() if v is not None},
        sender=sender,
        raw_digest=digest,
    )
    return event, counts


def _id(obj: dict[str, Any], key: str, where: str, prefix: str, what: str) -> str:
    value = _string(obj, key, where)
    if not is_salesforce_id(value):
        raise Rejected(400, "bad_field", f"{where}.{key} is not a Salesforce id")
    if not value.startswith(prefix):
        raise Rejected(400, "bad_field", f"{where}.{key} is not {what} id ({prefix}...)")
    return value


def _optional_string(obj: dict[str, Any], key: str, where: str, max_len: int = 255) -> str | None:
    return None if obj.get(key) is None else _string(obj, key, where, max_len)


def _event_date(record: dict[str, Any], where: str) -> datetime:
    """EventDate: ISO 8601 with a time zone, or milliseconds since the epoch (Pub/Sub API)."""
    raw = record.get("EventDate")
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= MAX_EVENT_MS:
            raise Rejected(400, "bad_field", f"{where}.EventDate is out of range")
        return datetime.fromtimestamp(raw / 1000, tz=UTC)
    return _datetime(record, "EventDate", where)


def _string(obj: dict[str, Any], key: str, where: str, max_len: int = 255) -> str:
    value = obj.get(key)
    if value is None:
        raise Rejected(400, "missing_field", f"{where}.{key} is required")
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise Rejected(
            400, "bad_field", f"{where}.{key} must be a non-empty string of at most {max_len} characters"
        )
    return value


def _datetime(obj: dict[str, Any], key: str, where: str) -> datetime:
    raw = _string(obj, key, where)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise Rejected(400, "bad_field", f"{where}.{key} is not an ISO 8601 date-time") from exc
    if value.tzinfo is None:
        raise Rejected(400, "bad_field", f"{where}.{key} must carry a time zone")
    if not 2000 <= value.astimezone(UTC).year <= 2200:  # 0001 or 9999 would crash the worker later
        raise Rejected(400, "bad_field", f"{where}.{key} is out of range (years 2000 to 2200)")
    return value


SALESFORCE_EVENTS = Source(
    name=SOURCE, authenticate=authenticate, parse=parse, acknowledge=json_ack, refuse=json_refusal
)


HOOKS = {"/hooks/salesforce/events": SALESFORCE_EVENTS}
