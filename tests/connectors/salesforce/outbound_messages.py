"""Outbound messages in Salesforce's exact envelope, built for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from connectors.salesforce.ids import to_18

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "salesforce" / "fixtures"
OPPORTUNITY_WSDL = FIXTURES / "opportunity_outbound.wsdl"
BUDGET_WSDL = FIXTURES / "budget_request_outbound.wsdl"

ORG_ID = "00D5g000004PzQxEAK"  # the org of the fixtures
ACTION_ID = "04k5g000000Tb1QAAS"
USER_ID = "0055g00000AaBbCAAV"  # LastModifiedById in the fixtures
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def notification_id(n: int, batch: int = 0) -> str:
    """A distinct, valid outbound notification id (key prefix 04l)."""
    return to_18(f"04l5g{batch:04d}{n:06d}")


def opportunity_id(n: int) -> str:
    return to_18(f"0065g{n:010d}")


def notification(
    n: int,
    fields: Mapping[str, str | None],
    *,
    object_type: str = "Opportunity",
    record_id: str | None = None,
    batch: int = 0,
) -> str:
    """One Notification element; a None value is sent as xsi:nil."""
    parts = [f"<sf:Id>{record_id or opportunity_id(n)}</sf:Id>"]
    for name, value in fields.items():
        if value is None:
            parts.append(f'<sf:{name} xsi:nil="true"/>')
        else:
            parts.append(f"<sf:{name}>{escape(value)}</sf:{name}>")
    return (
        f"<Notification><Id>{notification_id(n, batch)}</Id>"
        f'<sObject xsi:type="sf:{object_type}" xmlns:sf="{SOBJECT}">{"".join(parts)}</sObject>'
        "</Notification>"
    )


def envelope(notifications: Iterable[str], *, org_id: str = ORG_ID, session_id: str | None = None) -> bytes:
    """The message around Notification elements, as Salesforce sends it."""
    session = f"<SessionId>{session_id}</SessionId>" if session_id else '<SessionId xsi:nil="true"/>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP11}" xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n <soapenv:Body>\n'
        f'  <notifications xmlns="{OUTBOUND}">\n'
        f"   <OrganizationId>{org_id}</OrganizationId>\n"
        f"   <ActionId>{ACTION_ID}</ActionId>\n"
        f"   {session}\n"
        "   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/61.0/00D5g000004PzQx</EnterpriseUrl>\n"
        "   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/61.0/00D5g000004PzQx</PartnerUrl>\n"
        f"   {''.join(notifications)}\n"
        "  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n"
    ).encode()


def opportunity_fields(n: int, *, actor: str = USER_ID, minute: int = 0) -> dict[str, str | None]:
    """The fields an admin typically selects for an Opportunity outbound message."""
    return {
        "Amount": f"{1000 + n}.0",
        "CloseDate": "2025-03-31",
        "IsWon": "false",
        "LastModifiedById": actor,
        "LastModifiedDate": f"2024-11-26T10:{minute % 60:02d}:{n % 60:02d}.000Z",
        "Name": f"Deal {n}",
        "StageName": "Negotiation/Review",
    }


def opportunities(
    count: int, *, batch: int = 0, record_ids: list[str] | None = None, actor: str = USER_ID
) -> bytes:
    """A message of `count` Opportunity notifications (distinct notification ids per batch)."""
    return envelope(
        notification(
            n,
            opportunity_fields(n, actor=actor, minute=batch),
            record_id=record_ids[n] if record_ids else None,
            batch=batch,
        )
        for n in range(count)
    )
