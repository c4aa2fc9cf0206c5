"""zeep schemas for Salesforce outbound messages, compiled into per-field converters.

Salesforce types every field an outbound message carries in the message's own WSDL
(Setup > Outbound Messages > "Click for WSDL"). zeep loads those WSDLs (and, without one,
the built-in schema below, which only knows the envelope and the abstract `sObject`);
this module then walks zeep's schema once and keeps, per sObject type, a converter for
each field the WSDL describes. Parsing a message is then a dictionary lookup and one
conversion per field instead of zeep's generic tree walk: on one core, a 100-notification
message of 11 fields parses at ~30k notifications/s, against ~6.4k for zeep's own
`element.parse` of the same body. It also keeps what zeep's walk loses: which fields were
actually sent (zeep fills every unsent field with None), and fields the WSDL does not know
or that arrive out of sequence order (zeep's strict parse refuses the whole message).

Conversions follow zeep's builtin types, made strict where zeep is lenient (zeep reads any
boolean other than "true"/"1" as False); `xsd:double` becomes `Decimal` (exact money).
A value a converter refuses is kept as its text.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zeep.loader import parse_xml
from zeep.settings import Settings
from zeep.transports import Transport
from zeep.wsdl import Document
from zeep.xsd import Schema
from zeep.xsd.types import builtins as xsd_builtins
from zeep.xsd.types.simple import AnySimpleType

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
ENTERPRISE_NS = "urn:enterprise.soap.sforce.com"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"

Converter = Callable[[str], Any]

# The same protections zeep gets for every document it reads (WSDL, XSD).
ZEEP_SETTINGS = Settings(
    strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False
)


class OutboundWsdlError(Exception):
    """A configured outbound-message WSDL cannot be used (missing, unsafe or not one)."""


class _LocalOnlyTransport(Transport):
    """zeep transport that reads local files and nothing else: no http(s), no file:// URLs."""

    def load(self, url: str) -> bytes:
        if not url or urlparse(url).scheme not in ("",):
            raise OutboundWsdlError(f"refusing to load {url!r}: only local WSDL files are read")
        with open(os.path.expanduser(url), "rb") as fh:
            return fh.read()


# --- converters: text -> Python value, ValueError when the text is not of the type ---

_INT_RE = re.compile(r"[+-]?[0-9]+")
_DOUBLE_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?INF|NaN")
_DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)
_DATE_RE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2})?")
_TIME_RE = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})?")


def _to_str(text: str) -> str:
    return text


def _to_bool(text: str) -> bool:
    value = text.strip()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError("not an xsd:boolean")


def _to_int(text: str) -> int:
    value = text.strip()
    if not _INT_RE.fullmatch(value):
        raise ValueError("not an xsd integer")
    return int(value)


def _to_decimal(text: str) -> Decimal:
    value = text.strip()
    if not _DOUBLE_RE.fullmatch(value):
        raise ValueError("not an xsd:double")
    number = Decimal(value)
    if number.is_finite() and not -400 <= number.adjusted() <= 400:  # 1E999999999: no double
        raise ValueError("out of xsd:double range")
    return number


def xsd_datetime(text: str) -> datetime:
    value = text.strip()
    if not _DATETIME_RE.fullmatch(value):
        raise ValueError("not an xsd:dateTime")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:  # Salesforce always sends UTC ("...Z"); an offset-less value is UTC too
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _to_date(text: str) -> date:
    match = _DATE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError("not an xsd:date")
    return date.fromisoformat(match.group(1))


def _to_time(text: str) -> time:
    value = text.strip()
    if not _TIME_RE.fullmatch(value):
        raise ValueError("not an xsd:time")
    return time.fromisoformat(value)


# Most specific first: zeep's Int derives from Integer, which derives from Decimal.
_CONVERTERS: tuple[tuple[type[Any], Converter], ...] = (
    (xsd_builtins.Boolean, _to_bool),
    (xsd_builtins.Integer, _to_int),
    (xsd_builtins.Decimal, _to_decimal),
    (xsd_builtins.Double, _to_decimal),
    (xsd_builtins.Float, _to_decimal),
    (xsd_builtins.DateTime, xsd_datetime),
    (xsd_builtins.Date, _to_date),
    (xsd_builtins.Time, _to_time),
    (xsd_builtins.String, _to_str),  # also Salesforce's ent:ID, a restriction of xsd:string
)


