"""Salesforce outbound messages (SOAP 1.1): harden, parse, normalise, acknowledge.

`parse_outbound` checks the body before any schema code sees it (size, DTD/entities, depth,
SOAP 1.1 envelope, outbound namespace, 1..100 notifications, required fields), then types
each field with the converters compiled from the outbound messages' WSDLs by zeep
(`outbound_schema`). A field or object no WSDL describes arrives as its text. Every refusal
is an `OutboundRejected(reason, message)`; a configured WSDL that cannot be used raises
`OutboundWsdlError` (a server-side fault: answer 5xx so Salesforce retries).

The session id Salesforce may send is never kept: only whether one was sent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from lxml import etree

from connectors.salesforce.outbound_schema import (
    OUTBOUND_NS,
    SOBJECT_NS,
    FieldPlans,
    OutboundWsdlError,
    plans_for,
    preload_wsdls,
    wsdl_key,
    xsd_datetime,
)
from connectors.salesforce.outbound_soap import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    REJECTION_REASONS,
    SOAP11_NS,
    XSI_NS,
    OutboundRejected,
    ack_response,
    fault_response,
    normalise_org_id,
    read_xml,
)
from plugin.api_models import MAX_YEAR, MIN_YEAR
from plugin.events import Event

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_NOTIFICATIONS",
    "REJECTION_REASONS",
    "SOURCE",
    "Notification",
    "OutboundMessage",
    "OutboundRejected",
    "OutboundWsdlError",
    "ack_response",
    "fault_response",
    "json_value",
    "normalise_org_id",
    "parse_outbound",
    "preload_wsdls",
    "to_events",
]

SOURCE = "salesforce.outbound"
MAX_NOTIFICATIONS = 100  # Salesforce's own limit per message


@dataclass(frozen=True)
class Notification:
    """One notification: its Id (the delivery id) and the sObject's fields as sent."""

    id: str
    object_type: str  # "Opportunity", "Budget_Request__c" (no "sf:" prefix)
    fields: dict[str, Any]  # only the fields sent; None for xsi:nil; text where no WSDL types it
    typed: bool = False  # a WSDL describes this object type


@dataclass(frozen=True)
class OutboundMessage:
    organization_id: str  # normalised to the 18-character form
    action_id: str
    session_id_present: bool  # the value itself is never kept
    enterprise_url: str | None
    partner_url: str | None
    notifications: tuple[Notification, ...]
    parsed_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# --- structure ---

_ENVELOPE = f"{{{SOAP11_NS}}}Envelope"
_HEADER = f"{{{SOAP11_NS}}}Header"
_BODY = f"{{{SOAP11_NS}}}Body"
_OUT = f"{{{OUTBOUND_NS}}}"
_NOTIFICATIONS = _OUT + "notifications"
_NOTIFICATION = _OUT + "Notification"
_NOTIFICATION_ID = _OUT + "Id"
_SOBJECT = _OUT + "sObject"
_SF = f"{{{SOBJECT_NS}}}"
_SF_LEN = len(_SF)
_XSI_NIL = f"{{{XSI_NS}}}nil"
_XSI_TYPE = f"{{{XSI_NS}}}type"
_HEADER_FIELDS = frozenset({"OrganizationId", "ActionId", "SessionId", "EnterpriseUrl", "PartnerUrl"})
_SF_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,254}")


def _payload(root: Any) -> Any:
    if root.tag != _ENVELOPE:
        qname = etree.QName(root)
        if qname.localname == "Envelope":
            raise OutboundRejected("not_soap", f"envelope namespace {qname.namespace!r} is not SOAP 1.1")
        raise OutboundRejected("not_soap", "the body is not a SOAP envelope")
    bodies = [child for child in root if child.tag == _BODY]
    if len(bodies) != 1 or any(child.tag not in (_HEADER, _BODY) for child in root):
        raise OutboundRejected("not_soap", "a SOAP envelope holds an optional Header and one Body")
    payload = list(bodies[0])
    if len(payload) != 1:
        raise OutboundRejected(
            "unexpected_element", "the SOAP Body must hold exactly one notifications element"
        )
    element = payload[0]
    if element.tag != _NOTIFICATIONS:
        qname = etree.QName(element)
        if qname.localname == "notifications":
            raise OutboundRejected("wrong_namespace", f"notifications must be in {OUTBOUND_NS}")
        raise OutboundRejected("unexpected_element", f"expected notifications, got {qname.localname[:64]!r}")
    return element


