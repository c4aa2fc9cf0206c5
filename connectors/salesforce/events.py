"""POST /hooks/salesforce/events: JSON from Flow HTTP callouts, Apex or an event relay.

Body: one event `{"id", "type", "occurred_at", "org_id", "object", "record": {"Id",
"LastModifiedById", "SystemModstamp", ...}}` or `{"events": [...]}` with up to 200. Signed per
Standard Webhooks; the delivery id is `webhook-id` (with `:<position>` inside a batch).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from connectors.salesforce.changes import take_in
from connectors.salesforce.ids import is_salesforce_id, same_id
from plugin import signatures
from plugin.events import Event
from plugin.receive import Incoming, Parsed, Rejected, Source, json_ack, json_refusal

SOURCE = "salesforce.events"
# Who sent it, as far as OnRecord can tell: whoever holds the events signing secret.
SENDER = "salesforce.events_secret"
MAX_EVENTS = 200
HANDLED_TYPES = frozenset({"record.changed"})
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


def authenticate(incoming: Incoming) -> str:
    """Standard Webhooks signature over the raw body, with the configured secret(s)."""
    cfg = incoming.runtime.config.salesforce
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
    """Validate the body and turn each handled event into a `record.changed` Event."""
    try:
        body = json.loads(incoming.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(400, "not_json", "body is not JSON") from exc
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
    org_id = rt.config.salesforce.org_id
    handled: list[Event] = []
    ignored: dict[str, int] = {}
    for position, (item, delivery_id) in enumerate(zip(items, delivery_ids, strict=True)):
        where = f"events[{position}]" if "events" in body else "event"
        event = _event(item, where, delivery_id, sender, incoming.digest)
        if org_id and not same_id(event.data["org_id"], org_id):
            raise Rejected(403, "wrong_org", f"{where}.org_id is not the configured organisation")
        if event.kind in HANDLED_TYPES:
            handled.append(event)
        else:
            ignored["unhandled_type"] = ignored.get("unhandled_type", 0) + 1
    return Parsed(events=take_in(handled, rt.config, ignored), ignored=ignored)


def _event(item: Any, where: str, delivery_id: str, sender: str, digest: str) -> Event:
    if not isinstance(item, dict):
        raise Rejected(400, "bad_shape", f"{where} must be an object")
    kind = _string(item, "type", where)
    if not _TYPE.match(kind):
        raise Rejected(400, "bad_field", f"{where}.type is not an event type")
    _string(item, "id", where)
    occurred_at = _datetime(item, "occurred_at", where)
    org = _string(item, "org_id", where)
    if not is_salesforce_id(org):
        raise Rejected(400, "bad_field", f"{where}.org_id is not a Salesforce id")
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


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise Rejected(400, "missing_field", f"{where}.{key} is required")
    if not isinstance(value, str) or not value or len(value) > 255:
        raise Rejected(
            400, "bad_field", f"{where}.{key} must be a non-empty string of at most 255 characters"
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
    return value


SALESFORCE_EVENTS = Source(
    name=SOURCE, authenticate=authenticate, parse=parse, acknowledge=json_ack, refuse=json_refusal
)


HOOKS = {"/hooks/salesforce/events": SALESFORCE_EVENTS}
