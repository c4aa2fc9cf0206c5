"""Outbox rows, as the worker (for a rule's outcome) and the job runner (for a job's results)
store them: one constructor for the columns every row has."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from plugin.events import CrmWrite, Notification

# Decides which CRM a write goes to (plugin.writers.target_resolver builds it from the configuration).
TargetOf = Callable[[CrmWrite], str]


def legacy_target(write: CrmWrite) -> str:
    """Without a configuration to ask: the write's own CRM, else "crm" (the primary CRM's)."""
    return write.crm or "crm"


def write_row(
    write: CrmWrite,
    occurred_at: datetime,
    now: datetime,
    event_id: int | None = None,
    target_of: TargetOf = legacy_target,
) -> dict[str, Any]:
    """A CRM write: an update by record id, or an upsert by external id, to the CRM it names."""
    by_id = write.record_id is not None
    return {
        **_new_row(occurred_at, now, event_id),
        "target": target_of(write),
        "object": write.object,
        "record_key": write.record_id if by_id else write.external_id,
        "operation": "update" if by_id else "upsert",
        "external_id_field": write.external_id_field,
        "payload": dict(write.fields),
    }


def notification_row(
    note: Notification, key: str, occurred_at: datetime, now: datetime, event_id: int | None = None
) -> dict[str, Any]:
    """A notification for subscribed flows; `key` orders it among its record's rows."""
    return {
        **_new_row(occurred_at, now, event_id),
        "target": "notification",
        "object": note.topic,
        "record_key": key,
        "operation": "notify",
        "external_id_field": None,
        "payload": dict(note.data),
    }


def _new_row(occurred_at: datetime, now: datetime, event_id: int | None) -> dict[str, Any]:
    """What every outbox row starts with: where it came from, due now, never tried."""
    return {
        "occurred_at": occurred_at,
        "event_id": event_id,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