def _is_nil(element: Any) -> bool:
    return element.get(_XSI_NIL) in ("true", "1")


def _text_of(element: Any) -> Any:
    """An element no WSDL types: None if nil, its text, or (nested) its children by name."""
    if _is_nil(element):
        return None
    if len(element) == 0:
        return element.text or ""
    return {etree.QName(child).localname: _text_of(child) for child in element}


def _object_type(sobject: Any) -> str:
    declared = sobject.get(_XSI_TYPE)
    if not declared:
        raise OutboundRejected("missing_field", "sObject has no xsi:type")
    prefix, _, name = str(declared).strip().rpartition(":")
    if sobject.nsmap.get(prefix or None) != SOBJECT_NS:
        raise OutboundRejected("wrong_namespace", f"sObject type must be in {SOBJECT_NS}")
    if not _TYPE_NAME.fullmatch(name):
        raise OutboundRejected("invalid_value", "sObject type is not an object name")
    return name


def _notification(element: Any, plans: FieldPlans) -> Notification:
    notification_id: str | None = None
    sobject: Any = None
    for child in element:
        tag = child.tag
        if tag == _NOTIFICATION_ID:
            if notification_id is not None:
                raise OutboundRejected("duplicate_field", "Notification has two Ids")
            notification_id = (child.text or "").strip()
        elif tag == _SOBJECT:
            if sobject is not None:
                raise OutboundRejected("duplicate_field", "Notification has two sObjects")
            sobject = child
        elif not tag.startswith(_OUT):
            raise OutboundRejected("wrong_namespace", f"Notification children must be in {OUTBOUND_NS}")
    if not notification_id:
        raise OutboundRejected("missing_field", "Notification has no Id")
    if not _SF_ID.fullmatch(notification_id):
        raise OutboundRejected("invalid_value", "Notification Id is not a Salesforce id")
    if sobject is None:
        raise OutboundRejected("missing_field", f"Notification {notification_id} has no sObject")
    object_type = _object_type(sobject)
    converters = plans.fields_of(object_type)
    fields: dict[str, Any] = {}
    for child in sobject:
        tag = child.tag
        if not tag.startswith(_SF):
            raise OutboundRejected("wrong_namespace", f"sObject fields must be in {SOBJECT_NS}")
        name = tag[_SF_LEN:]
        if name in fields:
            raise OutboundRejected("duplicate_field", f"field {name[:64]} sent twice")
        converter = converters.get(name) if converters is not None else None
        if converter is None or _is_nil(child) or len(child):
            fields[name] = _text_of(child)
            continue
        text = child.text or ""
        try:
            fields[name] = converter(text)
        except Exception:  # not of the WSDL's type (a stale WSDL): keep what was sent
            fields[name] = text
    record_id = fields.get("Id")
    if not record_id:
        raise OutboundRejected("missing_field", f"sObject of Notification {notification_id} has no Id")
    if not isinstance(record_id, str) or not _SF_ID.fullmatch(record_id):
        raise OutboundRejected("invalid_value", "sObject Id is not a Salesforce id")
    return Notification(notification_id, object_type, fields, typed=converters is not None)


def parse_outbound(
    body: bytes,
    *,
    wsdl_paths: Sequence[Path] = (),
    max_notifications: int = MAX_NOTIFICATIONS,
    max_bytes: int = MAX_BODY_BYTES,
) -> OutboundMessage:
    """Read one outbound message. Raises OutboundRejected (sender's fault) or
    OutboundWsdlError (a configured WSDL is unusable: a server fault)."""
    if max_notifications < 1:
        raise ValueError("max_notifications must be at least 1")
    root = read_xml(bytes(body), max_bytes)
    plans = plans_for(wsdl_key(tuple(wsdl_paths)))
    try:
        return _message(root, plans, max_notifications)
    except etree.LxmlError as exc:  # not expected once read_xml passed; never let one escape raw
        raise OutboundRejected("not_xml", f"unreadable XML ({type(exc).__name__})") from None


