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


def restore_case(value: str) -> str | None:
    """An 18-character id whose case was lost (lower- or upper-cased, e.g. by an e-mail client or
    a spreadsheet), as Salesforce wrote it; None when `value` cannot be one."""
    if len(value) != 18 or not value.isalnum() or is_salesforce_id(value):
        return None
    suffix = value[15:].upper()
    if any(c not in SUFFIX_ALPHABET for c in suffix):
        return None
    chars = []
    for chunk, flag in enumerate(suffix):
        mask = SUFFIX_ALPHABET.index(flag)
        for i, ch in enumerate(value[chunk * 5 : chunk * 5 + 5]):
            chars.append(ch.upper() if mask >> i & 1 else ch.lower())
    restored = "".join(chars) + suffix
    return restored if is_salesforce_id(restored) else None


def canonical(value: str) -> str | None:
    """The 18-character form of a Salesforce id, or None for anything else (the id scheme's
    `canonical`: plugin/registry.py)."""
    return to_18(value) if is_salesforce_id(value) else None


def user_id(value: str) -> str | None:
    """A User's id (key prefix 005) in 18 characters, or None."""
    return to_18(value) if is_salesforce_id(value) and value.startswith("005") else None


def match_key(value: str) -> str | None:
    """What every spelling of one id shares: its case-sensitive 15-character stem, also from an
    18-character id whose case was lost (its suffix says where the capitals were)."""
    value = restore_case(value) or value
    return "sf:" + value[:15] if is_salesforce_id(value) else None


def _suffix(id15: str) -> str:
    # Each 5-character chunk gives one suffix character: bit i set where character i is upper case.
    out = []
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        mask = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        out.append(SUFFIX_ALPHABET[mask])
    return "".join(out)