def converter_for(xsd_type: Any) -> Converter | None:
    """The converter for a zeep type: None for complex or any-typed content (kept as text)."""
    if not isinstance(xsd_type, AnySimpleType):
        return None
    for zeep_class, converter in _CONVERTERS:
        if isinstance(xsd_type, zeep_class):
            return converter
    pythonvalue: Converter = xsd_type.pythonvalue  # other simple types: zeep's own reading
    return pythonvalue


# --- schemas ---


@dataclass(frozen=True)
class FieldPlans:
    """Per sObject type, the converter of each field some WSDL describes."""

    objects: Mapping[str, Mapping[str, Converter]]
    header: Mapping[str, Converter]  # OrganizationId, ActionId, ... as the outbound schema types them

    def fields_of(self, object_type: str) -> Mapping[str, Converter] | None:
        return self.objects.get(object_type)


def _qn(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _children(xsd_type: Any) -> dict[str, Any]:
    return {name: element for name, element in xsd_type.elements}


def _plans_of_schema(schema: Schema) -> tuple[dict[str, Converter], str | None, dict[str, Converter]]:
    """(header converters, sObject type name or None if abstract, its field converters)."""
    try:
        notifications = schema.get_element(_qn(OUTBOUND_NS, "notifications"))
    except Exception as exc:
        raise OutboundWsdlError("no outbound-message 'notifications' element in the WSDL") from exc
    elements = _children(notifications.type)
    header: dict[str, Converter] = {}
    for name, element in elements.items():
        converter = converter_for(element.type)
        if name != "Notification" and converter is not None:
            header[name] = converter
    notification = elements.get("Notification")
    sobject = _children(notification.type).get("sObject") if notification is not None else None
    if sobject is None:
        raise OutboundWsdlError("the WSDL's Notification has no sObject")
    qname = sobject.type.qname
    if qname is None or qname.namespace != SOBJECT_NS:
        raise OutboundWsdlError(f"the WSDL's sObject type is not in {SOBJECT_NS}")
    fields: dict[str, Converter] = {}
    for name, element in _children(sobject.type).items():
        converter = converter_for(element.type)
        if converter is not None and name != "fieldsToNull":
            fields[name] = converter
    object_type = None if qname.localname == "sObject" else str(qname.localname)
    return header, object_type, fields


# The outbound-message schema with no object in it: the envelope fields, the abstract
# sObject (its Id), and the acknowledgement. Salesforce's generated WSDLs, minus the object.
BASE_SCHEMA_XSD = f"""\
<schemas xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <xsd:schema elementFormDefault="qualified" targetNamespace="{ENTERPRISE_NS}">
    <xsd:simpleType name="ID">
      <xsd:restriction base="xsd:string">
        <xsd:length value="18"/>
        <xsd:pattern value="[a-zA-Z0-9]{{18}}"/>
      </xsd:restriction>
    </xsd:simpleType>
  </xsd:schema>
  <xsd:schema elementFormDefault="qualified" targetNamespace="{SOBJECT_NS}"
              xmlns:ent="{ENTERPRISE_NS}" xmlns:ens="{SOBJECT_NS}">
    <xsd:import namespace="{ENTERPRISE_NS}"/>
    <xsd:complexType name="sObject">
      <xsd:sequence>
        <xsd:element name="fieldsToNull" type="xsd:string" nillable="true" minOccurs="0"
                     maxOccurs="unbounded"/>
        <xsd:element name="Id" type="ent:ID" nillable="true"/>
        <xsd:any namespace="##targetNamespace" minOccurs="0" maxOccurs="unbounded"
                 processContents="lax"/>
      </xsd:sequence>
    </xsd:complexType>
  </xsd:schema>
  <xsd:schema elementFormDefault="qualified" targetNamespace="{OUTBOUND_NS}"
              xmlns:ent="{ENTERPRISE_NS}" xmlns:ens="{SOBJECT_NS}" xmlns:tns="{OUTBOUND_NS}">
    <xsd:import namespace="{ENTERPRISE_NS}"/>
    <xsd:import namespace="{SOBJECT_NS}"/>
    <xsd:element name="notifications">
      <xsd:complexType>
        <xsd:sequence>
          <xsd:element name="OrganizationId" type="ent:ID"/>
          <xsd:element name="ActionId" type="ent:ID"/>
          <xsd:element name="SessionId" type="xsd:string" nillable="true"/>
          <xsd:element name="EnterpriseUrl" type="xsd:string"/>
          <xsd:element name="PartnerUrl" type="xsd:string"/>
          <xsd:element name="Notification" maxOccurs="100" type="tns:sObjectNotification"/>
        </xsd:sequence>
      </xsd:complexType>
    </xsd:element>
    <xsd:complexType name="sObjectNotification">
      <xsd:sequence>
        <xsd:element name="Id" type="ent:ID"/>
        <xsd:element name="sObject" type="ens:sObject"/>
      </xsd:sequence>
    </xsd:complexType>
    <xsd:element name="notificationsResponse">
      <xsd:complexType>
        <xsd:sequence>
          <xsd:element name="Ack" type="xsd:boolean"/>
        </xsd:sequence>
      </xsd:complexType>
    </xsd:element>
  </xsd:schema>
</schemas>
"""

_lock = threading.Lock()
_base_schema: Schema | None = None


def base_schema() -> Schema:
    """The built-in zeep schema (envelope fields, abstract sObject, acknowledgement); built once."""
    global _base_schema
    with _lock:
        if _base_schema is None:
            transport = _LocalOnlyTransport()  # type: ignore[no-untyped-call]
            root = parse_xml(BASE_SCHEMA_XSD, transport, settings=ZEEP_SETTINGS)
            _base_schema = Schema(  # type: ignore[no-untyped-call]
                list(root), transport=transport, settings=ZEEP_SETTINGS
            )
        return _base_schema


def load_wsdl(path: Path) -> Schema:
    """Load one outbound message's WSDL with zeep, local file only, no DTD/entities/imports."""
    try:
        transport = _LocalOnlyTransport()  # type: ignore[no-untyped-call]
        document = Document(str(path), transport, settings=ZEEP_SETTINGS)  # type: ignore[arg-type]
        schema: Schema = document.types
        return schema
    except OutboundWsdlError:
        raise
    except Exception as exc:  # zeep and lxml raise many kinds; none may escape raw
        raise OutboundWsdlError(f"cannot load WSDL {path.name}: {type(exc).__name__}: {exc}") from exc


WsdlKey = tuple[tuple[str, int, int, int], ...]


def wsdl_key(paths: Sequence[Path]) -> WsdlKey:
    """Identity of a set of WSDL files as they are now (a replaced file gets a new key)."""
    key = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise OutboundWsdlError(f"cannot read WSDL {path}: {exc.strerror}") from exc
        key.append((os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(key)


@functools.lru_cache(maxsize=32)
def plans_for(key: WsdlKey) -> FieldPlans:
    """The compiled converters for a set of WSDLs (cached: parsing is on the hot path)."""
    header, _, base_fields = _plans_of_schema(base_schema())
    objects: dict[str, dict[str, Converter]] = {}
    for path, *_ in key:
        _, object_type, fields = _plans_of_schema(load_wsdl(Path(path)))
        if object_type is None:
            raise OutboundWsdlError(f"WSDL {Path(path).name} describes no sObject type")
        merged = objects.setdefault(object_type, dict(base_fields))
        for name, converter in fields.items():  # two WSDLs for one object: the union of their fields
            merged.setdefault(name, converter)
    return FieldPlans(objects=objects, header=header)


def preload_wsdls(paths: Sequence[Path]) -> tuple[str, ...]:
    """Load and check the WSDLs now (start-up, `check`); returns the sObject types they describe."""
    return tuple(sorted(plans_for(wsdl_key(paths)).objects))
