"""The wire level of Salesforce outbound messages: hardened XML reading, the SOAP 1.1
acknowledgement and fault bodies, and organization ids (15/18 characters)."""

from __future__ import annotations

import re
import threading
from typing import Any

from lxml import etree

from connectors.salesforce import ids

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

MAX_BODY_BYTES = 4 * 1024 * 1024  # 100 notifications of ordinary fields are well under 1 MiB
MAX_DEPTH = 32  # a real message nests 6 deep: Envelope/Body/notifications/Notification/sObject/field

# The codes `OutboundRejected.reason` takes; all are the sender's fault (HTTP 400, 413 for too_large).
REJECTION_REASONS = frozenset(
    {
        "too_large",  # body over the size bound
        "not_xml",  # empty, not well-formed, or an undeclared entity reference
        "dtd_forbidden",  # any DOCTYPE / DTD / entity declaration
        "entity_forbidden",  # an entity reference (undeclared, or amplified past libxml2's limit)
        "too_deep",  # elements nested deeper than MAX_DEPTH
        "not_soap",  # not a SOAP 1.1 Envelope with one Body
        "wrong_namespace",  # outbound or sObject element in another namespace
        "unexpected_element",  # the SOAP Body does not hold exactly one `notifications`
        "no_notifications",
        "too_many_notifications",
        "missing_field",  # OrganizationId, ActionId, Notification Id, sObject, its type or Id
        "duplicate_field",  # the same element twice where one is allowed
        "invalid_value",  # an id or type name that is not one
    }
)


class OutboundRejected(Exception):
    """The body is not an outbound message OnRecord accepts. `reason` is a snake_case code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# --- hardened reading: before any schema code sees the body ---

_local = threading.local()
_TOO_DEEP = etree.XPath("boolean(" + "/*" * (MAX_DEPTH + 1) + ")")


def _parser() -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:  # an lxml parser is not for concurrent use: one per thread
        # Not collect_ids=False: with lxml 6.1 / libxml2 2.14 it makes the parser load an
        # external DTD subset (a local file) despite load_dtd=False.
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            recover=False,
            remove_comments=True,
            remove_pis=True,
            attribute_defaults=False,
        )
        _local.parser = parser
    return parser


def read_xml(body: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The body's root element, or OutboundRejected: too large (checked before anything is
    parsed), DOCTYPE/entity declarations, not well-formed, or nested deeper than MAX_DEPTH."""
    if len(body) > max_bytes:
        raise OutboundRejected("too_large", f"body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise OutboundRejected("not_xml", "empty body")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise OutboundRejected("dtd_forbidden", "a DOCTYPE or entity declaration is not allowed")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        text = str(exc.msg or "")
        if "depth" in text.lower():  # libxml2's own limit (256 without huge_tree) came first
            raise OutboundRejected("too_deep", f"elements nested deeper than {MAX_DEPTH}") from None
        if "entity" in text.lower():
            raise OutboundRejected("entity_forbidden", "entity references are not allowed") from None
        raise OutboundRejected("not_xml", f"not well-formed XML ({text[:120]})") from None
    except (ValueError, etree.LxmlError) as exc:
        raise OutboundRejected("not_xml", f"not XML ({type(exc).__name__})") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise OutboundRejected("dtd_forbidden", "a DOCTYPE is not allowed")  # e.g. in a UTF-16 body
    if _TOO_DEEP(root):
        raise OutboundRejected("too_deep", f"elements nested deeper than {MAX_DEPTH}")
    return root


# --- responses ---

_ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soapenv:Body>"
    b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    b"<Ack>true</Ack>"
    b"</notificationsResponse>"
    b"</soapenv:Body>"
    b"</soapenv:Envelope>"
)

# Faults that are OnRecord's side (Salesforce retries either way; the code tells the admin whose).
SERVER_REASONS = frozenset({"store_failed", "store_timeout", "internal_error", "unavailable", "wsdl_error"})
_SESSION_ID = re.compile(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._\-]+")
_NOT_XML_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_FAULTSTRING = 300


def ack_response() -> bytes:
    """The `notificationsResponse` with Ack true: the only answer Salesforce takes as delivered."""
    return _ACK


def fault_response(reason: str, message: str, *, server: bool | None = None) -> bytes:
    """A SOAP 1.1 Fault. faultcode soapenv:Server for OnRecord's side (SERVER_REASONS, or
    `server=True`), else soapenv:Client. The faultstring is `reason: message`, with anything
    shaped like a session id redacted, control characters removed, and bounded in length."""
    if not _REASON.fullmatch(reason):
        reason = "error"
    if server is None:
        server = reason in SERVER_REASONS
    text = _NOT_XML_CHARS.sub("", _SESSION_ID.sub("[redacted]", f"{reason}: {message}"))
    if len(text) > MAX_FAULTSTRING:
        text = text[: MAX_FAULTSTRING - 3] + "..."
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soapenv": SOAP11_NS})
    body = etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP11_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = "soapenv:Server" if server else "soapenv:Client"
    etree.SubElement(fault, "faultstring").text = text
    result: bytes = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return result


# --- organization ids (the checksum itself lives in connectors/salesforce/ids.py) ---

_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def _restore_case(prefix: str, suffix: str) -> str:
    """The 15 characters' case as the suffix records it (for an id a system lower-cased)."""
    chars = []
    for chunk, flag in enumerate(suffix):
        bits = ids.SUFFIX_ALPHABET.find(flag)
        if bits < 0:
            raise ValueError("not a Salesforce id suffix")
        for position in range(5):
            char = prefix[chunk * 5 + position]
            upper = bits >> position & 1
            if upper and not char.isalpha():
                raise ValueError("the suffix marks a digit as upper case")
            chars.append(char.upper() if upper else char.lower())
    return "".join(chars)


def normalise_org_id(org_id: str) -> str:
    """The 18-character form of an organization id (15 or 18 characters, key prefix 00D).
    An 18-character id must carry the right suffix; one whose case was lost (all lower or
    all upper case) is restored from its suffix. Anything else raises ValueError."""
    if not isinstance(org_id, str) or not _ID.fullmatch(org_id):
        raise ValueError("an organization id is 15 or 18 letters and digits")
    prefix = org_id[:15]
    if len(org_id) == 18:
        suffix = org_id[15:].upper()
        if not ids.is_salesforce_id(prefix + suffix):
            if prefix not in (prefix.lower(), prefix.upper()):
                raise ValueError("the 18-character id's suffix does not match its first 15 characters")
            prefix = _restore_case(prefix, suffix)
    if not prefix.startswith("00D"):
        raise ValueError("not an organization id (key prefix 00D)")
    return ids.to_18(prefix)
