"""Salesforce record ids: key prefixes, the 15 -> 18 character checksum, and an id factory."""

from __future__ import annotations

import itertools
import re
import threading

_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Za-z0-5]{3})?$")

# Key prefixes of the standard objects the emulator knows (first three characters of an id).
KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "Organization": "00D",
    "Group": "00G",
    "Lead": "00Q",
    "Task": "00T",
    "Event": "00U",
    "Profile": "00e",
    "Product2": "01t",
    "LoginHistory": "0Ya",
    "Case": "500",
    "Campaign": "701",
    "Contract": "800",
    "DeployRequest": "0Af",
}


def checksum(id15: str) -> str:
    """The three-character suffix that makes a 15-character id case-insensitively unique.

    Each 5-character chunk gives a 5-bit number (bit i set when character i is an upper-case
    letter), mapped through A-Z0-5.
    """
    if len(id15) != 15:
        raise ValueError(f"a 15-character id is needed, got {id15!r}")
    suffix = ""
    for start in (0, 5, 10):
        bits = 0
        for i, ch in enumerate(id15[start : start + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        suffix += _CHECKSUM_ALPHABET[bits]
    return suffix


def to18(record_id: str) -> str:
    """The 18-character form of a 15- or 18-character id (ValueError if malformed)."""
    if not _ID_RE.match(record_id):
        raise ValueError(f"malformed id {record_id}")
    if len(record_id) == 15:
        return record_id + checksum(record_id)
    # An 18-character id may be in any case: the checksum restores the case of the first 15.
    if checksum(_restore_case(record_id)) != record_id[15:].upper():
        raise ValueError(f"malformed id {record_id}")
    return _restore_case(record_id) + record_id[15:].upper()


def _restore_case(id18: str) -> str:
    chars = list(id18[:15])
    for chunk, flag in enumerate(id18[15:18].upper()):
        bits = _CHECKSUM_ALPHABET.index(flag)
        for i in range(5):
            pos = chunk * 5 + i
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if bits & (1 << i) else chars[pos].lower()
    return "".join(chars)


def is_valid_id(record_id: str) -> bool:
    try:
        to18(record_id)
    except ValueError:
        return False
    return True


def _base62(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _BASE62[r] + out
    return out.rjust(width, "0")


class IdFactory:
    """Generates Salesforce-like 18-character ids: prefix(3) + pod(2) + '0' + number(9) + checksum."""

    def __init__(self, pod: str = "Dn", start: int = 1_000_000) -> None:
        self._pod = pod
        self._counter = itertools.count(start)
        self._custom: dict[str, str] = {}
        self._lock = threading.Lock()

    def prefix_for(self, sobject: str) -> str:
        with self._lock:
            if sobject in KEY_PREFIXES:
                return KEY_PREFIXES[sobject]
            if sobject not in self._custom:
                # Custom objects get a0X prefixes in order of first use, as in a fresh org.
                self._custom[sobject] = "a0" + _BASE62[len(self._custom) % 62]
            return self._custom[sobject]

    def new(self, sobject: str) -> str:
        prefix = self.prefix_for(sobject)
        with self._lock:
            number = next(self._counter)
        id15 = prefix + self._pod + "0" + _base62(number, 9)
        return id15 + checksum(id15)
