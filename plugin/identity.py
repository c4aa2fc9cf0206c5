"""One identity per record: every source's record ids in one canonical form, before storing.

A Salesforce record arrives as a 15-character id from a flow and as the 18-character id from
Salesforce itself; stored as given they would get different ordering keys and state, and a form
would never meet its record's status change. The canonical forms: Salesforce ids in 18
characters, GUIDs (Dataverse) in lower case; anything else as it came.
"""

from __future__ import annotations

import dataclasses
import re

from plugin.events import Event
from plugin.registry import canonical_id

# "<Object>/<15-character id>" inside an ordering or state key, followed by its end or ":".
_KEYED_ID = re.compile(r"(?P<obj>[A-Za-z][A-Za-z0-9_]*)/(?P<id>[A-Za-z0-9]{15})(?=$|:)")


def canonical_record_id(value: str) -> str:
    """The canonical form of a record (or user) id: as the CRM whose id it is says (each CRM
    connector's id scheme, plugin/registry.py); anything no CRM recognises, as it came."""
    return canonical_id(value) or value


def canonical_event(event: Event) -> Event:
    """The event with its record id and CRM-user actor in canonical form."""
    record_id = canonical_record_id(event.record_id) if event.record_id else event.record_id
    actor = event.actor
    if actor:
        actor = canonical_id(actor) or actor
    if record_id == event.record_id and actor == event.actor:
        return event
    return dataclasses.replace(event, record_id=record_id, actor=actor)


def canonical_key(key: str) -> str:
    """An ordering or rule-state key with any "<Object>/<15-character id>" in 18 characters."""

    def upgrade(match: re.Match[str]) -> str:
        found = match.group("id")
        return f"{match.group('obj')}/{canonical_id(found) or found}"

    return _KEYED_ID.sub(upgrade, key)
