"""Building signed Salesforce JSON events, as a Flow HTTP callout or relay would send them."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.salesforce.ids import to_18
from plugin.signatures import sign

ORG_ID = to_18("00D5g000004XyZa")
USER_ID = to_18("0055g00000AbCdE")


def record_id(n: int, prefix: str = "006") -> str:
    """A valid 18-character id, distinct for each n."""
    return to_18(f"{prefix}5g{n:010d}")


def change_event(
    n: int = 1,
    *,
    record: int | None = None,
    occurred_at: datetime | None = None,
    fields: dict[str, Any] | None = None,
    actor: str = USER_ID,
    object: str = "Opportunity",
    type: str = "record.changed",
) -> dict[str, Any]:
    """One `record.changed` event in the documented body shape."""
    when = occurred_at or datetime(2026, 11, 26, 10, 0, tzinfo=UTC) + timedelta(seconds=n)
    stamp = when.isoformat().replace("+00:00", "Z")
    return {
        "id": f"evt-{n}",
        "type": type,
        "occurred_at": stamp,
        "org_id": ORG_ID,
        "object": object,
        "record": {
            "attributes": {"type": object},
            "Id": record_id(n if record is None else record),
            "LastModifiedById": actor,
            "SystemModstamp": stamp,
            "Amount": 1000 * n,
            **(fields or {}),
        },
    }


def signed_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, ts: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for `body`."""
    wid = webhook_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if ts is None else ts
    return {
        "webhook-id": wid,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, wid, stamp, body),
        "content-type": "application/json",
    }


def signed(secret: str, payload: Any, **kw: Any) -> tuple[bytes, dict[str, str]]:
    """Body and headers, ready to POST."""
    body = json.dumps(payload).encode()
    return body, signed_headers(secret, body, **kw)