def _message(root: Any, plans: FieldPlans, max_notifications: int) -> OutboundMessage:
    notifications = _payload(root)
    header: dict[str, str | None] = {}
    session_id_present = False
    elements = []
    for child in notifications:
        tag = child.tag
        if tag == _NOTIFICATION:
            elements.append(child)
            continue
        if not tag.startswith(_OUT):
            raise OutboundRejected("wrong_namespace", f"notifications children must be in {OUTBOUND_NS}")
        name = tag[len(_OUT) :]
        if name not in _HEADER_FIELDS:
            continue  # an element Salesforce may add some day: nothing to read in it
        if name in header:
            raise OutboundRejected("duplicate_field", f"{name} sent twice")
        if name == "SessionId":  # remember only that it was sent
            session_id_present = not _is_nil(child) and bool((child.text or "").strip())
            header[name] = None
            continue
        text = None if _is_nil(child) else (child.text or "").strip()
        header[name] = plans.header[name](text) if text else None
    if not elements:
        raise OutboundRejected("no_notifications", "the message holds no Notification")
    if len(elements) > max_notifications:
        raise OutboundRejected(
            "too_many_notifications", f"{len(elements)} notifications; at most {max_notifications}"
        )
    org_id, action_id = header.get("OrganizationId"), header.get("ActionId")
    if not org_id or not action_id:
        raise OutboundRejected("missing_field", "OrganizationId and ActionId are required")
    try:
        org_id = normalise_org_id(org_id)
    except ValueError:
        raise OutboundRejected("invalid_value", "OrganizationId is not an organization id") from None
    return OutboundMessage(
        organization_id=org_id,
        action_id=action_id,
        session_id_present=session_id_present,
        enterprise_url=header.get("EnterpriseUrl"),
        partner_url=header.get("PartnerUrl"),
        notifications=tuple(_notification(element, plans) for element in elements),
    )


# --- normalised events ---


def _occurred_at(fields: Mapping[str, Any], default: datetime) -> datetime:
    for name in ("LastModifiedDate", "SystemModstamp"):
        value = fields.get(name)
        if isinstance(value, str):  # no WSDL typed it: these two are dateTime on every object
            try:
                value = xsd_datetime(value)
            except ValueError:
                continue
        if isinstance(value, datetime):
            value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
            # Refused at the door, as every other hook does: a year 9999 would be acknowledged,
            # then overflow the rules' date arithmetic (an approval's deadline) and park the event.
            if not MIN_YEAR <= value.year <= MAX_YEAR:
                years = f"years {MIN_YEAR} to {MAX_YEAR}"
                raise OutboundRejected("invalid_value", f"{name} is out of range ({years})")
            return value
    return default


def json_value(value: Any) -> Any:
    """A field value as JSON: datetimes ISO 8601 UTC with Z, dates ISO, Decimal as its plain
    decimal string (exact), bytes as base64; None, bool, int and str as they are."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, Decimal):  # plain notation, bounded: 1E999999999 stays as it is
        return format(value, "f") if value.is_finite() and abs(value.adjusted()) <= 400 else str(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return str(value)


def to_events(msg: OutboundMessage, *, raw_digest: str, sender: str) -> list[Event]:
    """One `record.changed` event per notification; delivery id = the notification Id."""
    events = []
    for notification in msg.notifications:
        fields = notification.fields
        actor = fields.get("LastModifiedById")
        events.append(
            Event(
                source=SOURCE,
                delivery_id=notification.id,
                kind="record.changed",
                occurred_at=_occurred_at(fields, msg.parsed_at),
                object=notification.object_type,
                record_id=str(fields["Id"]),
                actor=actor if isinstance(actor, str) and actor else None,
                data={
                    "org_id": msg.organization_id,
                    "action_id": msg.action_id,
                    "typed": notification.typed,
                    "fields": {name: json_value(value) for name, value in fields.items()},
                },
                sender=sender,
                raw_digest=raw_digest,
            )
        )
    return events
