"""Salesforce record ids: 15 characters (case-sensitive) or 18 (with a case-safe suffix)."""

from __future__ import annotations

import re

_ID = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-5]{3})?$")
# The case-safe suffix: per 5-character chunk, bit i set where character i is upper case.
SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def is_salesforce_id(value: str) -> bool:
    """Whether `value` is a well-formed 15- or 18-character id (an 18's suffix must be right)."""
    if not _ID.match(value):
        return False
    return len(value) == 15 or value[15:] == _suffix(value[:15])


def to_18(value: str) -> str:
    """The 18-character form; raise ValueError for anything that is not an id."""
    if not is_salesforce_id(value):
        raise ValueError("not a Salesforce id")
    return value if len(value) == 18 else value + _suffix(value)


def same_id(a: str, b: str) -> bool:
    """Whether two ids (15 or 18 characters, in any mix) name the same record."""
    return is_salesforce_id(a) and is_salesforce_id(b) and a[:15] == b[:15]


def _suffix(id15: str) -> str:
    # Each 5-character chunk gives one suffix character: bit i set where character i is upper case.
    out = []
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        mask = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        out.append(SUFFIX_ALPHABET[mask])
    return "".join(out)
