"""Dataverse ids: GUIDs (systemuserid, a record's primary key), canonical in lower case.

Dataverse writes GUIDs in either case (the webhook's RemoteExecutionContext upper-cases none,
the Plug-in Registration Tool shows them lower, Power Automate passes what it was given), and a
GUID's case carries no meaning, so lower case is the one form OnRecord stores and compares.
"""

from __future__ import annotations

import re
import uuid

# fullmatch, not ^...$: "$" also matches before a final newline, and uuid.UUID would then raise
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def is_guid(value: str) -> bool:
    """Whether `value` is a GUID in its hyphenated 8-4-4-4-12 form."""
    return bool(_GUID.fullmatch(value))


def canonical(value: str) -> str | None:
    """The lower-case GUID, or None for anything that is not one. A GUID in braces, as classic
    Dynamics URLs and some SDK tools write it ({9F1D...}), is the same GUID."""
    if value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    return str(uuid.UUID(value)) if _GUID.fullmatch(value) else None


def match_key(value: str) -> str | None:
    """Two spellings of one GUID share their lower-case form."""
    return canonical(value)


def same_guid(a: str, b: str) -> bool:
    """Whether two strings are the same GUID (in any case)."""
    found = canonical(a)
    return found is not None and found == canonical(b)
